"""The errors the ``keys`` package raises, so callers catch one family.

Exception tree::

    KeysError                 anything this package refuses to do
    ├── KeyFileError          a key or certificate file is missing, unreadable,
    │                         not what it claims to be, or cannot be written
    └── JwtError              a JWT was refused (defined in ``_jwt``); its
                              message is safe to show the client that sent it

Messages are one line and name the file, so a command-line tool can print
``str(error)`` as-is instead of a traceback. Foreign exceptions (``OSError``,
``cryptography``'s ``ValueError``/``TypeError``) are translated where the file
is read or written and chained with ``from``.
"""

from __future__ import annotations


class KeysError(Exception):
    """Base class for every error raised by the ``keys`` package."""


class KeyFileError(KeysError):
    """A key or certificate file could not be read, parsed or written."""
