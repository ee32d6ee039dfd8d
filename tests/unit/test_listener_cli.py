"""hostmux-listener's first-hour errors: one line naming the file, exit 2, no traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import keys
from listener._cli import main


def _identity(kind: str, directory: Path) -> Path:
    """A file a user might pass as --identity-file by mistake."""
    key = directory / "id"
    if kind in ("pub-file", "passphrase"):
        passphrase = "secret" if kind == "passphrase" else ""
        argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(key)]
        subprocess.run(argv, check=True)
        return key.with_suffix(".pub") if kind == "pub-file" else key
    if kind == "not-a-key":
        key.write_text("hello\n")
    if kind == "unreachable":  # stat() fails (as EACCES does, which root cannot provoke)
        return directory / ("x" * 300)
    return key  # "missing": never written


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("pub-file", "is a public key"),
        ("passphrase", "protected by a passphrase"),
        ("not-a-key", "not a private key"),
        ("missing", "no private key at"),
        ("unreachable", "identity_file: "),
    ],
)
def test_an_unusable_identity_file_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, says: str
) -> None:
    identity = _identity(kind, tmp_path)
    assert main(["--identity-file", str(identity), "--router", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("hostmux-listener: error: ")
    assert str(identity) in err and says in err
    assert "Traceback" not in err


def test_a_usable_identity_file_passes_the_check(tmp_path: Path) -> None:
    from listener._ssh_client import identity_problem

    key = tmp_path / "id"
    keys.write_keypair(keys.generate_keypair(), key)
    assert identity_problem(key) is None


def test_help_names_the_connect_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert "hostmux-listener connect WSS_URL" in capsys.readouterr().out
