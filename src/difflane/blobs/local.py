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
            # Write beside the target, then rename: a reader never sees a half-written image.
            # The temporary name starts with the target's, so delete() finds what a killed
            # writer left behind.
            fd, tmp = _temporary_beside(path)
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
            _fsync_dir(path.parent)  # the rename itself survives a power cut only once its folder is synced
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
        path = self._path(key)
        try:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            for leftover in path.parent.glob(f"{_tmp_prefix(path)}*"):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
            self._prune(path.parent, keep=self.root / key.split("/", 1)[0])
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise Unavailable(f"cannot delete blob {key}: {exc}") from exc

    def _prune(self, folder: Path, keep: Path) -> None:
        """Remove folders the deletion left empty, below the key's top folder (``outputs/``)."""
        while keep in folder.parents:
            try:
                folder.rmdir()
            except OSError:  # not empty (or already gone): stop here
                return
            folder = folder.parent

    def ping(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise Unavailable(f"result directory {self.root} is not writable")


def _temporary_beside(path: Path) -> tuple[int, str]:
    for _ in range(3):  # a concurrent delete may prune the folder between mkdir and mkstemp
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path))
        except FileNotFoundError:
            continue
    return tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path))


def _tmp_prefix(path: Path) -> str:
    return f".tmp-{path.name}."


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _chunks(f, chunk_size: int) -> Iterator[bytes]:  # type: ignore[no-untyped-def]
    with f:
        while chunk := f.read(chunk_size):
            yield chunk
