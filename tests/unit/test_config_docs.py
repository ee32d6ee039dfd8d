"""docs/configuration.md is generated from the option declarations, and must match them.

Regenerate it after changing an option:

    env -u XDG_STATE_HOME .venv/bin/python -m tests.unit.test_config_docs > docs/configuration.md
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"

HEADER = """\
# Configuration reference

Generated from the option declarations (`tests/unit/test_config_docs.py` checks
that it is current). Each component takes its options from three layers: a TOML
file (`--config FILE` or `HOSTMUX_CONFIG`, keys as in the first column), then
`HOSTMUX_<OPTION>` environment variables (upper case), then flags; flags win.
Every value is checked in the layer it comes from: a bad one stops the program
before it listens, with one line naming the option (the file and key, the
variable or the flag) and exit code 2. A list option takes a comma-separated
variable, a TOML array, or its flag repeated; `''` (an empty flag or variable)
means none.

Every number has a range: out of it is refused, never clamped. Where 0 is
accepted, the range says what it means; otherwise 0 is refused.
"""


def configuration_markdown() -> str:
    import authhelper._config
    import listener._config
    import router.config
    from hostmux.config.options import options_markdown

    sections = [
        ("hostmux-router", router.config.RouterConfig),
        ("hostmux-listener", listener._config.ListenerConfig),
        ("hostmux-authhelper", authhelper._config.AuthHelperConfig),
    ]
    parts = [HEADER]
    for title, cls in sections:
        parts.append(f"\n## {title}\n\n{options_markdown(cls)}")
    return "".join(parts)


def test_the_configuration_reference_is_current() -> None:
    # In a child without XDG_STATE_HOME, so the router's state_dir default reads the same
    # on every machine (~/.local/state/hostmux).
    env = {k: v for k, v in os.environ.items() if k != "XDG_STATE_HOME"}
    generated = subprocess.run(
        [sys.executable, "-m", "tests.unit.test_config_docs"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert DOC.read_text(encoding="utf-8") == generated, (
        "docs/configuration.md is stale: regenerate it (see this module's docstring)"
    )


if __name__ == "__main__":
    sys.stdout.write(configuration_markdown())
