"""Blobs as files under one directory (the embedded shape)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from difflane.blobs.base import check_key
from difflane.errors import NotFound, Unavailable


class LocalBlobStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write beside the target, then rename: a reader never sees a half-written image.
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise Unavailable(f"cannot write blob {key}: {exc}") from exc

    def open(self, key: str, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
        try:
            f = open(self._path(key), "rb")  # noqa: SIM115 - closed by the generator
        except FileNotFoundError as exc:
            raise NotFound(f"blob {key} not found") from exc
        except OSError as exc:
            raise Unavailable(f"cannot read blob {key}: {exc}") from exc
        return _chunks(f, chunk_size)

    def signed_url(self, key: str, ttl_seconds: int) -> str | None:
        return None  # files on this machine are served by the API after its own authorization

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def ping(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise Unavailable(f"result directory {self.root} is not writable")


def _chunks(f, chunk_size: int) -> Iterator[bytes]:  # type: ignore[no-untyped-def]
    with f:
        while chunk := f.read(chunk_size):
            yield chunk
