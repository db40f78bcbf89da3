"""Logs with the job id of the work in hand: JSON lines for collectors, plain lines on a terminal."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from difflane.telemetry import tracing

job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)


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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        job_id = job_id_var.get()
        if job_id:
            entry["job_id"] = job_id
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """One short line for a person: time, level, message, then the structured fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        job_id = job_id_var.get()
        fields = {k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")}
        if job_id and "job_id" not in fields:
            fields["job_id"] = job_id
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


def setup(level: str = "info", fmt: str = "auto") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if resolve_format(fmt, sys.stderr) == "json" else TextFormatter())
    handler.addFilter(tracing.LogCorrelation())  # trace_id / span_id inside a span
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries' chatter at INFO (HTTP access lines, model loading) stays out of our stream.
    for noisy in ("uvicorn.access", "httpx", "urllib3", "diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    quiet_third_party(interactive=sys.stderr.isatty())
