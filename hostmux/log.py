"""Structured log lines: ``event=NAME key=value ...`` (logfmt), one per event.

Every tunnel event and every request is one line with the same field names
(``name``, ``rid``, ``peer``), so a grep or a log shipper can follow a request
or a tunnel across the router, listener and auth helper. With
``log_format = "json"`` each line is instead one JSON object with the same
fields, in the same order, every value a string (as in logfmt: ``status`` is
``"200"``), so a field keeps one type whatever its value.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import select
import sys
import time
from typing import Any, TextIO

# A value made only of these characters is written as it is; anything else is quoted.
_NEEDS_QUOTES = re.compile(r"[^a-zA-Z0-9\-_./:@\[\]+,]")
# One ``key=value`` of a line written by ``fields`` (a value bare, or quoted by ``_value``).
_PAIR = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|\S*)')
_UNESCAPE = re.compile(r"\\(.)")
# The first is the default.
LOG_FORMATS = ("logfmt", "json")


# Written whole by one write to a pipe, however many processes share it (POSIX).
_ATOMIC_WRITE_BYTES = select.PIPE_BUF


class _Context:
    """Fields every line ends with (``set_log_context``), and whether other processes
    write to the same stream."""

    suffix = ""
    shared_stream = False


def set_log_context(*, shared_stream: bool = False, **values: Any) -> None:
    """End every line from now on with ``values`` (e.g. ``worker=2``: which of several
    processes said it). With ``shared_stream`` (sibling processes inherit one stderr)
    lines are written in writes of at most PIPE_BUF bytes that end at a line's end, so
    no two processes' lines are spliced together."""
    _Context.suffix = "".join(f" {key}={_value(v)}" for key, v in values.items())
    _Context.shared_stream = shared_stream


def check_log_format(log_format: str) -> None:
    """A ValueError (the config's one line) unless ``log_format`` is one of LOG_FORMATS."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format: {log_format!r} is not {' or '.join(LOG_FORMATS)}")


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


def describe(exc: BaseException) -> str:
    """An exception in one line, for a log or an error message: its first line, else its type.

    An ``AttributeError`` reaches here only from an outgoing HTTP call, where
    uvloop + anyio raise it for a connection the peer reset (see
    ``hostmux.http_client``); it is said as what it means.
    """
    if isinstance(exc, AttributeError):
        return "connection reset by the peer"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text or type(exc).__name__


class _LogfmtFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = -1  # the whole second last formatted, and its text
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # many lines share a second: format it once
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        line = f"ts={self._stamp}.{int(record.msecs):03d}Z level={record.levelname.lower()} "
        message = record.getMessage()
        if not message.startswith("event="):
            message = fields("message", logger=record.name, text=message)
        line += message + _Context.suffix
        if record.exc_info and record.levelno >= logging.ERROR:
            line += " exc=" + _value(self.formatException(record.exc_info))
        return line


def parse_fields(line: str) -> dict[str, str]:
    """The ``key=value`` pairs of a line ``fields`` wrote, values unquoted (its inverse)."""
    pairs: dict[str, str] = {}
    for key, raw in _PAIR.findall(line):
        if raw.startswith('"'):
            raw = _UNESCAPE.sub(lambda m: "\n" if m[1] == "n" else m[1], raw[1:-1])
        pairs[key] = raw
    return pairs


class _JsonFormatter(_LogfmtFormatter):
    """The logfmt line's fields as one JSON object (``ts``, ``level``, ``event`` first)."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(parse_fields(super().format(record)), ensure_ascii=False)


class _TurnBufferedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes the lines logged during one event-loop turn in one write, at its end.

    With the access log on, a write per request line measured ~4% of a small
    request. Lines logged off the loop's thread (or with no loop running) are
    written at once, after any still pending, as a plain ``StreamHandler`` would.
    No line waits longer than the rest of its loop turn; ``flush`` (also called
    by ``logging.shutdown`` at exit) writes whatever is pending.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._pending.append(line)  # under the handler's lock (Handler.handle)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if len(self._pending) == 1:
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self.acquire()
        try:
            if self._pending:
                pending, self._pending = self._pending, []
                if _Context.shared_stream:
                    for text in _whole_line_writes(pending):
                        self.stream.write(text)
                        self.stream.flush()
                else:
                    self.stream.write("".join(pending))
            self.stream.flush()
        except (OSError, ValueError):
            self._pending.clear()  # the stream is gone (closed at exit): nothing to do
        finally:
            self.release()


def _whole_line_writes(lines: list[str]) -> list[str]:
    """``lines`` joined into texts of at most ``_ATOMIC_WRITE_BYTES`` (a longer line alone)."""
    writes: list[str] = []
    batch: list[str] = []
    size = 0
    for line in lines:
        length = len(line.encode())
        if batch and size + length > _ATOMIC_WRITE_BYTES:
            writes.append("".join(batch))
            batch, size = [], 0
        batch.append(line)
        size += length
    if batch:
        writes.append("".join(batch))
    return writes


def configure_logging(level: str, log_format: str = LOG_FORMATS[0]) -> None:
    check_log_format(log_format)
    handler = _TurnBufferedHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _LogfmtFormatter())
    # Our lines name no thread, process or source line: do not collect them per
    # record (the logging docs' "Optimization" advice; a LogRecord was ~2% of a
    # small request with the access log on).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # asyncssh logs every channel at info: far too chatty for a router.
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    # httpx/httpcore log every portal request at info; our own lines say what matters.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
