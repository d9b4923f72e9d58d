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
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "BatchingStreamHandler",
    "JsonFormatter",
    "TextFormatter",
    "configure",
    "log_line",
]

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


def _local_time(created: float, pattern: str) -> str:
    return time.strftime(pattern, time.localtime(created))


class _Seconds:
    """The local time of one second in one pattern, formatted once: a process
    writing a line per task writes hundreds of lines within each second."""

    def __init__(self, pattern: str) -> None:
        self._pattern = pattern
        # One tuple, replaced whole: threads logging at once never see a second
        # paired with another second's text.
        self._last = (-1, "")

    def of(self, at: float) -> str:
        second = int(at)
        last = self._last
        if last[0] != second:
            last = (second, _local_time(second, self._pattern))
            self._last = last
        return last[1]


_Extras = Mapping[str, Any]


_JSON_SECONDS = _Seconds("%Y-%m-%dT%H:%M:%S")
_TEXT_SECONDS = _Seconds("%Y-%m-%d %H:%M:%S")


def _json_line(at: float, level: str, name: str, message: str, extras: _Extras) -> str:
    entry = {
        "time": _JSON_SECONDS.of(at),
        "level": level,
        "logger": name,
        "message": message,
        **extras,
    }
    return json.dumps(entry, default=str)


def _text_line(at: float, level: str, name: str, message: str, extras: _Extras) -> str:
    # The time as logging.Formatter's default asctime: milliseconds last.
    millis = int((at - int(at)) * 1000)
    text = f"{_TEXT_SECONDS.of(at)},{millis:03d} {level} {name}: {message}"
    if extras:
        text += " " + " ".join([f"{k}={v}" for k, v in extras.items()])
    return text


class _LineFormatter(logging.Formatter):
    """Builds a record's line from its parts, which the hot path hands over with
    no record at all (``log_line``)."""

    line: Callable[[float, str, str, str, _Extras], str]

    def format(self, record: logging.LogRecord) -> str:
        return self._line_of(record, _extras(record))

    def _line_of(self, record: logging.LogRecord, extras: _Extras) -> str:
        message = record.getMessage()
        return self.line(record.created, record.levelname, record.name, message, extras)


class JsonFormatter(_LineFormatter):
    line = staticmethod(_json_line)

    def format(self, record: logging.LogRecord) -> str:
        extras = _extras(record)
        if record.exc_info:
            extras["exception"] = self.formatException(record.exc_info)
        return self._line_of(record, extras)


class TextFormatter(_LineFormatter):
    """One line per record, its ``extra`` fields as key=value after the message;
    a traceback, if any, follows on the next lines."""

    line = staticmethod(_text_line)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
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

    def emit_line(self, level: int, name: str, message: str, extras: Any) -> None:
        """Write what ``format`` would make of such a record, without making one."""
        formatter = self.formatter
        assert isinstance(formatter, _LineFormatter)
        text = formatter.line(
            time.time(), logging.getLevelName(level), name, message, extras
        )
        self.acquire()
        try:
            self.stream.write(text + self.terminator)
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": message}))
        finally:
            self.release()
        if level >= logging.WARNING:
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


def log_line(
    logger: logging.Logger, level: int, message: str, extras: Mapping[str, Any]
) -> None:
    """``logger.log(level, message, extra=extras)`` for the lines of the hot path.

    When the handler that ``configure`` installed is the only one the record would
    reach, and nothing filters it, the line is written straight away: making a
    LogRecord and passing it through the handler chain costs several times more.
    """
    if not logger.isEnabledFor(level):
        return
    handler = _sole_handler(logger)
    if handler is None or handler.level > level:
        logger.log(level, "%s", message, extra=extras)
        return
    handler.emit_line(level, logger.name, message, extras)


def _sole_handler(logger: logging.Logger) -> BatchingStreamHandler | None:
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters or current.disabled:
            return None
        found.extend(current.handlers)
        if not current.propagate:
            break
        current = current.parent
    if len(found) != 1:
        return None
    handler = found[0]
    if not isinstance(handler, BatchingStreamHandler) or handler.filters:
        return None
    if not isinstance(handler.formatter, _LineFormatter):
        return None
    return handler
