"""The buffered log handler: batches, but never loses or reorders a line (issue 10)."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from difflane.telemetry import tracing
from difflane.telemetry.logging import BufferedHandler, JsonFormatter, job_context


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, BufferedHandler, CountingStream]]:
    stream = CountingStream()
    handler = BufferedHandler(stream, interval=3600)  # the timer never fires within a test
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("difflane.test.buffer")
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    log.propagate = False
    try:
        yield log, handler, stream
    finally:
        log.removeHandler(handler)
        log.propagate = True
        handler.close()


def messages(stream: io.StringIO) -> list[str]:
    return [json.loads(line)["msg"] for line in stream.getvalue().splitlines()]


def test_info_lines_wait_and_a_warning_takes_them_out_in_order(logger: tuple) -> None:
    log, _, stream = logger
    log.info("one")
    log.info("two")
    assert stream.getvalue() == ""
    log.warning("three")
    assert messages(stream) == ["one", "two", "three"]
    assert stream.writes == 1  # one write for the batch


def test_close_writes_what_waits(logger: tuple) -> None:
    log, handler, stream = logger
    log.info("pending")
    handler.close()
    assert messages(stream) == ["pending"]
    log.info("after close")  # e.g. a line during interpreter shutdown: written at once
    assert messages(stream) == ["pending", "after close"]


def test_a_full_buffer_is_written_without_waiting(logger: tuple) -> None:
    log, handler, stream = logger
    handler.capacity = 3
    for i in range(3):
        log.info("line %d", i)
    assert messages(stream) == ["line 0", "line 1", "line 2"]


def test_the_timer_writes_waiting_lines() -> None:
    stream = io.StringIO()
    handler = BufferedHandler(stream, interval=0.01)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("difflane.test.buffer.timer")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("flushed at once")
        log.error("also")
        log.setLevel(logging.INFO)
        log.info("by the timer")
        deadline = time.monotonic() + 30  # generous on a busy machine: this waits, it does not time
        while "by the timer" not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stream.getvalue().splitlines() == ["flushed at once", "also", "by the timer"]
    finally:
        log.removeHandler(handler)
        handler.close()


def test_context_is_read_when_the_line_is_logged_not_when_written(logger: tuple) -> None:
    log, handler, stream = logger
    with job_context("0190aaaa-bbbb-7ccc-8ddd-eeeeffff0000"):
        log.info("in the job")
    handler.flush()
    assert json.loads(stream.getvalue())["job_id"] == "0190aaaa-bbbb-7ccc-8ddd-eeeeffff0000"


def test_lines_inside_a_span_keep_its_trace_id_through_the_buffer(logger: tuple) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    log, handler, stream = logger
    handler.addFilter(tracing.LogCorrelation())
    tracing.setup("difflane-test", env={}, span_exporter=InMemorySpanExporter())
    try:
        with tracing.span("work") as current:
            log.info("inside")
    finally:
        tracing.shutdown()
    handler.flush()
    assert json.loads(stream.getvalue())["trace_id"] == format(current.get_span_context().trace_id, "032x")


def test_a_clean_exit_writes_every_waiting_line() -> None:
    program = (
        "import logging\n"
        "from difflane.telemetry import logging as log_setup\n"
        "log_setup.setup('info', 'json', buffered=True)\n"
        "for i in range(500):\n"
        "    logging.getLogger('difflane.x').info('line %d', i)\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True)
    assert [json.loads(line)["msg"] for line in done.stderr.splitlines()] == [f"line {i}" for i in range(500)]
