"""The model runs in a child process; the worker (parent) keeps the queue, leases and records.

A hung kernel or a runaway job cannot be stopped from inside a process, but a process can be
killed: past the lane's timeout, the parent kills the child, reports RenderTimeout and starts a
fresh child for the next call. Out-of-memory errors are caught in the child (which frees what it
can and goes on); a child that dies is reported as RuntimeCrashed and replaced.

Parent and child exchange small typed messages over a pipe (``model_messages``). The child
announces every step and reads the parent's "go on?" answer at the next one (it does not idle for
the round trip), so progress crosses at once and a stop lands one step later.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import multiprocessing.connection
import time
from typing import Any

from difflane.catalog import ModelSpec
from difflane.worker.model_messages import (
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
from difflane.worker.runtime import (
    RenderedImage,
    RenderStats,
    RenderTask,
    RenderTimeout,
    RuntimeCrashed,
    StepCallback,
)

log = logging.getLogger(__name__)

START_TIMEOUT_S = 600.0  # importing torch and building the runtime; loading models is separate
LOAD_TIMEOUT_S = 1800.0  # a large model from a network file share can be slow
CHILD_MODULE = "difflane.worker.child"  # its main(conn, config) serves the model


class IsolatedRuntime:
    """A Runtime whose model lives in a child process (see the module docstring)."""

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        self.device = "unknown"
        self._ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._loaded: dict[str, ModelSpec] = {}  # what the live child has loaded, to reload after a restart
        self._recent: ModelSpec | None = None  # the live child's most recently loaded or rendered model
        self._last_stats: RenderStats | None = None
        self._started = False
        self.restarts = 0  # children replaced after a timeout or a crash

    # --- Runtime ---------------------------------------------------------------------------------

    def load(self, model: ModelSpec) -> float:
        self._ensure_child()
        if self._recent == model:
            # The live child's most recently used model: its LRU keeps the newest, so it is loaded.
            # Skipping the round trip saves ~1 ms (two process wake-ups) of every batch's latency.
            return 0.0
        reply = self._request(Load(model), LOAD_TIMEOUT_S)
        self._loaded[model.name] = model
        self._recent = model
        assert isinstance(reply, Loaded)
        return reply.seconds

    def render(self, task: RenderTask, on_step: StepCallback, timeout: float | None = None) -> list[RenderedImage]:
        self._ensure_child()
        conn = self._connection()
        deadline = None if timeout is None else time.monotonic() + timeout
        conn.send(Render(task))
        self._recent = task.model  # the child's render loads it (and makes it its newest) first
        while True:
            message = self._receive(deadline, what=f"render of {task.model.name}")
            if isinstance(message, Step):
                try:
                    go_on = on_step(message.step, message.total)
                except BaseException:
                    # The child waits for an answer to every step: give it one (stop), and read
                    # the render's end, so the next request's reply is not taken for this one's.
                    self._abandon_render(conn, deadline, task)
                    raise
                conn.send(GoOn(go_on))
            elif isinstance(message, Done):
                self._last_stats = message.stats
                return message.images
            elif isinstance(message, Failed):
                raise message.exception()
            else:
                raise RuntimeCrashed(f"unexpected message from the model process: {message!r}")

    def _abandon_render(
        self, conn: multiprocessing.connection.Connection, deadline: float | None, task: RenderTask
    ) -> None:
        try:
            conn.send(GoOn(False))
            while True:
                message = self._receive(deadline, what=f"render of {task.model.name}")
                if isinstance(message, Step):
                    conn.send(GoOn(False))
                elif isinstance(message, Done | Failed):
                    return
        except Exception:  # out of step for good: a fresh child is the safe state
            log.warning("model process out of step after a failed step callback; restarting it", exc_info=True)
            self._kill()

    @property
    def last_stats(self) -> RenderStats | None:
        return self._last_stats

    def close(self) -> None:
        if self._conn is not None and self._process is not None and self._process.is_alive():
            try:
                self._conn.send(Stop())
                self._process.join(10)
            except (OSError, EOFError):
                pass
        self._kill()

    # --- the child's lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the child now (instead of on first use), so start-up cost is paid before ready."""
        self._ensure_child()

    def _ensure_child(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        if self._started:
            self.restarts += 1
            log.warning("starting a new model process (restart %d)", self.restarts)
        self._kill()
        self._started = True
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_child_main, args=(CHILD_MODULE, child, self.config), name="difflane-model", daemon=True
        )
        process.start()
        child.close()
        self._process, self._conn = process, parent
        reply = self._receive(time.monotonic() + START_TIMEOUT_S, what="model process start")
        if isinstance(reply, Failed):
            self._kill()
            raise reply.exception()
        assert isinstance(reply, Ready)
        self.device = reply.device
        previously = list(self._loaded.values())
        self._loaded.clear()
        for spec in previously:  # a replaced child serves what its predecessor had loaded
            self.load(spec)

    def _request(self, message: Load, timeout: float) -> Any:
        self._connection().send(message)
        reply = self._receive(time.monotonic() + timeout, what=f"load of {message.model.name}")
        if isinstance(reply, Failed):
            raise reply.exception()
        return reply

    def _receive(self, deadline: float | None, *, what: str) -> Any:
        conn = self._connection()
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            ready = conn.poll(remaining)
        except (OSError, EOFError):
            ready = True  # the next recv reports the broken pipe
        if not ready:
            self._kill()
            raise RenderTimeout(f"{what} took longer than its time limit; the model process was restarted")
        try:
            return conn.recv()
        except (EOFError, OSError, ConnectionResetError) as exc:
            code = self._process.exitcode if self._process else None
            self._kill()
            raise RuntimeCrashed(f"the model process died during {what} (exit code {code})") from exc

    def _connection(self) -> multiprocessing.connection.Connection:
        if self._conn is None:
            raise RuntimeCrashed("the model process is not running")
        return self._conn

    def _kill(self) -> None:
        process, self._process = self._process, None
        self._recent = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if process is not None and process.is_alive():
            process.kill()  # SIGKILL: a hung CUDA kernel ignores anything gentler
            process.join(10)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None


def _child_main(module: str, conn: multiprocessing.connection.Connection, config: RuntimeConfig) -> None:
    """Runs in the child process. The entry point is named, not imported, so ``isolation`` and
    ``child`` share only ``model_messages`` (the child process imports this module only to
    unpickle this function; ``child.py`` never imports it)."""
    importlib.import_module(module).main(conn, config)
