"""The model process: builds the runtime, then serves Load and Render requests until Stop.

Runs on its own main thread (inference is fastest there). Any failure is reported as a typed
message; only a dead process goes unreported, and the parent notices the broken pipe.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import multiprocessing.connection
import os
import signal
import sys
from typing import Any

from difflane.worker.model_messages import (
    UNCLASSIFIED,
    Done,
    Failed,
    GoOn,
    Load,
    Loaded,
    Ready,
    Render,
    RuntimeConfig,
    Step,
    Stop,
)
from difflane.worker.runtime import Interrupted, OutOfMemory, Runtime, RuntimeFailure

log = logging.getLogger("difflane.worker.child")

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def main(conn: multiprocessing.connection.Connection, config: RuntimeConfig) -> None:
    # The parent handles SIGINT/SIGTERM (finish or give back the batch); the child just serves.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    _yield_cpu(config.nice)
    try:
        runtime = build_runtime(config)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails loudly
        conn.send(Failed(UNCLASSIFIED, f"cannot start the model runtime: {type(exc).__name__}: {exc}"))
        return
    conn.send(Ready(runtime.device))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if isinstance(message, Stop):
            runtime.close()
            return
        conn.send(_handle(runtime, conn, message))


def _die_with_parent() -> None:
    """Linux: if the worker is killed (even with SIGKILL), the kernel kills this process too,
    so a hung render never outlives its worker and keeps holding the GPU."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _yield_cpu(nice: int) -> None:
    """Lower this process's priority, so that an API on the same cores answers first (the
    render takes what the API leaves). Never raised back: only root may raise a priority."""
    if nice > 0 and hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(nice)


def build_runtime(config: RuntimeConfig) -> Runtime:
    if config.kind == "fake":
        from difflane.testing import FakeRuntime

        return FakeRuntime(step_seconds=config.fake_step_seconds)
    from pathlib import Path

    from difflane.telemetry import logging as log_setup

    log_setup.quiet_third_party(interactive=sys.stderr.isatty())  # before diffusers/transformers load
    from difflane.worker.diffusers_runtime import DiffusersRuntime

    runtime = DiffusersRuntime(
        Path(config.hf_home),
        device=config.device,
        memory_budget_bytes=config.memory_budget_bytes,
        compile_models=config.compile_models,
    )
    if config.threads is not None:
        import torch  # there: the runtime needs it

        # Here, on the thread that will run inference (a call from another thread is slower).
        torch.set_num_threads(config.threads)
    return runtime


def _handle(runtime: Runtime, conn: multiprocessing.connection.Connection, message: Any) -> Any:
    try:
        if isinstance(message, Load):
            return Loaded(runtime.load(message.model))
        if isinstance(message, Render):
            asker = _Asker(conn)
            try:
                images = runtime.render(message.task, asker)
            finally:
                asker.settle()  # one answer read per Step sent, whatever ended the render
            return Done(images, runtime.last_stats)
        return Failed(UNCLASSIFIED, f"unknown request {type(message).__name__}")
    except RuntimeFailure as exc:
        if isinstance(exc, OutOfMemory):
            gc.collect()  # the failed batch's tensors are garbage now; give their memory back
        return Failed.of(exc, _EMPTY_MESSAGES.get(exc.code, ""))
    except MemoryError as exc:
        gc.collect()
        return Failed.of(OutOfMemory(str(exc)), "out of memory")
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, raised outside render
            gc.collect()
            return Failed.of(OutOfMemory(str(exc).splitlines()[0] if str(exc) else "CUDA out of memory"))
        log.exception("render failed")
        return Failed(UNCLASSIFIED, f"{type(exc).__name__}: {exc}")


# What the parent reads when a failure came without a message (the fake runtime's bare Interrupted()).
_EMPTY_MESSAGES = {Interrupted.code: "stopped", OutOfMemory.code: "out of memory"}


class _Asker:
    """The step callback: tells the parent each step without waiting for its answer, and reads
    that answer at the next step, by when it has arrived (the parent answers at once). The model
    never idles for a pipe round trip between two steps; a stop takes effect one step later."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self._conn = conn
        self._unanswered = False

    def __call__(self, step: int, total: int) -> bool:
        if self._unanswered and not self._answer():
            return False
        self._conn.send(Step(step, total))
        self._unanswered = True
        return True

    def settle(self) -> None:
        if self._unanswered:
            self._answer()

    def _answer(self) -> bool:
        self._unanswered = False
        reply = self._conn.recv()
        return bool(isinstance(reply, GoOn) and reply.go_on)
