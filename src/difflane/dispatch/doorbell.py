"""Cross-process wake-ups for the embedded shape, over Unix datagram sockets.

Each waiting process binds a socket named ``<role>-<pid>-<n>.sock`` in a shared folder; ringing a
role sends one byte to every socket of that role. Receivers only use the ring as a hint to look
at the database now instead of at their next fallback poll, so a lost ring costs latency, never
correctness. This keeps the dispatch path free of polling naps.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import select
import socket
import tempfile
from pathlib import Path

_MAX_PATH = 100  # sun_path is 108 bytes on Linux; keep a margin for the file name
_counter = itertools.count()


def socket_dir(data_dir: Path) -> Path:
    """``data_dir/run``, or a short folder in the temp dir when that path is too long."""
    preferred = data_dir.resolve() / "run"
    if len(str(preferred)) + 40 <= _MAX_PATH:
        return preferred
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"difflane-{digest}"


class Doorbell:
    """A socket other processes can ring; ``wait`` blocks until a ring or a timeout."""

    def __init__(self, folder: Path, role: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{role}-{os.getpid()}-{next(_counter)}.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._sock.bind(str(self.path))

    def fileno(self) -> int:
        return self._sock.fileno()

    def wait(self, timeout: float) -> bool:
        """True when rung (all pending rings are consumed), False on timeout."""
        ready, _, _ = select.select([self._sock], [], [], max(timeout, 0.0))
        if ready:
            self.drain()
        return bool(ready)

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while True:
                self._sock.recv(64)

    def close(self) -> None:
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def ring_one(path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender, contextlib.suppress(OSError):
        sender.setblocking(False)
        sender.sendto(b"!", str(path))


def ring(folder: Path, role: str) -> None:
    """Wake every process waiting under ``role`` in ``folder``; stale sockets are removed."""
    try:
        entries = os.scandir(folder)
    except FileNotFoundError:
        return
    with entries, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        for entry in entries:
            if not (entry.name.startswith(role + "-") and entry.name.endswith(".sock")):
                continue
            try:
                sender.sendto(b"!", entry.path)
            except BlockingIOError:
                pass  # its buffer is full of rings already: it will wake
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)  # its owner died without cleaning up
