"""Structured log lines: ``event=NAME key=value ...`` (logfmt), one per event.

Every tunnel event and every request is one line with the same field names
(``name``, ``rid``, ``peer``), so a grep or a log shipper can follow a request
or a tunnel across the router, listener and auth helper.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

# A value made only of these characters is written as it is; anything else is quoted.
_NEEDS_QUOTES = re.compile(r"[^a-zA-Z0-9\-_./:@\[\]+,]")


def _value(value: Any) -> str:
    if type(value) is int:
        return str(value)  # the most common value (status, sizes): always safe
    text = str(value)
    if text and _NEEDS_QUOTES.search(text) is None:
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def fields(event: str, **values: Any) -> str:
    """``event=EVENT k=v ...``, quoting values that need it; None values are left out."""
    parts = [f"event={event}"]
    parts += [f"{key}={_value(v)}" for key, v in values.items() if v is not None]
    return " ".join(parts)


class _LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"ts={stamp}.{int(record.msecs):03d}Z level={record.levelname.lower()} "
        message = record.getMessage()
        if not message.startswith("event="):
            message = fields("message", logger=record.name, text=message)
        line += message
        if record.exc_info and record.levelno >= logging.ERROR:
            line += " exc=" + _value(self.formatException(record.exc_info))
        return line


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # asyncssh logs every channel at info: far too chatty for a router.
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    # httpx/httpcore log every portal request at info; our own lines say what matters.
    for chatty in ("httpx", "httpcore", "httpx2"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
