"""Download a catalog model's weights into the local hub cache, at its pinned revision.

Pulling is an operator action (``difflane models pull NAME``), run before a worker serves the
model: the runtime itself only ever reads the cache. Every failure becomes one ModelUnavailable
line naming the model, repo, revision and cause, so a CLI can print it without a traceback.

Timeouts: huggingface_hub reads ``HF_HUB_ETAG_TIMEOUT`` / ``HF_HUB_DOWNLOAD_TIMEOUT`` (and
``HF_ENDPOINT``) once, when it is first imported, and its shared HTTP client has no timeout for
metadata calls. We read the variables when ``pull`` is called and apply them for its duration,
so a stalled hub fails the pull instead of hanging it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from difflane.catalog import ModelSpec
from difflane.errors import DifflaneError, InvalidInput, MissingExtra
from difflane.worker.runtime import ModelUnavailable

# Small on purpose: these bound the wait for a first byte or between bytes, not a whole file.
DEFAULT_ETAG_TIMEOUT_S = 10.0
DEFAULT_DOWNLOAD_TIMEOUT_S = 30.0


def pull(spec: ModelSpec, hf_home: Path) -> Path:
    """Download ``spec`` at its revision into ``hf_home/hub``; returns the snapshot folder."""
    if spec.is_local_dir:
        raise InvalidInput(f"model {spec.name!r} is a local directory ({spec.source}): nothing to pull")
    if spec.revision is None:  # the catalog forbids it for hub models; keep mypy and callers honest
        raise InvalidInput(f"model {spec.name!r} has no pinned revision: refusing to pull")
    hub = _require("huggingface_hub")
    cache_dir = Path(hf_home) / "hub"
    etag_s = _env_seconds("HF_HUB_ETAG_TIMEOUT", DEFAULT_ETAG_TIMEOUT_S)
    download_s = _env_seconds("HF_HUB_DOWNLOAD_TIMEOUT", DEFAULT_DOWNLOAD_TIMEOUT_S)
    endpoint = os.environ.get("HF_ENDPOINT") or None
    httpx = importlib.import_module("huggingface_hub.utils").httpx  # the transport hub uses
    try:
        with _bounded_http(hub, httpx, etag_s, download_s):
            commit = _resolve(hub, spec, endpoint, etag_s)
            folder = hub.snapshot_download(
                spec.source,
                revision=commit,
                cache_dir=str(cache_dir),
                endpoint=endpoint,
                etag_timeout=etag_s,
            )
    except DifflaneError:
        raise
    except (OSError, ValueError, httpx.HTTPError) as exc:
        raise ModelUnavailable(_failure(spec, exc), model=spec.name) from exc
    return Path(folder)


def _resolve(hub: ModuleType, spec: ModelSpec, endpoint: str | None, timeout_s: float) -> str:
    """The commit hash of the pinned revision, asked once, without retries.

    snapshot_download retries a failing metadata call for ~25 s with backoff; this single
    bounded call makes an unreachable hub (or a wrong repo or revision) fail at once, and
    only a reachable hub gets the library's retries for the files themselves.
    """
    api = hub.HfApi(endpoint=endpoint)
    info = api.model_info(spec.source, revision=spec.revision, timeout=timeout_s)
    sha = info.sha or spec.revision
    return str(sha)


@contextlib.contextmanager
def _bounded_http(hub: ModuleType, httpx: ModuleType, etag_s: float, download_s: float) -> Iterator[None]:
    constants: Any = importlib.import_module("huggingface_hub.constants")
    session = hub.get_session()
    saved = (constants.HF_HUB_ETAG_TIMEOUT, constants.HF_HUB_DOWNLOAD_TIMEOUT, session.timeout)
    # file_download reads these module constants on every request, so setting them here
    # applies the current environment even though the module was imported earlier.
    constants.HF_HUB_ETAG_TIMEOUT = etag_s
    constants.HF_HUB_DOWNLOAD_TIMEOUT = download_s
    # The shared client has no default timeout: listing a repo's files could wait forever.
    session.timeout = httpx.Timeout(download_s, connect=etag_s)
    try:
        yield
    finally:
        constants.HF_HUB_ETAG_TIMEOUT, constants.HF_HUB_DOWNLOAD_TIMEOUT, session.timeout = saved


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"{name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise InvalidInput(f"{name} must be positive, got {raw!r}")
    return value


def _failure(spec: ModelSpec, exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    cause = f"{type(exc).__name__}: {lines[0].rstrip('.')}" if lines else type(exc).__name__
    return f"cannot pull model {spec.name!r} ({spec.source} at revision {spec.revision}): {cause}"


def _require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra("worker", module) from None
