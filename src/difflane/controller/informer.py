"""List, then watch: a local copy of one kind of object, and a callback for every change.

The usual Kubernetes pattern, in small: list to learn the state and its resourceVersion, watch
from there, list again when the server says the version is too old (410) or the connection
breaks. After a re-list, objects that vanished while we were not watching are reported as
deleted, so no deletion is missed. Watches ask for BOOKMARK events: they carry only a newer
resourceVersion, so a selector that sees no changes for a while still resumes from a version
the server has not compacted away (no 410, no full list). Tested in
tests/integration/test_informer_bookmarks.py.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from difflane.dispatch.kubernetes_api import Expired, Obj, WatchStream
from difflane.errors import Unavailable

log = logging.getLogger(__name__)

ListFn = Callable[[], tuple[list[Obj], str]]
WatchFn = Callable[[str], WatchStream]  # resourceVersion → stream
OnChange = Callable[[str, Obj], None]  # ("ADDED" | "MODIFIED" | "DELETED", object)


class Informer:
    def __init__(
        self, kind: str, list_fn: ListFn, watch_fn: WatchFn, on_change: OnChange, *, max_backoff: float = 30.0
    ) -> None:
        self.kind = kind
        self._list = list_fn
        self._watch = watch_fn
        self._on_change = on_change
        self._max_backoff = max_backoff
        self._lock = threading.Lock()
        self._objects: dict[str, Obj] = {}
        self._stream: WatchStream | None = None
        self._stopping = threading.Event()
        self.synced = threading.Event()  # set once the first list has been applied

    def get(self, name: str) -> Obj | None:
        with self._lock:
            return self._objects.get(name)

    def items(self) -> list[Obj]:
        with self._lock:
            return list(self._objects.values())

    def run(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                version = self._relist()
                backoff = 0.5
                while not self._stopping.is_set():
                    version = self._follow(version)
            except Expired:
                log.info("%s watch expired; listing again", self.kind)
            except Exception as exc:  # noqa: BLE001 - API down or an odd answer: list again, later
                if self._stopping.is_set():
                    break
                reason = exc.message if isinstance(exc, Unavailable) else f"{type(exc).__name__}: {exc}"
                log.warning("%s informer: %s; retrying in %.1fs", self.kind, reason, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.close()

    def _relist(self) -> str:
        items, version = self._list()
        fresh = {_name(o): o for o in items}
        with self._lock:
            gone = [o for name, o in self._objects.items() if name not in fresh]
            self._objects = fresh
        for obj in gone:
            self._on_change("DELETED", obj)
        for obj in items:
            self._on_change("ADDED", obj)
        self.synced.set()
        return version

    def _follow(self, version: str) -> str:
        """One watch request; returns the resourceVersion to continue from."""
        stream = self._watch(version)
        with self._lock:
            self._stream = stream
        if self._stopping.is_set():
            stream.close()
        try:
            for kind, obj in stream:
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind == "BOOKMARK":
                    continue  # no object (not even a name): only the version moves on
                if self._stopping.is_set():
                    break  # no more callbacks once stopped: the next leader has its own informers
                with self._lock:
                    if kind == "DELETED":
                        self._objects.pop(_name(obj), None)
                    else:
                        self._objects[_name(obj)] = obj
                self._on_change(kind, obj)
        finally:
            with self._lock:
                self._stream = None
        return version


def _name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))
