"""The webhook outbox as blobs in the job store's container (``DIFFLANE_STORE=azure``).

```
webhooks/watches/<job id>        empty; metadata: lastversion, createdat, traceparent, tracestate
webhooks/deliveries/<message id> {"url", "body", "lane", "trace"}; metadata: jobid, version, event, state,
                                 attempts, nextat, claimeduntil, updatedat, host, owner, lasterror
```

API pods in the cloud have no disk that outlives them, so the state lives where the job records
live and any replica picks up what another left. The SQLite outbox's guarantees carry over:
every change of a watch or a delivery is an ETag compare-and-set (``If-Match``), a delivery is
created once (``If-None-Match: *``, its name is the message id), and a claim is a lease written
into the delivery's metadata. Each round lists the watches and the deliveries with their
metadata (one list call per 5,000 blobs): the cost grows with what is pending, not with history.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from urllib.parse import quote, unquote

from difflane.azure_io import WRITE_ID, Blob, BlobIO, Exists, Listed, Modified
from difflane.webhooks import fairness
from difflane.webhooks.outbox import HookWatch, NewDelivery, Pending, context_of

log = logging.getLogger(__name__)

WATCHES = "webhooks/watches/"
DELIVERIES = "webhooks/deliveries/"
_MAX_ERROR = 500


class BlobOutbox:
    def __init__(self, io: BlobIO) -> None:
        self.io = io

    # --- submit side ---------------------------------------------------------------------------

    def watch(self, job_id: str, now: float, trace_context: Mapping[str, str] | None = None) -> None:
        meta = {"lastversion": "0", "createdat": repr(now), **_context_meta(trace_context)}
        with contextlib.suppress(Exists):  # already watched: idempotent
            self.io.put(WATCHES + job_id, b"", metadata=meta, create_only=True)

    def unwatch(self, job_id: str) -> None:
        self.io.delete(WATCHES + job_id)

    # --- notifier side -------------------------------------------------------------------------

    def watches(self) -> list[HookWatch]:
        return [
            HookWatch(
                item.name[len(WATCHES) :],
                int(item.metadata["lastversion"]),
                float(item.metadata["createdat"]),
                _stored_context(item.metadata),
            )
            for item in self.io.list(WATCHES, metadata=True)
        ]

    def advance(
        self, job_id: str, expected: int, version: int, deliveries: Sequence[NewDelivery], finished: bool, now: float
    ) -> bool:
        """Deliveries first, then the cursor: a crash between them replays, and the create-only
        delivery names make the replay a no-op."""
        current = self.io.properties(WATCHES + job_id)
        if current is None or int(current.metadata.get("lastversion", "-1")) != expected:
            return False
        progress = [d.version for d in deliveries if d.event == "progress"]
        if progress:
            self._drop_unsent_progress(job_id)
        for d in deliveries:
            if d.event != "progress" or d.version == max(progress):  # only the newest step of a batch
                self._create(d, now)
        if finished:
            self.io.delete(WATCHES + job_id)
            return True
        meta = {"lastversion": str(version), "createdat": current.metadata["createdat"]}
        meta.update(_context_meta(_stored_context(current.metadata)))
        try:
            self.io.put(WATCHES + job_id, b"", metadata=meta, if_match=current.etag)
        except Modified:
            return False  # another notifier advanced it first
        return True

    def claim_due(
        self, now: float, limit: int, lease_seconds: float, caps: fairness.Caps = fairness.DEFAULT_CAPS
    ) -> list[Pending]:
        if limit <= 0:
            return []
        listed = [item for item in self.io.list(DELIVERIES, metadata=True) if item.metadata.get("state") == "pending"]
        first_of_job: dict[str, Listed] = {}
        for item in listed:
            job, seen = item.metadata["jobid"], first_of_job.get(item.metadata["jobid"])
            if seen is None or int(item.metadata["version"]) < int(seen.metadata["version"]):
                first_of_job[job] = item
        busy = [item for item in listed if _claimed(item.metadata, now)]
        candidates = [
            fairness.Candidate(
                item.name,
                item.metadata.get("host", ""),
                unquote(item.metadata.get("owner", "")),
                float(item.metadata["nextat"]),
            )
            for item in first_of_job.values()
            if float(item.metadata["nextat"]) <= now and not _claimed(item.metadata, now)
        ]
        chosen = fairness.pick(
            candidates,
            limit=limit,
            caps=caps,
            busy_hosts=fairness.count(item.metadata.get("host", "") for item in busy),
            busy_owners=fairness.count(unquote(item.metadata.get("owner", "")) for item in busy),
        )
        claimed = []
        for name in chosen:
            pending = self._claim(name, now, lease_seconds)
            if pending is not None:
                claimed.append(pending)
        return claimed

    def delivered(self, delivery_id: str) -> None:
        self.io.delete(DELIVERIES + delivery_id)

    def retry_at(self, delivery_id: str, attempts: int, next_at: float, error: str, now: float) -> None:
        self._settle(delivery_id, "pending", attempts, error, now, next_at=next_at)

    def give_up(self, delivery_id: str, attempts: int, error: str, now: float) -> None:
        self._settle(delivery_id, "failed", attempts, error, now)

    def prune(self, before: float) -> None:
        for item in self.io.list(DELIVERIES, metadata=True):
            if item.metadata.get("state") == "failed" and float(item.metadata["updatedat"]) < before:
                self.io.delete(item.name)

    def deliveries(self, job_id: str | None = None) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for item in self.io.list(DELIVERIES, metadata=True):
            m = item.metadata
            if job_id is not None and m["jobid"] != job_id:
                continue
            rows.append(
                {
                    "id": item.name[len(DELIVERIES) :],
                    "job_id": m["jobid"],
                    "version": int(m["version"]),
                    "event": m["event"],
                    "state": m["state"],
                    "attempts": int(m["attempts"]),
                    "next_at": float(m["nextat"]),
                    "last_error": unquote(m.get("lasterror", "")) or None,
                }
            )
        return sorted(rows, key=lambda r: (str(r["job_id"]), int(str(r["version"]))))

    def close(self) -> None:
        pass  # the job store owns the container client

    # --- helpers -------------------------------------------------------------------------------

    def _create(self, d: NewDelivery, now: float) -> None:
        body, trace = base64.b64encode(d.body).decode(), context_of(d.trace_context)
        content = json.dumps({"url": d.url, "body": body, "lane": d.lane, "trace": trace}).encode()
        meta = {
            "jobid": d.job_id,
            "version": str(d.version),
            "event": d.event,
            "state": "pending",
            "attempts": "0",
            "nextat": repr(now),
            "claimeduntil": "",
            "updatedat": repr(now),
            "host": fairness.host_of(d.url),
            "owner": quote(d.owner, safe=""),  # metadata is ASCII; subjects may not be
            "lasterror": "",
        }
        with contextlib.suppress(Exists):  # a replayed version: the message exists already
            self.io.put(DELIVERIES + d.id, content, metadata=_present(meta), create_only=True)

    def _drop_unsent_progress(self, job_id: str) -> None:
        """A newer step replaces one never attempted and not claimed: a slow receiver gets fewer."""
        for item in self.io.list(DELIVERIES, metadata=True):
            m = item.metadata
            mine = m.get("jobid") == job_id and m.get("event") == "progress" and m.get("state") == "pending"
            if mine and m.get("attempts") == "0" and not m.get("claimeduntil"):
                self.io.delete(item.name)

    def _claim(self, name: str, now: float, lease_seconds: float) -> Pending | None:
        blob = self.io.get(name)
        if blob is None or blob.metadata.get("state") != "pending" or _claimed(blob.metadata, now):
            return None  # delivered, coalesced or claimed by another notifier meanwhile
        try:
            self.io.put(
                name, blob.data, metadata=_with(blob, claimeduntil=repr(now + lease_seconds)), if_match=blob.etag
            )
        except Modified:
            return None
        content = json.loads(blob.data)
        return Pending(
            name[len(DELIVERIES) :],
            blob.metadata["jobid"],
            blob.metadata["event"],
            content["url"],
            base64.b64decode(content["body"]),
            int(blob.metadata["attempts"]),
            unquote(blob.metadata.get("owner", "")),
            str(content.get("lane") or ""),  # absent in deliveries written before lanes and traces were kept
            context_of(content.get("trace")),
        )

    def _settle(
        self, delivery_id: str, state: str, attempts: int, error: str, now: float, *, next_at: float | None = None
    ) -> None:
        name = DELIVERIES + delivery_id
        blob = self.io.get(name)
        if blob is None:
            return
        changes = {
            "state": state,
            "attempts": str(attempts),
            "claimeduntil": "",
            "updatedat": repr(now),
            "lasterror": quote(error[:_MAX_ERROR], safe=" "),
        }
        if next_at is not None:
            changes["nextat"] = repr(next_at)
        try:
            self.io.put(name, blob.data, metadata=_with(blob, **changes), if_match=blob.etag)
        except Modified:
            log.warning("webhook delivery %s changed while it was settled; a later round retries it", delivery_id)


def _with(blob: Blob, **changes: str) -> dict[str, str]:
    meta = {k: v for k, v in blob.metadata.items() if k != WRITE_ID}
    meta.update(changes)
    return _present(meta)


def _present(meta: dict[str, str]) -> dict[str, str]:
    """Blob Storage keeps no empty metadata values: an absent key reads as empty."""
    return {k: v for k, v in meta.items() if v}


def _context_meta(carrier: Mapping[str, str] | None) -> dict[str, str]:
    """The W3C keys as metadata (ASCII, quoted: a tracestate may hold spaces Blob Storage trims)."""
    return {k: quote(v, safe="") for k, v in context_of(carrier).items()}


def _stored_context(meta: Mapping[str, str]) -> dict[str, str]:
    return context_of({k: unquote(v) for k, v in meta.items()})


def _claimed(meta: dict[str, str], now: float) -> bool:
    until = meta.get("claimeduntil")
    return bool(until) and float(until or 0) >= now
