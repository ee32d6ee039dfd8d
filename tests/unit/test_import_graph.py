"""The import rules of the layout, read from the source by docs/import_graph.py.

The components (router, listener, authhelper) stand side by side on the shared core
(hostmux) and keys; asyncssh stays behind one adapter per component; nothing imports
in a circle; and docs/architecture.md's picture is the one the code draws today.
Imports inside functions count (they run, later); imports under ``if TYPE_CHECKING:``
count for the direction rules (they still tie the code together) but not for circles
(they never run).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "import_graph.py"
DOC = ROOT / "docs" / "architecture.md"
COMPONENTS = ("router", "listener", "authhelper")


def _load_script() -> ModuleType:
    # docs/ is not a package: load the script by path, once, under its own name.
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("import_graph", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


import_graph = _load_script()


@pytest.fixture(scope="module")
def graph() -> Any:
    return import_graph.build_graph(ROOT)


def _imported(graph: Any, package: str, *targets: str) -> list[str]:
    """``importer:line -> target`` for every import by ``package`` of one of ``targets``."""
    return [
        f"{i.importer}:{i.line} -> {i.target}"
        for i in graph.imports_of(package)
        if any(i.target == t or i.target.startswith(t + ".") for t in targets)
    ]


def _asyncssh_importers(graph: Any, package: str) -> set[str]:
    return {i.importer for i in graph.imports_of(package) if i.top_level == "asyncssh"}


def test_the_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    # The rules below are only as good as the reader: a package with one import of
    # each kind, read as the real packages are.
    sources = {
        "pkg/__init__.py": "from ._a import A\nfrom . import b\n",
        "pkg/_a.py": (
            "from typing import TYPE_CHECKING\nimport asyncssh.connection\n"
            "if TYPE_CHECKING:\n    from pkg.sub.c import C\n"
            "class A:\n    import pkg.b\n"
        ),
        "pkg/b.py": "def f() -> None:\n    from .sub import c\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "from .. import _a\nfrom ..b import f\nasync def g():\n    import os\n",
    }
    for name, text in sources.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph.build_graph(tmp_path, ("pkg",))
    assert graph.modules == {"pkg", "pkg._a", "pkg.b", "pkg.sub", "pkg.sub.c"}
    seen = {(i.importer, i.target, i.internal, i.lazy, i.type_only) for i in graph.imports}
    assert seen == {
        ("pkg", "pkg._a", "pkg._a", False, False),  # relative, in a package's __init__
        ("pkg", "pkg.b", "pkg.b", False, False),  # from . import module
        ("pkg._a", "typing", None, False, False),
        ("pkg._a", "asyncssh.connection", None, False, False),  # third-party
        ("pkg._a", "pkg.sub.c", "pkg.sub.c", False, True),  # under TYPE_CHECKING
        ("pkg._a", "pkg.b", "pkg.b", False, False),  # a class body runs at import
        ("pkg.b", "pkg.sub.c", "pkg.sub.c", True, False),  # inside a function
        ("pkg.sub.c", "pkg._a", "pkg._a", False, False),  # two dots
        ("pkg.sub.c", "pkg.b", "pkg.b", False, False),  # from a module, a name
        ("pkg.sub.c", "os", None, True, False),  # inside an async function
    }
    # Circles: pkg._a -> pkg.b -> (lazily) pkg.sub.c -> pkg._a; the TYPE_CHECKING
    # import pkg._a -> pkg.sub.c never runs and makes none.
    assert import_graph.cycles(graph.edges(lazy=True)) == [("pkg._a", "pkg.b", "pkg.sub.c")]
    assert import_graph.cycles(graph.edges(lazy=False)) == []
    assert graph.loaded_with("pkg.b") == {"pkg.b"}
    assert graph.loaded_with("pkg.sub") == {"pkg.sub", "pkg.sub.c", "pkg._a", "pkg.b"}


def test_listener_and_authhelper_never_import_the_router(graph: Any) -> None:
    assert _imported(graph, "listener", "router") == []
    assert _imported(graph, "authhelper", "router") == []


def test_the_components_do_not_import_each_other(graph: Any) -> None:
    for component in COMPONENTS:
        others = [c for c in COMPONENTS if c != component]
        assert _imported(graph, component, *others) == [], component


def test_the_shared_core_imports_no_component_and_not_keys(graph: Any) -> None:
    # hostmux/ sits below the components; it does not need keys today, so it may not.
    assert _imported(graph, "hostmux", *COMPONENTS, "keys") == []


def test_keys_imports_nothing_of_ours(graph: Any) -> None:
    assert _imported(graph, "keys", "hostmux", *COMPONENTS) == []


def test_asyncssh_stays_behind_one_adapter_per_component(graph: Any) -> None:
    router_users = _asyncssh_importers(graph, "router")
    assert router_users, "the router's SSH server imports asyncssh somewhere"
    assert {m for m in router_users if not m.startswith("router.ssh.")} == set()
    # The listener's asyncssh adapter is one module.
    assert _asyncssh_importers(graph, "listener") == {"listener._ssh_client"}
    # The shared core may use asyncssh only in its SSH byte transports.
    core_users = _asyncssh_importers(graph, "hostmux")
    assert {m for m in core_users if not m.startswith("hostmux.tunnel.")} == set()


def test_the_helper_and_the_relay_never_load_asyncssh(graph: Any) -> None:
    # Start-up time: asyncssh is slow to import, and the auth helper starts with its pod.
    for package in ("authhelper", "hostmux.relay", "hostmux.http1"):
        assert _asyncssh_importers(graph, package) == set(), package
        # Nor through a module they load at import time.
        loaded = graph.loaded_with(package)
        assert loaded, package
        eager = {
            i.importer
            for i in graph.imports
            if i.importer in loaded and i.top_level == "asyncssh" and i.runs and not i.lazy
        }
        assert eager == set(), package


def test_the_cluster_link_is_loaded_only_by_routers_that_use_it(graph: Any) -> None:
    # router/cluster/ (router-to-router forwarding) is built only with cluster_listen set:
    # the server imports it inside a function, the gateway for type checking only.
    importers = {
        i.importer
        for i in graph.imports
        if (i.internal or "").startswith("router.cluster")
        and not i.importer.startswith("router.cluster")
    }
    assert importers == {"router.server", "router.tunnels"}
    assert not {m for m in graph.loaded_with("router.server") if m.startswith("router.cluster")}
    # Only the cluster package builds the link's TLS contexts.
    users = {
        path.relative_to(ROOT).as_posix()
        for folder in ("router", "hostmux", "listener", "authhelper")
        for path in (ROOT / folder).rglob("*.py")
        if "cluster_tls_contexts(" in path.read_text()
    }
    assert users == {"router/cluster/identity.py"}


def test_no_import_circles(graph: Any) -> None:
    # Lazy imports count: a circle through a function is still a circle in the design.
    edges = graph.edges(lazy=True)
    assert import_graph.cycles(edges) == []


def test_the_circle_finder_finds_circles() -> None:
    # The check above passes on an empty answer; show the finder answers when it should.
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert import_graph.cycles(edges) == [("a", "b", "c"), ("d", "e")]


def test_the_architecture_picture_is_current() -> None:
    done = _run_script("--check", DOC)
    assert (done.returncode, done.stderr) == (0, "")


def _run_script(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=60
    )


def test_a_stale_picture_fails_the_check_in_one_line_and_write_mends_it(tmp_path: Path) -> None:
    doc = tmp_path / "architecture.md"
    begin, end = import_graph.BEGIN_MARKER, import_graph.END_MARKER
    stale = f"# Doc\n\n{begin}\n```mermaid\ngraph TD\n```\n{end}\n\nafter\n"
    doc.write_text(stale)
    checked = _run_script("--check", doc)
    assert checked.returncode == 1
    assert checked.stderr.count("\n") == 1 and "stale" in checked.stderr
    assert "--write" in checked.stderr  # says how to mend it
    assert _run_script("--write", doc).returncode == 0
    mended = doc.read_text()
    assert mended.startswith("# Doc\n\n") and mended.endswith("\n\nafter\n")
    assert "router --> router_ssh" in mended
    assert _run_script("--check", doc).returncode == 0


def test_a_doc_without_markers_is_one_line_exit_2(tmp_path: Path) -> None:
    doc = tmp_path / "architecture.md"
    doc.write_text("# no picture here\n")
    done = _run_script("--check", doc)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "import-graph:begin" in done.stderr
    missing = _run_script("--check", tmp_path / "absent.md")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1


def test_the_architecture_doc_stands_alone_and_links_the_design() -> None:
    # Its links stay inside the repository and resolve; design.md links back.
    text = DOC.read_text()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert "design.md" in links
    assert [link for link in links if "://" in link or link.startswith("/")] == []
    assert [link for link in links if not (DOC.parent / link).exists()] == []
    assert "(architecture.md)" in (ROOT / "docs" / "design.md").read_text()
