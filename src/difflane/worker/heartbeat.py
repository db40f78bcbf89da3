"""Worker heartbeats: how the API of ``difflane serve`` knows that a worker beside it is warm.

Each worker process rewrites one small JSON file, ``<data_dir>/workers/<host>-<pid>.json``, every
``BEAT_S`` seconds: its state (starting → ready → stopping) and the time of the beat. The API's
``/readyz`` reads the folder. A file whose last beat is older than ``STALE_S`` belongs to a worker
that died without cleaning up or that hangs, and does not count.

Files rather than a database row: a beat never waits for SQLite's write lock behind job writes
(nor holds it), a reader needs no connection, and a SIGKILLed worker leaves only a file that ages
out. Nothing here imports torch: the API process reads these files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path

log = logging.getLogger(__name__)

BEAT_S = 2.0
# Five missed beats: a worker's parent process only waits on its child and the queue, so a beat
# this late means it is stopped or gone, not busy (a render runs in the child process).
STALE_S = 10.0
FOLDER = "workers"


class WorkerState(StrEnum):
    STARTING = "starting"  # the process is up; the model runtime is loading or warming up
    READY = "ready"  # every served model is loaded and warm: jobs start at once
    STOPPING = "stopping"  # SIGTERM: finishing the batch in hand, taking no more


@dataclasses.dataclass(frozen=True)
class Beat:
    host: str
    pid: int
    state: WorkerState
    lanes: tuple[str, ...]
    started_at: float  # wall clock, seconds since the epoch
    ready_at: float | None
    at: float  # this beat

    def fresh(self, now: float) -> bool:
        return now - self.at <= STALE_S

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "lanes": list(self.lanes)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Beat:
        raw = json.loads(text)
        return cls(
            host=str(raw["host"]),
            pid=int(raw["pid"]),
            state=WorkerState(raw["state"]),
            lanes=tuple(str(n) for n in raw["lanes"]),
            started_at=float(raw["started_at"]),
            ready_at=None if raw.get("ready_at") is None else float(raw["ready_at"]),
            at=float(raw["at"]),
        )


def folder(data_dir: Path) -> Path:
    return Path(data_dir) / FOLDER


def path_for(data_dir: Path, pid: int, host: str | None = None) -> Path:
    return folder(data_dir) / f"{host or socket.gethostname()}-{pid}.json"


class Heartbeat:
    """This process's beats, written by one daemon thread until ``close()`` removes the file.

    Only that thread writes (after the first beat, which ``start`` writes), so nothing here takes
    a lock: ``mark`` may be called from a signal handler without risking a deadlock.
    """

    def __init__(
        self,
        data_dir: Path,
        lanes: Iterable[str],
        *,
        interval: float = BEAT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path_for(data_dir, os.getpid())
        self.state = WorkerState.STARTING
        self._lanes = tuple(lanes)
        self._interval = interval
        self._clock = clock
        self._started_at = clock()
        self._ready_at: float | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._warned = False

    def start(self) -> None:
        self._write()
        self._thread.start()

    def mark(self, state: WorkerState, *, beat_now: bool = True) -> None:
        """Change state; ``beat_now`` writes at once (a reader sees ``ready`` without waiting a
        period). A signal handler passes False: waking the thread takes a lock."""
        if state is WorkerState.READY and self._ready_at is None:
            self._ready_at = self._clock()
        self.state = state
        if beat_now:
            self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._interval + 1)
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stop.is_set():
                return  # the file is about to go: a late beat must not bring it back
            self._write()

    def _write(self) -> None:
        beat = Beat(
            socket.gethostname(),
            os.getpid(),
            self.state,
            self._lanes,
            self._started_at,
            self._ready_at,
            self._clock(),
        )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(beat.to_json())
            os.replace(tmp, self.path)  # a reader sees the old beat or the new one, never half
        except OSError as exc:
            if not self._warned:  # readiness says the worker is silent; one line, not one a beat
                log.warning("cannot write the worker heartbeat %s: %s", self.path, exc)
                self._warned = True


def read_all(data_dir: Path) -> list[Beat]:
    """Every worker's last beat; unreadable or half-written files are skipped."""
    beats: list[Beat] = []
    # Any OSError on the folder (missing, not a folder, no permission): no worker can be vouched
    # for. Readiness then says so (503), and the forecast falls back to the configured workers;
    # neither may turn into a 500 on every request.
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder(data_dir)):
            if not entry.name.endswith(".json"):
                continue
            try:
                beats.append(Beat.from_json(Path(entry.path).read_text()))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # removed meanwhile, or not ours
    return beats


@dataclasses.dataclass(frozen=True)
class Readiness:
    """What the beats say about serving: at least one fresh, warm worker."""

    warm: int
    starting: int
    stopping: int
    stale: int

    @property
    def ready(self) -> bool:
        return self.warm > 0

    def describe(self) -> str:
        if self.ready:
            return "ok"
        parts = [f"{n} {what}" for n, what in ((self.starting, "warming up"), (self.stopping, "stopping")) if n]
        if self.stale:
            parts.append(f"{self.stale} silent for over {STALE_S:.0f} s")
        return "unavailable: no warm worker" + (f" ({', '.join(parts)})" if parts else " has reported yet")


def readiness(beats: Iterable[Beat], now: float | None = None) -> Readiness:
    now = time.time() if now is None else now
    counts = dict.fromkeys(("warm", "starting", "stopping", "stale"), 0)
    for beat in beats:
        if not beat.fresh(now):
            counts["stale"] += 1
        elif beat.state is WorkerState.READY:
            counts["warm"] += 1
        else:
            counts[str(beat.state)] += 1
    return Readiness(**counts)


def remove(data_dir: Path, pid: int) -> None:
    """The supervisor saw this worker exit: it is not ready now, not in ``STALE_S`` seconds."""
    with contextlib.suppress(OSError):
        path_for(data_dir, pid).unlink()


def prune(data_dir: Path, older_than: float = 3600.0) -> None:
    """Forget workers silent for long (a SIGKILLed run's files), so the folder stays small."""
    now = time.time()
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(folder(data_dir)):
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > older_than:
                    os.unlink(entry.path)
