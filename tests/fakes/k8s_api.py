"""A Kubernetes API server in the tests: the subset difflane uses, over real HTTP.

No cluster exists here, so the real ``kubernetes`` client talks to this threaded server instead.
It speaks jobs (``batch/v1``), pods (``v1``) and leases (``coordination.k8s.io/v1``) in one or
more namespaces: create (409 AlreadyExists), get, list with label selectors, replace with
resourceVersion checks (409 Conflict), delete with a propagation policy, and watch streams as
chunked JSON lines from a resourceVersion (410 Gone after ``compact()``). A watch that asks for
``allowWatchBookmarks=true`` gets BOOKMARK events, as the real server sends them: an object with
only ``kind``, ``apiVersion`` and ``metadata.resourceVersion`` (no name), at ``send_bookmarks()``
(the server's roughly once a minute) and just before the stream ends at its ``timeoutSeconds``.

Nothing runs pods here: tests play the kubelet, the Job controller and Kueue through the helper
methods at the bottom (``start_pod``, ``oom_kill``, ``suspend_job``, ...), each of which writes
objects the way those components would, so watchers see ordinary MODIFIED/DELETED events.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Obj = dict[str, Any]

_ROUTES = [
    (re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?$"), "jobs", "batch/v1", "Job"),
    (re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+))?$"), "pods", "v1", "Pod"),
    (
        re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases(?:/([^/]+))?$"),
        "leases",
        "coordination.k8s.io/v1",
        "Lease",
    ),
]
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def timestamp(epoch: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if epoch is None else epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(frozen=True)
class Event:
    rv: int
    resource: str
    namespace: str
    type: str
    obj: Obj


@dataclasses.dataclass
class Fault:
    method: str
    resource: str
    status: int
    times: int


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


class FakeKubernetes:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rv = 1000
        self._objects: dict[tuple[str, str, str], Obj] = {}
        self._events: list[Event] = []
        self._compacted_below = 0
        self._faults: list[Fault] = []
        self._closing = False
        self._generation = 0  # bumped by break_watches()
        self._bookmarks = 0  # bumped by send_bookmarks()
        self.bookmarks_sent = 0
        self._watch_gate = threading.Event()
        self._watch_gate.set()
        self._suffixes = itertools.count(1)
        self.requests: list[tuple[str, str]] = []  # (method, path with query)
        self.deletions: list[tuple[str, str, str]] = []  # (resource, name, propagation policy)
        self.expired_watches = 0  # watches answered 410 Gone
        self.counted_failures: dict[str, int] = {}  # Job name → pod failures counted towards backoffLimit
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> str:
        fake = self

        class Handler(_Handler):
            api = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-k8s", daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- the API ---------------------------------------------------------------------------------

    def handle(self, method: str, resource: str, namespace: str, name: str | None, query: dict[str, str], body: Any):
        self._fault(method, resource)
        if method == "GET" and name is None:
            return self.list(resource, namespace, query.get("labelSelector", ""))
        if method == "GET":
            return self._get(resource, namespace, name)
        if method == "POST" and name is None:
            return self.create(resource, namespace, body)
        if method == "PUT" and name is not None:
            return self._replace(resource, namespace, name, body)
        if method == "DELETE" and name is not None:
            policy = query.get("propagationPolicy") or (body or {}).get("propagationPolicy") or "Background"
            return self.delete(resource, namespace, name, policy)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")

    def list(self, resource: str, namespace: str, selector: str = "") -> Obj:
        with self._cond:
            items = [
                copy.deepcopy(o)
                for (r, ns, _), o in sorted(self._objects.items())
                if r == resource and ns == namespace and _matches(o, selector)
            ]
            return {"kind": "List", "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    def create(self, resource: str, namespace: str, body: Obj) -> Obj:
        name = body.get("metadata", {}).get("name")
        if not name:
            raise ApiError(422, "Invalid", "metadata.name is required")
        with self._cond:
            if (resource, namespace, name) in self._objects:
                raise ApiError(409, "AlreadyExists", f'{resource} "{name}" already exists')
            obj = copy.deepcopy(body)
            meta = obj.setdefault("metadata", {})
            meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=timestamp())
            if resource in ("jobs", "pods"):
                obj.setdefault("status", {})
            return self._write(resource, namespace, obj, "ADDED")

    def watch(
        self, resource: str, namespace: str, selector: str, since: str, timeout_s: float, bookmarks: bool = False
    ) -> Iterator[Obj]:
        """Watch events as the API server sends them; ends after ``timeout_s``."""
        self._watch_gate.wait(30)
        deadline = time.monotonic() + timeout_s
        with self._cond:
            generation, bookmarked = self._generation, self._bookmarks
            if not since or since == "0":
                start = self._rv
                initial = [
                    {"type": "ADDED", "object": copy.deepcopy(o)}
                    for (r, ns, _), o in sorted(self._objects.items())
                    if r == resource and ns == namespace and _matches(o, selector)
                ]
            else:
                start = int(since)
                initial = []
                if start < self._compacted_below:
                    self.expired_watches += 1
                    gone = ApiError(410, "Expired", f"too old resource version: {start} ({self._compacted_below})")
                    yield {"type": "ERROR", "object": gone.status()}
                    return
        yield from initial
        while True:
            bookmark: Obj | None = None
            ending = False
            with self._cond:
                events = [
                    e
                    for e in self._events
                    if e.rv > start
                    and e.resource == resource
                    and e.namespace == namespace
                    and _matches(e.obj, selector)
                ]
                if not events:
                    remaining = deadline - time.monotonic()
                    ending = remaining <= 0
                    if self._closing or self._generation != generation or (ending and not bookmarks):
                        return
                    if bookmarks and (ending or self._bookmarks != bookmarked):
                        # Every matching event up to now is sent: the watch may resume from here.
                        bookmarked, start = self._bookmarks, self._rv
                        bookmark = self._bookmark(resource)
                    else:
                        self._cond.wait(min(remaining, 0.5))
                        continue
            if bookmark is not None:
                yield bookmark
                if ending:
                    return
                continue
            for event in events:
                start = event.rv
                yield {"type": event.type, "object": copy.deepcopy(event.obj)}

    def _bookmark(self, resource: str) -> Obj:
        _, _, api_version, kind = next(r for r in _ROUTES if r[1] == resource)
        self.bookmarks_sent += 1
        return {
            "type": "BOOKMARK",
            "object": {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": str(self._rv)}},
        }

    def delete(self, resource: str, namespace: str, name: str, policy: str = "Background") -> Obj:
        with self._cond:
            obj = self._objects.get((resource, namespace, name))
            if obj is None:
                raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
            self.deletions.append((resource, name, policy))
            if resource == "jobs" and policy == "Foreground":
                # Foreground: the Job is marked first, its pods go, then the Job itself.
                marked = copy.deepcopy(obj)
                marked["metadata"]["deletionTimestamp"] = timestamp()
                marked["metadata"]["finalizers"] = ["foregroundDeletion"]
                self._write(resource, namespace, marked, "MODIFIED")
            if resource == "jobs" and policy != "Orphan":
                for pod in self._pods_of(namespace, name):
                    self._remove("pods", namespace, pod["metadata"]["name"])
            return self._remove(resource, namespace, name)

    # --- state helpers ---------------------------------------------------------------------------

    def get(self, resource: str, name: str, namespace: str = "difflane") -> Obj | None:
        with self._cond:
            obj = self._objects.get((resource, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def names(self, resource: str, namespace: str = "difflane") -> list[str]:
        with self._cond:
            return sorted(n for (r, ns, n) in self._objects if r == resource and ns == namespace)

    def fail_next(self, method: str, resource: str, status: int = 500, times: int = 1) -> None:
        """The next ``times`` requests of that method on that resource answer ``status``."""
        with self._cond:
            self._faults.append(Fault(method, resource, status, times))

    def compact(self) -> None:
        """Forget the history so far: a new watch from an older resourceVersion gets 410 Gone.
        (Open watches go on, as they do on a real server.)"""
        with self._cond:
            self._compacted_below = self._rv + 1

    def break_watches(self) -> None:
        """End every open watch stream now, as a restarting API server or a proxy would."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def send_bookmarks(self) -> None:
        """Open watches that allow bookmarks get one now, at the current resourceVersion."""
        with self._cond:
            self._bookmarks += 1
            self._cond.notify_all()

    def hold_watches(self, held: bool) -> None:
        """While held, a new watch request waits before it is answered."""
        if held:
            self._watch_gate.clear()
        else:
            self._watch_gate.set()

    # --- playing kubelet, Job controller and Kueue -----------------------------------------------

    def start_pod(self, job_name: str, namespace: str = "difflane", phase: str = "Running") -> str:
        """The Job controller creates a pod from the template; the kubelet starts its container."""
        with self._cond:
            job = self._objects[("jobs", namespace, job_name)]
            template = job["spec"]["template"]
            name = f"{job_name}-{next(self._suffixes):05d}"
            labels = {**template["metadata"].get("labels", {}), JOB_NAME_LABEL: job_name}
            container = template["spec"]["containers"][0]
            state: Obj = {"running": {"startedAt": timestamp()}} if phase == "Running" else {"waiting": {}}
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": copy.deepcopy(template["spec"]),
                "status": {
                    "phase": phase,
                    "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": timestamp()}],
                    "containerStatuses": [{"name": container["name"], "image": container["image"], "state": state}],
                },
            }
            self.create("pods", namespace, pod)
            self._patch_status("jobs", namespace, job_name, {"active": 1, "startTime": timestamp()})
            return name

    def oom_kill(self, pod_name: str, namespace: str = "difflane") -> None:
        self._end_container(pod_name, namespace, {"reason": "OOMKilled", "exitCode": 137})

    def exit_pod(self, pod_name: str, code: int, namespace: str = "difflane", disrupted: bool = False) -> None:
        self._end_container(pod_name, namespace, {"reason": "Error" if code else "Completed", "exitCode": code})
        if disrupted:
            with self._cond:
                pod = copy.deepcopy(self._objects[("pods", namespace, pod_name)])
                pod["status"]["conditions"].append(
                    {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}
                )
                self._write("pods", namespace, pod, "MODIFIED")

    def image_pull_backoff(self, pod_name: str, scheduled_at: float, namespace: str = "difflane") -> None:
        with self._cond:
            pod = copy.deepcopy(self._objects[("pods", namespace, pod_name)])
            pod["status"]["phase"] = "Pending"
            pod["status"]["conditions"] = [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": timestamp(scheduled_at)}
            ]
            image = pod["status"]["containerStatuses"][0]["image"]
            pod["status"]["containerStatuses"][0]["state"] = {
                "waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}
            }
            self._write("pods", namespace, pod, "MODIFIED")

    def finish_job(self, job_name: str, kind: str, reason: str = "", message: str = "", namespace: str = "difflane"):
        """The Job controller's verdict: ``kind`` is "Complete" or "Failed"."""
        condition = {"type": kind, "status": "True", "reason": reason, "message": message}
        if kind == "Failed":
            # Since Kubernetes 1.31 a failing Job first gets FailureTarget, then Failed.
            conditions = [{**condition, "type": "FailureTarget"}, condition]
        else:
            conditions = [{**condition, "type": "SuccessCriteriaMet"}, condition]
        self._patch_status("jobs", namespace, job_name, {"active": 0, "conditions": conditions})

    def settle_failed_pod(self, pod_name: str, namespace: str = "difflane") -> str | None:
        """The Job controller on a failed pod: the Job's ``podFailurePolicy`` rules in order (the
        first match wins: ``FailJob``, ``Ignore`` or ``Count``; no match counts), then
        ``backoffLimit``. Returns the replacement pod's name, or None when the Job failed.
        (Kubernetes does not count an ignored pod in ``status.failed``; this fake's ``exit_pod``
        already has, so the count towards the limit is kept apart, in ``counted_failures``.)"""
        with self._cond:
            pod = self._objects[("pods", namespace, pod_name)]
            job_name = pod["metadata"]["labels"][JOB_NAME_LABEL]
            job = self._objects[("jobs", namespace, job_name)]
            action = _pod_failure_action(job["spec"].get("podFailurePolicy") or {}, pod)
            if action == "FailJob":
                self.finish_job(job_name, "Failed", "PodFailurePolicy", f"pod {pod_name} matched a FailJob rule")
                return None
            if action != "Ignore":
                self.counted_failures[job_name] = self.counted_failures.get(job_name, 0) + 1
                if self.counted_failures[job_name] > int(job["spec"].get("backoffLimit", 6)):
                    self.finish_job(job_name, "Failed", "BackoffLimitExceeded", "Job has reached the backoff limit")
                    return None
        return self.start_pod(job_name, namespace)

    def suspend_job(self, job_name: str, namespace: str = "difflane") -> None:
        """Kueue evicts the workload: spec.suspend=true, the Job controller deletes its pods."""
        with self._cond:
            job = copy.deepcopy(self._objects[("jobs", namespace, job_name)])
            job["spec"]["suspend"] = True
            job["status"] = {
                "active": 0,
                "conditions": [{"type": "Suspended", "status": "True", "reason": "JobSuspended"}],
            }
            self._write("jobs", namespace, job, "MODIFIED")
            for pod in self._pods_of(namespace, job_name):
                self._remove("pods", namespace, pod["metadata"]["name"])

    # --- internals -------------------------------------------------------------------------------

    def _get(self, resource: str, namespace: str, name: str) -> Obj:
        obj = self.get(resource, name, namespace)
        if obj is None:
            raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
        return obj

    def _replace(self, resource: str, namespace: str, name: str, body: Obj) -> Obj:
        with self._cond:
            current = self._objects.get((resource, namespace, name))
            if current is None:
                raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
            sent = str(body.get("metadata", {}).get("resourceVersion") or "")
            if sent and sent != current["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {resource} "{name}": the object has been modified; '
                    "please apply your changes to the latest version and try again",
                )
            obj = copy.deepcopy(body)
            for key in ("uid", "creationTimestamp"):
                obj["metadata"][key] = current["metadata"][key]
            obj["metadata"].update(name=name, namespace=namespace)
            return self._write(resource, namespace, obj, "MODIFIED")

    def _patch_status(self, resource: str, namespace: str, name: str, changes: Obj) -> None:
        with self._cond:
            obj = copy.deepcopy(self._objects[(resource, namespace, name)])
            obj.setdefault("status", {}).update(changes)
            self._write(resource, namespace, obj, "MODIFIED")

    def _end_container(self, pod_name: str, namespace: str, terminated: Obj) -> None:
        with self._cond:
            pod = copy.deepcopy(self._objects[("pods", namespace, pod_name)])
            pod["status"]["phase"] = "Succeeded" if terminated["exitCode"] == 0 else "Failed"
            pod["status"]["containerStatuses"][0]["state"] = {"terminated": {**terminated, "finishedAt": timestamp()}}
            self._write("pods", namespace, pod, "MODIFIED")
            job_name = pod["metadata"]["labels"].get(JOB_NAME_LABEL)
            if job_name and ("jobs", namespace, job_name) in self._objects:
                key = "succeeded" if terminated["exitCode"] == 0 else "failed"
                status = self._objects[("jobs", namespace, job_name)].get("status", {})
                self._patch_status("jobs", namespace, job_name, {"active": 0, key: status.get(key, 0) + 1})

    def _pods_of(self, namespace: str, job_name: str) -> list[Obj]:
        return [
            o
            for (r, ns, _), o in list(self._objects.items())
            if r == "pods" and ns == namespace and o["metadata"].get("labels", {}).get(JOB_NAME_LABEL) == job_name
        ]

    def _write(self, resource: str, namespace: str, obj: Obj, kind: str) -> Obj:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._objects[(resource, namespace, obj["metadata"]["name"])] = obj
        self._events.append(Event(self._rv, resource, namespace, kind, copy.deepcopy(obj)))
        self._cond.notify_all()
        return copy.deepcopy(obj)

    def _remove(self, resource: str, namespace: str, name: str) -> Obj:
        obj = self._objects.pop((resource, namespace, name))
        self._rv += 1
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = str(self._rv)
        self._events.append(Event(self._rv, resource, namespace, "DELETED", gone))
        self._cond.notify_all()
        return {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": name}}

    def _fault(self, method: str, resource: str) -> None:
        with self._cond:
            for fault in self._faults:
                if fault.method == method and fault.resource == resource and fault.times > 0:
                    fault.times -= 1
                    raise ApiError(fault.status, "InternalError", f"injected fault ({fault.status})")


def _pod_failure_action(policy: Obj, pod: Obj) -> str:
    """The action of the first ``podFailurePolicy`` rule the failed pod matches ("Count" if none)."""
    statuses = pod["status"].get("containerStatuses") or []
    conditions = {(c.get("type"), c.get("status")) for c in pod["status"].get("conditions") or []}
    for rule in policy.get("rules") or []:
        codes = rule.get("onExitCodes")
        if codes is not None:
            for status in statuses:
                if codes.get("containerName") not in (None, status.get("name")):
                    continue
                code = ((status.get("state") or {}).get("terminated") or {}).get("exitCode")
                if code is None or code == 0:
                    continue
                listed = code in codes.get("values", [])
                if listed == (codes.get("operator") == "In"):
                    return str(rule["action"])
        for wanted in rule.get("onPodConditions") or []:
            if (wanted.get("type"), wanted.get("status", "True")) in conditions:
                return str(rule["action"])
    return "Count"


def _matches(obj: Obj, selector: str) -> bool:
    """Equality-based label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, comma-joined."""
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class _Handler(BaseHTTPRequestHandler):
    api: FakeKubernetes
    protocol_version = "HTTP/1.1"  # keep-alive and chunked watch streams, like the real server

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _dispatch(self, method: str) -> None:
        if self.api._closing:
            # Stopped: a kept-alive connection must not go on answering (that would be no outage).
            self.close_connection = True
            return
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.api.requests.append((method, self.path))
        route = next(((r, r[0].match(url.path)) for r in _ROUTES if r[0].match(url.path)), None)
        if route is None or route[1] is None:
            self._json(404, ApiError(404, "NotFound", f"no route for {url.path}").status())
            return
        (_, resource, api_version, kind), match = route
        namespace, name = match.group(1), match.group(2)
        try:
            body = json.loads(raw) if raw else None
            if method == "GET" and name is None and query.get("watch") in ("true", "1"):
                self._stream(resource, namespace, query)
                return
            result = self.api.handle(method, resource, namespace, name, query, body)
            if isinstance(result, dict) and result.get("kind") == "List":
                result["kind"] = f"{kind}List"
                result["apiVersion"] = api_version
            self._json(201 if method == "POST" else 200, result)
        except ApiError as exc:
            self._json(exc.code, exc.status())
        except ValueError:
            self._json(400, ApiError(400, "BadRequest", "body is not JSON").status())

    def _json(self, status: int, body: Obj) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, resource: str, namespace: str, query: dict[str, str]) -> None:
        try:
            self.api._fault("WATCH", resource)
        except ApiError as exc:
            self._json(exc.code, exc.status())
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        timeout = float(query.get("timeoutSeconds") or 30)
        events = self.api.watch(
            resource,
            namespace,
            query.get("labelSelector", ""),
            query.get("resourceVersion", ""),
            timeout,
            bookmarks=query.get("allowWatchBookmarks") in ("true", "1"),
        )
        try:
            for event in events:
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a watcher was stopped)
        self.close_connection = True
