"""Logs with the job id of the work in hand: JSON lines for collectors, plain lines on a terminal.

A process on a hot path (the API) writes through ``BufferedHandler``: each record is formatted at
once, where its context (job id, request id, trace ids) is still current, and the lines reach the
stream in batches, so a request costs a list append instead of a write.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

from difflane.telemetry import tracing

job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
# The HTTP request in hand (api/access_log.py sets it): every line logged while answering it carries it.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Log lines inside carry ``job_id``."""
    token = job_id_var.set(job_id)
    try:
        yield
    finally:
        job_id_var.reset(token)


# LogRecord's own attributes, and uvicorn's ANSI-coloured copy of its message.
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"color_message"}


def _context_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    request_id = request_id_var.get()
    if request_id:
        fields["request_id"] = request_id
    job_id = job_id_var.get()
    if job_id:
        fields["job_id"] = job_id
    return fields


class JsonFormatter(logging.Formatter):
    _cached: tuple[int, str] = (-1, "")  # (second, its formatted form): one tuple, so threads never mix halves

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_context_fields(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)

    def _timestamp(self, record: logging.LogRecord) -> str:
        # strftime once a second, not once a line (the API writes one line per request).
        second = int(record.created)
        cached_second, stamp = self._cached
        if second != cached_second:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._cached = (second, stamp)
        return f"{stamp}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """One short line for a person: time, level, message, then the structured fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _context_fields()
        fields.update((k, v) for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_"))
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        source = "" if record.name.startswith("difflane") else f"{record.name}: "  # ours need no label
        line = f"{self.formatTime(record, '%H:%M:%S')} {level}{source}{record.getMessage()}"
        if fields:
            line += "  " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def resolve_format(fmt: str, stream: Any = None) -> str:
    """``auto``: readable lines for a person at a terminal, JSON for log collectors and pipes."""
    if fmt != "auto":
        return fmt
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


class DropTorchvisionFallback(logging.Filter):
    """transformers 5 warns, once per process, that its image processors fall back to PIL without
    torchvision. difflane never runs them (text-to-image only: no safety checker, no feature
    extractor), and torchvision would add a second CUDA-pinned wheel to keep in step with torch,
    so the fallback is intended and the warning is noise on every worker start."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("requires torchvision (not installed)" in message and "falling back to" in message)


# The logger transformers emits that warning from (transformers.utils.import_utils).
TORCHVISION_FALLBACK_LOGGER = "transformers.utils.import_utils"


def quiet_third_party(interactive: bool = False) -> None:
    """Drop the third-party output that says nothing to difflane's users; idempotent. Call before
    diffusers is imported: progress bars are switched off at import (unless a person watches)."""
    if not interactive:  # a bar drawn into a log file is only noise ("Writing model shards")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    target = logging.getLogger(TORCHVISION_FALLBACK_LOGGER)
    if not any(isinstance(f, DropTorchvisionFallback) for f in target.filters):
        target.addFilter(DropTorchvisionFallback())


class BufferedHandler(logging.Handler):
    """Formats each record when it is logged and writes the lines in batches: every ``interval``
    seconds, once ``capacity`` lines wait, at once for a warning or worse (and everything queued
    before it, so the order holds), and on flush/close. ``logging.shutdown`` (run at exit, also
    after SIGTERM in ``difflane serve``) flushes and closes every handler, so no line is lost at
    a clean exit; a SIGKILL loses at most the last ``interval``."""

    def __init__(
        self,
        stream: TextIO,
        *,
        interval: float = 0.2,
        capacity: int = 1024,
        flush_level: int = logging.WARNING,
    ) -> None:
        super().__init__()
        self.stream = stream
        self.interval = interval
        self.capacity = capacity
        self.flush_level = flush_level
        self._lines: list[str] = []
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._pid = 0

    def emit(self, record: logging.LogRecord) -> None:  # called with self.lock held (Handler.handle)
        try:
            self._lines.append(self.format(record))
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)
            return
        if record.levelno >= self.flush_level or len(self._lines) >= self.capacity or self._stop.is_set():
            self._write()
        elif self._pid != os.getpid():  # first line, or a forked child: its own timer
            self._start_flusher()

    def flush(self) -> None:
        self.acquire()
        try:
            self._write()
        finally:
            self.release()

    def close(self) -> None:
        self._stop.set()
        self.flush()
        super().close()

    def _write(self) -> None:
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:  # noqa: BLE001 - a closed or broken stream must not break the caller
            self.handleError(logging.makeLogRecord({"msg": "log lines lost: the stream failed"}))

    def _start_flusher(self) -> None:
        self._pid = os.getpid()
        self._flusher = threading.Thread(target=self._flush_periodically, name="log-flusher", daemon=True)
        self._flusher.start()

    def _flush_periodically(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()


def setup(level: str = "info", fmt: str = "auto", *, buffered: bool = False) -> None:
    """Root logging for a difflane process. ``buffered``: lines are written in batches
    (``BufferedHandler``) — for the API, which logs a line per request."""
    handler: logging.Handler = BufferedHandler(sys.stderr) if buffered else logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if resolve_format(fmt, sys.stderr) == "json" else TextFormatter())
    handler.addFilter(tracing.LogCorrelation())  # trace_id / span_id inside a span
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, BufferedHandler):
            old.close()  # its waiting lines go out before the new handler's
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Neither formatter prints the caller, thread or process of a line: don't look them up for each
    # record (the optimisations the logging documentation names; ~a fifth of a record's cost).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # Libraries' chatter at INFO (HTTP access lines, model loading) stays out of our stream.
    for noisy in ("uvicorn.access", "httpx", "urllib3", "diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    quiet_third_party(interactive=sys.stderr.isatty())
