"""Job records in Azure Blob Storage: ETag compare-and-set, create-only keys, newest-first listing.

The layout is in ``azure_layout``. The rules that keep it correct without transactions:

- **One blob is the truth.** A job's record blob is written with ``If-None-Match: *`` when the
  job is created and with ``If-Match: <etag>`` for every change, so two writers never both win;
  ``store.base.mutate`` re-reads and re-judges on a lost race. The record's state, version and
  lane ride in the same write as blob metadata, so listing filters by state without reading
  records and is never out of step with them.
- **Everything else is written in an order that a crash cannot make wrong.** Creating: the
  idempotency key (create-only) → the id's owner pointer (create-only) → the outbox entry
  (the ``make_deliverable`` hook) → the record. A crash leaves at most a key or pointer without a
  record; a retry with the same Idempotency-Key finishes that job under its first id.
- **History follows the record.** After a record write succeeds its version is copied to
  ``versions/<id>/<n>``, but for a final state: nothing is written over a finished record, so
  its newest version is always read from the record itself. ``history()`` reads the record (the
  newest version) and the copies between. A writer that dies between the two writes leaves a gap; the event stream then
  misses that one version's progress step, never a state (each state event compares with the
  version sent before it).
- **Running markers are advisory.** ``lanes/<lane>/running/<id>`` is written before the claim and
  removed after the job leaves ``running``; ``running()`` checks each marker against its record
  and clears stale ones, so a crash costs one extra read, never a wrong count.
- **The index of unfinished jobs follows the same rule.** ``unfinished/<owner>/<id>`` is written
  before the record at creation and again before every write that changes the job's state or
  lane (its metadata names that state and version), and removed after the final write. So every
  queued or running record has a marker, and a marker that says what this process last saw of
  the record lets it skip the read. A marker whose record is final (the removal was lost) is
  removed by the next reader that reads the record; believed markers are checked again every
  ``_RECHECK_S``, so a crash leaves a finished job in the index for minutes, never for good.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator

from difflane.azure_io import BlobIO, Exists, Listed, Modified
from difflane.errors import Conflict, NotFound, Unavailable, VersionConflict
from difflane.jobs import Job, JobState, Principal, is_job_id
from difflane.store import azure_layout as layout
from difflane.store import records
from difflane.store.base import IdempotencyKey, MakeDeliverable

log = logging.getLogger(__name__)

_CACHE_SIZE = 50_000
_RECORDS_CACHED = 5_000  # whole records (a few KB each) kept by ETag, for listings
_STALE_MARKER_S = 120.0  # a running marker whose record is not running, older than this, is removed
_RECHECK_S = 300.0  # an unfinished marker believed from what this process saw is checked this often
_RUNNING_FRESH_S = 5.0  # a running record read this recently is not read again to list it (progress moves)
_ORPHAN_MARKER_S = 3600.0  # an unfinished marker without a record (a create that died) is removed after this
_INDEX_PAGE = 5000  # the service's largest listing page: markers are small
_TERMINAL = frozenset(s.value for s in JobState if s.terminal)
_UNFINISHED = frozenset({JobState.QUEUED.value, JobState.RUNNING.value})


@dataclasses.dataclass(frozen=True)
class _Seen:
    """The last version of a record this process read or wrote, with the ETag to write over it."""

    version: int
    etag: str
    state: str
    lane: str


@dataclasses.dataclass(frozen=True)
class _Known:
    """A record's state and version as this process last read or wrote it, and when."""

    state: str
    version: int
    at: float


@dataclasses.dataclass(frozen=True)
class _Marker:
    """An entry of the index of unfinished jobs, as listed: the state and version the record
    reached (or was about to reach) at the job's last change of state."""

    name: str
    job_id: str
    state: str
    version: int
    record: str
    at: float

    @classmethod
    def of(cls, item: Listed) -> _Marker:
        meta = item.metadata
        version = meta.get("version", "0")
        return cls(
            item.name,
            item.name.rsplit("/", 1)[-1],
            meta.get("state", ""),
            int(version) if version.isdigit() else 0,
            meta.get("record", ""),
            _written_at(item),
        )


class _Lru(OrderedDict[str, object]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size
        self._lock = threading.Lock()

    def get_item(self, key: str) -> object | None:
        with self._lock:
            value = self.get(key)
            if value is not None:
                self.move_to_end(key)
            return value

    def put(self, key: str, value: object) -> None:
        with self._lock:
            self[key] = value
            self.move_to_end(key)
            while len(self) > self._size:
                self.popitem(last=False)


class AzureBlobJobStore:
    # Workers write progress at most this often (executor.WorkerConfig.progress_interval_s): each
    # write is a billed read-free PutBlob plus its version copy, and a 30-step render on a GPU
    # would otherwise make 60 of them in a second or two. The final state is always written.
    progress_interval_s = 1.0

    def __init__(
        self,
        io: BlobIO,
        *,
        make_deliverable: MakeDeliverable | None = None,
        on_update: Callable[[Job], None] | None = None,
        readers: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.io = io
        self.make_deliverable = make_deliverable  # before the record (the outbox entry): see JobStore
        self.on_update = on_update  # after a change is written (wakes event streams)
        self._owners = _Lru(_CACHE_SIZE)  # job id → Principal; ids never change owner
        self._seen = _Lru(_CACHE_SIZE)  # job id → _Seen
        self._records = _Lru(_RECORDS_CACHED)  # record name → (ETag, Job) as last read or written
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=readers, thread_name_prefix="blob-read")
        self._believed: dict[str, float] = {}  # running marker → until when it needs no new check
        self._believed_lock = threading.Lock()
        self._known = _Lru(_CACHE_SIZE)  # job id → _Known, for the index of unfinished jobs
        self._clock = clock

    # --- creating --------------------------------------------------------------------------

    def create(self, job: Job, idempotency: IdempotencyKey | None = None) -> tuple[Job, bool]:
        candidate = job
        if idempotency is not None:
            first_id = self._claim_key(job, idempotency)
            if first_id is not None:
                existing = self.get(first_id)
                if existing is not None:
                    return existing, False
                # The first request with this key died before writing its record (or is still
                # writing it): finish the job under the key's id; the create-only write decides.
                candidate = dataclasses.replace(job, id=first_id)
        stored = dataclasses.replace(candidate, version=1)
        self._write_pointer(stored)
        self._write_marker(stored)  # before the record: no queued job is missing from the index
        if self.make_deliverable is not None:
            self.make_deliverable(stored)
        name = layout.record_name(stored.owner, stored.id)
        try:
            etag = self.io.put(name, records.dumps(stored).encode(), metadata=_metadata(stored), create_only=True)
        except Exists:
            if idempotency is not None:  # a concurrent request with the same key wrote it first
                existing = self.get(stored.id)
                if existing is not None:
                    return existing, False
            raise Conflict(f"job {stored.id} already exists", code="job_exists") from None
        self._remember(stored, etag, name)
        self._write_version(stored)
        return stored, True

    def find_replay(self, owner: Principal, idempotency: IdempotencyKey) -> Job | None:
        found = self.io.get(layout.idempotency_name(owner, idempotency.key))
        if found is None:
            return None
        data = json.loads(found.data)
        if data["fingerprint"] != idempotency.fingerprint:
            raise Conflict(
                "this Idempotency-Key was already used with a different request", code="idempotency_key_reused"
            )
        # None while a crashed create is half done: the create path then finishes it.
        return self.get(str(data["job_id"]))

    def _claim_key(self, job: Job, idempotency: IdempotencyKey) -> str | None:
        """Write the key for ``job``; None when it is ours, else the job id it already names."""
        name = layout.idempotency_name(job.owner, idempotency.key)
        body = json.dumps({"fingerprint": idempotency.fingerprint, "job_id": job.id}).encode()
        for _ in range(3):
            try:
                self.io.put(name, body, create_only=True)
                return None
            except Exists:
                found = self.io.get(name)
            if found is None:
                continue  # removed between our two calls: try to write it again
            data = json.loads(found.data)
            if data["fingerprint"] != idempotency.fingerprint:
                raise Conflict(
                    "this Idempotency-Key was already used with a different request", code="idempotency_key_reused"
                )
            return str(data["job_id"])
        raise Unavailable("idempotency key keeps changing; try again")

    def _write_pointer(self, job: Job) -> None:
        name = layout.pointer_name(job.id)
        try:
            self.io.put(name, _owner_json(job.owner), create_only=True)
        except Exists:
            found = self.io.get(name)
            if found is None or _owner_from(found.data) != job.owner:
                raise Conflict(f"job {job.id} already exists", code="job_exists") from None
        self._owners.put(job.id, job.owner)

    # --- reading ---------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        if not is_job_id(job_id):
            return None  # ids arrive from queue messages too; only real ids become blob names
        owner = self._owner_of(job_id)
        if owner is None:
            return None
        found = self.io.get(layout.record_name(owner, job_id))
        if found is None:
            return None
        job = records.loads(found.data)
        self._remember(job, found.etag, layout.record_name(owner, job_id))
        return job

    def _owner_of(self, job_id: str) -> Principal | None:
        owner = self._owners.get_item(job_id)
        if isinstance(owner, Principal):
            return owner
        found = self.io.get(layout.pointer_name(job_id))
        if found is None:
            return None
        owner = _owner_from(found.data)
        self._owners.put(job_id, owner)
        return owner

    def list_by_owner(
        self, owner: Principal, *, state: JobState | None = None, before: str | None = None, limit: int = 20
    ) -> list[Job]:
        if limit <= 0 or (before is not None and not is_job_id(before)):
            return []
        out: list[Job] = []
        batch: list[Listed] = []
        for item in self._newest_first(owner, before):
            if state is not None and item.metadata.get("state") != state.value:
                continue
            batch.append(item)
            if len(batch) >= limit - len(out):
                out.extend(self._load(batch, state))
                batch = []
                if len(out) >= limit:
                    break
        if batch:
            out.extend(self._load(batch, state))
        return out[:limit]

    def _newest_first(self, owner: Principal, before: str | None) -> Iterator[Listed]:
        prefix = layout.jobs_prefix(owner)
        if before is None:
            yield from self.io.list(prefix, metadata=True)
            return
        cursor_day = layout.day_key(before)
        cursor = layout.record_name(owner, before)
        for folder in self.io.prefixes(prefix):
            day = folder[len(prefix) :].rstrip("/")
            if day < cursor_day:
                continue  # newer days than the cursor's
            for item in self.io.list(folder, metadata=True):
                if item.name > cursor:
                    yield item

    def _load(self, items: list[Listed], state: JobState | None) -> list[Job]:
        """Read records in parallel, but those this process holds at the listed ETag (admission
        lists a caller's queued jobs on every submit: mostly the ones it wrote itself); a record
        whose state changed since it was listed is left out."""
        held = {item.name: self._held(item) for item in items}
        missing = [name for name, job in held.items() if job is None]
        read = dict(zip(missing, self._pool.map(self.io.get, missing), strict=True))
        jobs: list[Job] = []
        for item in items:
            job = held[item.name]
            if job is None and (blob := read[item.name]) is not None:
                job = records.loads(blob.data)
                self._records.put(item.name, (blob.etag, job))
            if job is not None and (state is None or job.state is state):
                jobs.append(job)
        return jobs

    def _held(self, item: Listed) -> Job | None:
        cached = self._records.get_item(item.name)
        if not isinstance(cached, tuple) or not item.etag:
            return None
        etag, job = cached
        # Listings give ETags unquoted, responses' headers quoted (Azurite and the service alike).
        return job if isinstance(job, Job) and str(etag).strip('"') == item.etag.strip('"') else None

    def history(self, job_id: str, after_version: int = 0) -> list[Job]:
        current = self.get(job_id)
        if current is None or current.version <= after_version:
            return []
        owner = current.owner
        names = [layout.version_name(owner, job_id, v) for v in range(after_version + 1, current.version)]
        older = [records.loads(b.data) for b in self._pool.map(self.io.get, names) if b is not None]
        return [*older, current]

    def versions(self, job_ids: list[str]) -> dict[str, int]:
        """The stored version of each job from its record's metadata: one HEAD each, in parallel,
        no record downloaded. The event-stream feed asks this instead of reading every watched
        job's history each round (Blob Storage has no cheap "what changed" query). Unknown ids
        are left out."""

        def one(job_id: str) -> int | None:
            owner = self._owner_of(job_id) if is_job_id(job_id) else None
            props = self.io.properties(layout.record_name(owner, job_id)) if owner is not None else None
            return int(props.metadata.get("version", "0")) if props is not None else None

        found = zip(job_ids, self._pool.map(one, job_ids), strict=True)
        return {job_id: version for job_id, version in found if version is not None}

    # --- changing --------------------------------------------------------------------------

    def update(self, job: Job, expected_version: int) -> Job:
        name = layout.record_name(job.owner, job.id)
        before = self._current(job, expected_version)
        stored = dataclasses.replace(job, version=expected_version + 1)
        moving = not stored.state.terminal and (stored.state.value != before.state or stored.lane != before.lane)
        if moving:  # before the record, as at creation: the marker names the state being written
            self._write_marker(stored)
        entering = stored.state is JobState.RUNNING and before.state != JobState.RUNNING.value
        if entering:  # before the claim is written: a crash leaves a stale marker, never a missing one
            marker = layout.running_name(stored.lane, stored.id)
            self.io.put(marker, b"", content_type="text/plain", metadata={"at": f"{self._clock():.3f}"})
        try:
            etag = self.io.put(name, records.dumps(stored).encode(), metadata=_metadata(stored), if_match=before.etag)
        except Modified:
            raise VersionConflict(f"job {job.id} is not at version {expected_version}") from None
        except Exists:  # pragma: no cover - If-Match writes never answer 409
            raise VersionConflict(f"job {job.id} changed while writing") from None
        self._remember(stored, etag, name)
        leaving = before.state == JobState.RUNNING.value and (
            stored.state is not JobState.RUNNING or stored.lane != before.lane
        )
        if stored.state.terminal:  # first: a reader never sees a finished job as queued between the two
            self._quietly(lambda: self.io.delete(layout.unfinished_name(stored.owner, stored.id)))
        if leaving:
            self._quietly(lambda: self.io.delete(layout.running_name(before.lane, stored.id)))
        if not stored.state.terminal:  # a final version is never overwritten: read from the record
            self._write_version(stored)
        if self.on_update is not None:
            self.on_update(stored)
        return stored

    def _current(self, job: Job, expected_version: int) -> _Seen:
        """The ETag of ``expected_version``: from what this process last saw, else from the service."""
        seen = self._seen.get_item(job.id)
        if isinstance(seen, _Seen) and seen.version == expected_version:
            return seen
        props = self.io.properties(layout.record_name(job.owner, job.id))
        if props is None:
            raise NotFound(f"job {job.id} not found")
        found = _Seen(
            int(props.metadata.get("version", "0")),
            props.etag,
            props.metadata.get("state", ""),
            props.metadata.get("lane", ""),
        )
        if found.version != expected_version:
            raise VersionConflict(f"job {job.id} is at version {found.version}, not {expected_version}")
        return found

    def _remember(self, job: Job, etag: str, name: str) -> None:
        self._owners.put(job.id, job.owner)
        seen = self._seen.get_item(job.id)
        if not isinstance(seen, _Seen) or seen.version <= job.version:
            self._seen.put(job.id, _Seen(job.version, etag, job.state.value, job.lane))
            self._records.put(name, (etag, job))
            self._known.put(job.id, _Known(job.state.value, job.version, self._clock()))

    def _write_version(self, job: Job) -> None:
        name = layout.version_name(job.owner, job.id, job.version)
        self._quietly(lambda: self.io.put(name, records.dumps(job).encode()))

    @staticmethod
    def _quietly(write: Callable[[], object]) -> None:
        """A follow-up write whose loss only costs an event or a marker: the record is already written."""
        try:
            write()
        except Unavailable:
            log.warning("follow-up blob write failed after retries; the record is written", exc_info=True)

    # --- the backlog's other half --------------------------------------------------------------

    def running(self, lane: str) -> int:
        """Jobs running on ``lane`` per their records (markers checked; stale ones removed).

        A marker checked against its record is believed until that record's lease runs out: the
        job's ending removes the marker, and admission asks on every submit, which would
        otherwise read every running job's record each time (one GetBlob per running job)."""
        count = 0
        now = self._clock()
        listed: set[str] = set()
        for item in self.io.list(layout.running_prefix(lane), metadata=True):
            listed.add(item.name)
            with self._believed_lock:
                until = self._believed.get(item.name)
            if until is not None and now < until:
                count += 1
                continue
            job_id = item.name.rsplit("/", 1)[-1]
            job = self.get(job_id)
            if job is not None and job.state is JobState.RUNNING and job.lane == lane:
                count += 1
                with self._believed_lock:
                    self._believed[item.name] = job.lease.expires_at if job.lease is not None else now
            elif now - _written_at(item) > _STALE_MARKER_S:
                # Old enough that no claim can still be in flight behind it.
                self._quietly(functools.partial(self.io.delete, item.name))
        prefix = layout.running_prefix(lane)
        with self._believed_lock:  # a marker that is gone: its job left running
            for name in [n for n in self._believed if n.startswith(prefix) and n not in listed]:
                del self._believed[name]
        return count

    # --- the index of unfinished jobs ------------------------------------------------------------

    def _write_marker(self, job: Job) -> None:
        marker = layout.unfinished_name(job.owner, job.id)
        self._put_marker(marker, layout.record_name(job.owner, job.id), _metadata(job))

    def _put_marker(self, marker: str, record: str, state: dict[str, str], *, create_only: bool = False) -> None:
        """An index entry: the record's state, version and lane (``state``), its name, and when."""
        meta = {**state, "record": record, "at": f"{self._clock():.3f}"}
        self.io.put(marker, b"", content_type="text/plain", metadata=meta, create_only=create_only)

    def list_unfinished(self, limit: int) -> list[Job]:
        """Queued and running jobs of every owner, oldest first: one ListBlobs per 5,000
        unfinished jobs, and a read of each record this process does not hold as the marker says
        (running records are read again after ``_RUNNING_FRESH_S``: their progress moves)."""
        if limit <= 0:
            return []
        listed = self.io.list(layout.UNFINISHED_PREFIX, metadata=True, page_size=_INDEX_PAGE)
        markers = sorted((m for m in map(_Marker.of, listed) if is_job_id(m.job_id)), key=lambda m: m.job_id)
        out: list[Job] = []
        start = 0
        while start < len(markers) and len(out) < limit:
            batch = markers[start : start + limit - len(out)]
            start += len(batch)
            held = {m.name: self._held_unfinished(m) for m in batch}
            missing = [m for m in batch if held[m.name] is None]
            held.update(zip((m.name for m in missing), self._pool.map(self._read_unfinished, missing), strict=True))
            out.extend(job for m in batch if (job := held[m.name]) is not None)
        return out

    def count_unfinished(self, owner: Principal, limit: int) -> int:
        """The owner's queued and running jobs, counted up to ``limit`` from the index: one
        ListBlobs (per 5,000), and a HEAD of each record whose marker this process cannot vouch
        for (admission's cap on outstanding jobs asks this on every submit)."""
        listed = self.io.list(layout.unfinished_prefix(owner), metadata=True, page_size=_INDEX_PAGE)
        markers = [m for m in map(_Marker.of, listed) if is_job_id(m.job_id)]
        doubtful = [m for m in markers if self._believed_marker(m, _RECHECK_S) is None]
        believed = len(markers) - len(doubtful)
        if believed >= limit or not doubtful:
            return min(believed, limit)
        return min(believed + sum(self._pool.map(self._verify, doubtful)), limit)

    def _believed_marker(self, marker: _Marker, fresh_s: float) -> _Known | None:
        """What this process knows of the record, when it agrees with the marker and is recent."""
        known = self._known.get_item(marker.job_id)
        if not isinstance(known, _Known) or known.state != marker.state or known.version < marker.version:
            return None
        return known if self._clock() - known.at < fresh_s else None

    def _held_unfinished(self, marker: _Marker) -> Job | None:
        fresh = _RUNNING_FRESH_S if marker.state == JobState.RUNNING.value else _RECHECK_S
        known = self._believed_marker(marker, fresh)
        cached = self._records.get_item(marker.record) if known is not None else None
        if known is None or not isinstance(cached, tuple) or not isinstance(cached[1], Job):
            return None
        return cached[1] if cached[1].version == known.version else None

    def _read_unfinished(self, marker: _Marker) -> Job | None:
        found = self.io.get(marker.record) if marker.record else None
        if found is None:
            self._drop_orphan(marker)
            return None
        job = records.loads(found.data)
        if job.id != marker.job_id:
            return None
        self._remember(job, found.etag, marker.record)
        if job.state.terminal:  # the final write's removal of the marker was lost
            self._quietly(functools.partial(self.io.delete, marker.name))
            return None
        return job

    def _verify(self, marker: _Marker) -> bool:
        """HEAD the record: True when it is unfinished; a marker of a final record is removed."""
        props = self.io.properties(marker.record) if marker.record else None
        if props is None:
            self._drop_orphan(marker)
            return False
        state = props.metadata.get("state", "")
        if state in _TERMINAL:
            self._quietly(functools.partial(self.io.delete, marker.name))
            return False
        version = props.metadata.get("version", "0")
        self._known.put(marker.job_id, _Known(state, int(version) if version.isdigit() else 0, self._clock()))
        return True

    def reindex_unfinished(self) -> int:
        """Write the missing index entries of queued and running records (jobs accepted before
        the index existed): one listing of the index, then each owner's records with their
        metadata (``t/<tenant>/s/<subject>/jobs/``, found folder by folder, so version copies
        and idempotency keys are not walked), and a marker per unfinished record that lacks one.
        Returns how many were written.

        Safe beside live writers: a marker is only created, never written over (a writer's own,
        newer one wins), and the record is read again after it: a job that ended meanwhile
        (its writer's removal of the marker may have come first) has its marker removed again."""
        indexed = {item.name for item in self.io.list(layout.UNFINISHED_PREFIX, page_size=_INDEX_PAGE)}
        written = 0
        for item in self._all_records():
            marker = layout.unfinished_name_of_record(item.name)
            state = item.metadata.get("state", "")
            if marker is None or marker in indexed or state not in _UNFINISHED:
                continue
            listed = {k: v for k, v in item.metadata.items() if k in ("state", "version", "lane")}
            try:
                self._put_marker(marker, item.name, listed, create_only=True)
            except Exists:
                continue  # a live writer's marker: newer than what the listing said
            now = self.io.properties(item.name)
            if now is None or now.metadata.get("state", "") not in _UNFINISHED:
                self._quietly(functools.partial(self.io.delete, marker))
                continue
            written += 1
        return written

    def _all_records(self) -> Iterator[Listed]:
        for tenant in self.io.prefixes("t/"):
            for subject in self.io.prefixes(f"{tenant}s/"):
                yield from self.io.list(f"{subject}jobs/", metadata=True, page_size=_INDEX_PAGE)

    def _drop_orphan(self, marker: _Marker) -> None:
        """A marker with no record is a create still on its way, or one that died: removed only when
        old enough that no create can still be writing behind it (a retry writes it again)."""
        if self._clock() - marker.at > _ORPHAN_MARKER_S:
            self._quietly(functools.partial(self.io.delete, marker.name))

    def ping(self) -> None:
        self.io.ping()

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self.io.container.close()


def _written_at(item: Listed) -> float:
    """The writer's clock when a marker or outbox entry was written (0 when unreadable: old)."""
    try:
        return float(item.metadata.get("at", "0"))
    except ValueError:
        return 0.0


def _owner_json(owner: Principal) -> bytes:
    # Both parts, not Principal.key: "a/b" + "c" and "a" + "b/c" must stay different owners.
    return json.dumps({"tenant": owner.tenant, "subject": owner.subject}).encode()


def _owner_from(data: bytes) -> Principal:
    found = json.loads(data)
    return Principal(str(found["tenant"]), str(found["subject"]))


def _metadata(job: Job) -> dict[str, str]:
    return {"state": job.state.value, "version": str(job.version), "lane": job.lane}


class BlobDispatchOutbox:
    """Accepted jobs not yet known to be dispatched, as ``outbox/<id>`` blobs (see dispatch.sweeper)."""

    def __init__(self, io: BlobIO, clock: Callable[[], float] = time.time) -> None:
        self.io = io
        self._clock = clock

    def add(self, job: Job) -> None:
        self.io.put(layout.outbox_name(job.id), b"", content_type="text/plain", metadata={"at": f"{self._clock():.3f}"})

    def remove(self, job_id: str) -> None:
        self.io.delete(layout.outbox_name(job_id))

    def pending(self) -> Iterable[tuple[str, float]]:
        """(job id, when the entry was written) for every entry."""
        for item in self.io.list(layout.OUTBOX_PREFIX, metadata=True):
            yield item.name[len(layout.OUTBOX_PREFIX) :], _written_at(item)
