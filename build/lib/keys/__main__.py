"""Run the key tool as ``python -m keys``, the same as ``hostmux-keys``."""

from ._cli import main

raise SystemExit(main())
