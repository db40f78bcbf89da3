"""The part of the Kubernetes API difflane uses, through the official ``kubernetes`` client.

Objects travel as plain dicts (``_preload_content=False``): what we send is what the server
stores, and nothing depends on the client's generated models. Every call has a timeout; an
unreachable or failing API server becomes ``Unavailable``, a 404 becomes None or False, and a
409 is reported to the caller, who knows what it means (a duplicate create, a lost race).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from difflane.errors import MissingExtra, Unavailable

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class ApiConflict(Exception):
    """409 from the API server: AlreadyExists on create, a stale resourceVersion on replace.

    Kubernetes-side only: never what a difflane client gets (that is ``errors.Conflict``)."""


def connect(api_url: str | None = None) -> Any:
    """An ``ApiClient``: ``api_url`` when given (tests, a local proxy), else the pod's service
    account (in-cluster), else ``~/.kube/config``."""
    try:
        from kubernetes import client, config
    except ImportError as exc:
        raise MissingExtra("k8s", "kubernetes") from exc
    if api_url:
        return client.ApiClient(client.Configuration(host=api_url))
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        try:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        except (config.ConfigException, OSError) as exc:
            raise Unavailable(f"no Kubernetes configuration (in-cluster or kubeconfig): {exc}") from exc
    return client.ApiClient()


class KubeApi:
    """Jobs, pods and leases of one namespace."""

    def __init__(self, api_client: Any, namespace: str, *, timeout: float = 10.0) -> None:
        from kubernetes import client

        self.namespace = namespace
        self.timeout = timeout
        self._client = api_client
        self._batch = client.BatchV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._coordination = client.CoordinationV1Api(api_client)

    # --- jobs ------------------------------------------------------------------------------------

    def create_job(self, body: Obj) -> Obj:
        """The created Job; ApiConflict when one of that name exists."""
        return self._call("create job", self._batch.create_namespaced_job, self.namespace, body)

    def get_job(self, name: str) -> Obj | None:
        return self._call_or_none("read job", self._batch.read_namespaced_job, name, self.namespace)

    def delete_job(self, name: str, propagation: str = "Foreground") -> bool:
        """False when there was no such Job. Foreground: the Job object stays until its pods are gone."""
        found = self._call_or_none(
            "delete job", self._batch.delete_namespaced_job, name, self.namespace, propagation_policy=propagation
        )
        return found is not None

    def list_jobs(self, selector: str) -> tuple[list[Obj], str]:
        body = self._call("list jobs", self._batch.list_namespaced_job, self.namespace, label_selector=selector)
        return list(body.get("items") or []), str(body["metadata"].get("resourceVersion", ""))

    def watch_jobs(self, selector: str, resource_version: str, timeout_s: int) -> WatchStream:
        return self._watch(self._batch.list_namespaced_job, selector, resource_version, timeout_s)

    # --- pods ------------------------------------------------------------------------------------

    def list_pods(self, selector: str) -> tuple[list[Obj], str]:
        body = self._call("list pods", self._core.list_namespaced_pod, self.namespace, label_selector=selector)
        return list(body.get("items") or []), str(body["metadata"].get("resourceVersion", ""))

    def watch_pods(self, selector: str, resource_version: str, timeout_s: int) -> WatchStream:
        return self._watch(self._core.list_namespaced_pod, selector, resource_version, timeout_s)

    # --- leases ----------------------------------------------------------------------------------

    def get_lease(self, name: str) -> Obj | None:
        return self._call_or_none("read lease", self._coordination.read_namespaced_lease, name, self.namespace)

    def create_lease(self, body: Obj) -> Obj:
        return self._call("create lease", self._coordination.create_namespaced_lease, self.namespace, body)

    def replace_lease(self, name: str, body: Obj) -> Obj:
        """ApiConflict when ``body``'s resourceVersion is not the stored one: someone wrote first."""
        return self._call("replace lease", self._coordination.replace_namespaced_lease, name, self.namespace, body)

    # --- plumbing --------------------------------------------------------------------------------

    def close(self) -> None:
        self._client.close()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Obj:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            response = fn(*args, _preload_content=False, _request_timeout=self.timeout, **kwargs)
            data = response.data
        except ApiException as exc:
            if exc.status == 409:
                raise ApiConflict(f"{what}: {_reason(exc)}") from exc
            if exc.status == 404:
                raise _NotFound from exc
            raise Unavailable(f"Kubernetes API: {what} failed with {exc.status}: {_reason(exc)}") from exc
        except (HTTPError, OSError) as exc:
            raise Unavailable(f"Kubernetes API unreachable ({what}): {exc}") from exc
        try:
            parsed = json.loads(data)
        except ValueError as exc:
            raise Unavailable(f"Kubernetes API: {what} returned a body that is not JSON") from exc
        return parsed if isinstance(parsed, dict) else {}

    def _call_or_none(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Obj | None:
        try:
            return self._call(what, fn, *args, **kwargs)
        except _NotFound:
            return None

    def _watch(self, fn: Any, selector: str, resource_version: str, timeout_s: int) -> WatchStream:
        return WatchStream(fn, self.namespace, selector, resource_version, timeout_s, self.timeout)


class WatchStream:
    """Events after ``resource_version`` until the server ends the stream (``timeout_s``).

    Iterating raises ``Expired`` when that version is too old to watch from (410 Gone: list
    again) and ``Unavailable`` when the connection fails. ``close()`` from another thread ends a
    blocked read at once (the controller does that when it loses leadership).
    """

    def __init__(
        self, fn: Any, namespace: str, selector: str, resource_version: str, timeout_s: int, request_timeout: float
    ) -> None:
        from kubernetes import watch

        self._watch = watch.Watch()  # type: ignore[no-untyped-call]
        self._connect_timeout = request_timeout
        # A plain wrapper hides the list function's return type from Watch, so events stay
        # dicts. (Its own `deserialize=False` mishandles ERROR events: KeyError on 410.)
        self._args = (lambda *args, **kwargs: fn(*args, **kwargs), namespace)
        self._kwargs: dict[str, Any] = dict(
            label_selector=selector,
            resource_version=resource_version,
            timeout_seconds=timeout_s,
            allow_watch_bookmarks=True,
            # The server closes the stream after timeout_s; the read timeout only catches a
            # connection that went silent without closing.
            _request_timeout=(request_timeout, timeout_s + request_timeout),
        )
        self.closed = False

    def __iter__(self) -> Iterator[tuple[str, Obj]]:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        if self.closed:
            return
        try:
            for event in self._watch.stream(*self._args, **self._kwargs):  # type: ignore[no-untyped-call]
                kind, obj = event.get("type"), event.get("object")
                if isinstance(kind, str) and isinstance(obj, dict):
                    yield kind, obj
        except ApiException as exc:
            if exc.status == 410:
                raise Expired(str(exc.reason)) from exc
            raise Unavailable(f"Kubernetes API: watch failed with {exc.status}: {_reason(exc)}") from exc
        except (HTTPError, OSError, ValueError, KeyError) as exc:
            raise Unavailable(f"Kubernetes API: watch interrupted: {exc!r}") from exc

    def close(self) -> None:
        self.closed = True
        self._watch.stop()  # type: ignore[no-untyped-call]
        if getattr(self._watch, "_resp", None) is None:
            # The request may still be on its way: once its response arrives, a read would block
            # until the server's timeout. Shut it down as soon as it exists.
            threading.Thread(target=self._close_when_connected, name="watch-close", daemon=True).start()

    def _close_when_connected(self) -> None:
        deadline = time.monotonic() + self._connect_timeout + 1.0
        while time.monotonic() < deadline:
            if getattr(self._watch, "_resp", None) is not None:
                self._watch.stop()  # type: ignore[no-untyped-call]
                return
            time.sleep(0.01)


class Expired(Exception):
    """The watch's resourceVersion is gone from the server's history (410)."""


class _NotFound(Exception):
    pass


def _reason(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if body:
        try:
            message = json.loads(body).get("message")
        except (ValueError, AttributeError):
            message = None
        if message:
            return str(message)
    return str(getattr(exc, "reason", "") or "unknown error")
