"""Log formats for the command line: plain text, or one JSON object per line."""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import logging
import sys
import threading
import time
from typing import Any

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """One line per record, its ``extra`` fields as key=value after the message;
    a traceback, if any, follows on the next lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        text = super().formatMessage(record)
        extras = _extras(record)
        if extras:
            text += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return text


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes records to a buffered stream and flushes it at most every
    ``interval`` seconds, so that a line per task costs no system call of its own.

    Warnings and errors are flushed at once, and so is everything at exit.
    """

    def __init__(self, interval: float = 0.1) -> None:
        stream = io.TextIOWrapper(
            open(sys.stderr.fileno(), "wb", closefd=False, buffering=1 << 16),  # noqa: SIM115
            encoding="utf-8",
            errors="backslashreplace",
        )
        super().__init__(stream)
        self._interval = interval
        self._last_flush = time.monotonic()
        self._flusher = threading.Thread(target=self._flush_often, daemon=True)
        self._flusher.start()
        atexit.register(self.flush)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        with contextlib.suppress(ValueError, OSError):
            super().flush()

    def _flush_often(self) -> None:
        while True:
            time.sleep(self._interval)
            if time.monotonic() - self._last_flush >= self._interval:
                self.acquire()
                try:
                    self.flush()
                finally:
                    self.release()


def configure(log_format: str, level: int | str = logging.INFO) -> None:
    """Send every log line to stderr in ``log_format`` (``text`` or ``json``)."""
    # One line per task sits on the hot path: skip the caller lookup and the
    # thread and process fields that no format here prints.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = BatchingStreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
