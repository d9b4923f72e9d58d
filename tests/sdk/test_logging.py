"""The command line's log formats, and the hot path's lines written without a
LogRecord: the same text as the records' own."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from worker_sdk._logging import JsonFormatter, TextFormatter, log_line

# Logs the same line through logging and through log_line, at a fixed time (each
# format's time is to the millisecond at most), then a failure with its traceback.
SCRIPT = textwrap.dedent(
    """
    import logging, sys, time
    from worker_sdk._logging import configure, log_line
    time.time = lambda: 1796350295.7432
    time.time_ns = lambda: 1796350295743200000
    configure(sys.argv[1])
    made = []
    factory = logging.getLogRecordFactory()
    logging.setLogRecordFactory(lambda *a, **k: made.append(1) or factory(*a, **k))
    log = logging.getLogger("agent._loop")
    extra = {"task_id": "t-1", "attempt": 2, "duration_ms": 1.5}
    log.info("task %s attempt %d %s", "t-1", 2, "completed", extra=extra)
    log_line(log, logging.INFO, "task t-1 attempt 2 completed", extra)
    log_line(log, logging.DEBUG, "below the level", extra)
    try:
        raise ValueError("the disk is full")
    except ValueError:
        log.exception("commit failed", extra={"task_id": "t-1"})
    logging.getLogger().handlers[0].flush()
    print(len(made))
    """
)


def _lines(log_format: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, log_format],
        capture_output=True,
        text=True,
        check=True,
    )
    # Records made: the standard line's and the failure's; log_line made none.
    assert done.stdout.split() == ["2"]
    return done.stderr.splitlines()


def test_a_text_line_is_the_same_either_way() -> None:
    lines = _lines("text")
    assert lines[0] == lines[1]
    assert lines[0].endswith(
        " INFO agent._loop: task t-1 attempt 2 completed "
        "task_id=t-1 attempt=2 duration_ms=1.5"
    )
    assert ",743 INFO " in lines[0]
    assert lines[2].endswith("ERROR agent._loop: commit failed task_id=t-1")
    assert lines[3] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: the disk is full"


def test_a_json_line_is_the_same_either_way() -> None:
    lines = _lines("json")
    assert lines[0] == lines[1]
    entry = json.loads(lines[0])
    assert entry["message"] == "task t-1 attempt 2 completed"
    assert (entry["level"], entry["logger"]) == ("INFO", "agent._loop")
    assert (entry["task_id"], entry["attempt"], entry["duration_ms"]) == ("t-1", 2, 1.5)
    failure = json.loads(lines[2])
    assert failure["message"] == "commit failed"
    assert "ValueError: the disk is full" in failure["exception"]
    assert len(lines) == 3


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[_Kept]:
    handler = _Kept()
    logger = logging.getLogger("tests.hot_path")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)


def test_other_handlers_get_a_record(kept: _Kept) -> None:
    logger = logging.getLogger("tests.hot_path")
    log_line(logger, logging.INFO, "task t-1 acquired", {"task_id": "t-1"})
    log_line(logger, logging.DEBUG, "below the level", {"task_id": "t-1"})
    [record] = kept.records
    assert record.getMessage() == "task t-1 acquired"
    assert record.levelno == logging.INFO
    assert record.__dict__["task_id"] == "t-1"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_lines_of_successive_seconds_carry_their_own_second(log_format: str) -> None:
    # The second's text is formatted once and kept: a line in the next second,
    # or back in an earlier one, must not reuse it.
    moments = [1796350295.25, 1796350295.75, 1796350296.5, 1796350295.9, 1796353900.0]
    lines = [
        TextFormatter.line(at, "INFO", "x", "m", {})
        if log_format == "text"
        else json.loads(JsonFormatter.line(at, "INFO", "x", "m", {}))["time"]
        for at in moments
    ]
    pattern = "%Y-%m-%d %H:%M:%S" if log_format == "text" else "%Y-%m-%dT%H:%M:%S"
    for at, line in zip(moments, lines, strict=True):
        assert line.startswith(time.strftime(pattern, time.localtime(at)))
