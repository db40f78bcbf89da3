"""Traces with the OpenTelemetry SDK: one trace per job, from the HTTP request to the stored result.

Nothing is exported, and nothing costs more than a flag check, unless an exporter is configured
with the standard variables: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) for
OTLP over http/protobuf, ``APPLICATIONINSIGHTS_CONNECTION_STRING`` (or ``..._FILE``) for Azure
Monitor. Sampling, resource attributes, batching and headers follow the SDK's own ``OTEL_*``
variables. ``opentelemetry-sdk`` and the exporters are optional extras (``difflane[otel]``,
``difflane[azure]``), imported only once tracing is configured.

The rest of the code only opens spans (``with tracing.span(...)``) and carries context as W3C
``traceparent``/``tracestate`` strings: in the embedded queue row, the Service Bus message, the
Kubernetes Job's pod environment. Everything that knows about OpenTelemetry is in this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from difflane.jobs import Job

log = logging.getLogger(__name__)

TRACER_NAME = "difflane"
# The carriers' keys: W3C Trace Context, as OpenTelemetry's default propagator writes them.
CARRIER_KEYS = ("traceparent", "tracestate")
# A Kubernetes Job's pod gets the context as environment variables (the OpenTelemetry
# convention for environment carriers) and as an annotation, for operators reading the Job.
ENV_KEYS = {"traceparent": "TRACEPARENT", "tracestate": "TRACESTATE"}
ANNOTATION = "difflane.io/traceparent"

Attributes = Mapping[str, str | int | float | bool]


class _State:
    """The configured provider; None of it exists while tracing is off."""

    def __init__(self, provider: Any, tracer: Any, exporters: list[str]) -> None:
        self.provider = provider
        self.tracer = tracer
        self.exporters = exporters
        self.tracers: dict[tuple[str, str | None], Any] = {}  # the forwarding provider's, by scope


_state: _State | None = None
_setup_lock = threading.Lock()
_instrumented = False
# The context of each delivery's job span in this worker, so later steps of that job (upload,
# final write) are children of it. Keyed by id() with the job id beside it (a Delivery need not
# be hashable or weak-referenceable), bounded so settled deliveries fall out.
_job_contexts: OrderedDict[int, tuple[str, dict[str, str]]] = OrderedDict()
_JOB_CONTEXTS_KEPT = 4096


def enabled() -> bool:
    return _state is not None


def exporters() -> list[str]:
    """Names of the configured exporters (empty: tracing is off)."""
    return list(_state.exporters) if _state else []


# --- set-up ------------------------------------------------------------------------------------


def configured_exporters(env: Mapping[str, str] = os.environ) -> list[str]:
    """Which exporters the environment asks for, without importing anything."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return []
    found = []
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        found.append("otlp")
    if connection_string(env):
        found.append("azure_monitor")
    return found


def connection_string(env: Mapping[str, str] = os.environ) -> str | None:
    value = env.get("APPLICATIONINSIGHTS_CONNECTION_STRING")
    if not value and env.get("APPLICATIONINSIGHTS_CONNECTION_STRING_FILE"):
        # A secret mounted from Key Vault: read it, never log it.
        value = Path(env["APPLICATIONINSIGHTS_CONNECTION_STRING_FILE"]).read_text().strip()
    return value or None


def setup(service: str, *, env: Mapping[str, str] = os.environ, span_exporter: Any = None) -> bool:
    """Start tracing for this process when the environment configures an exporter (or a test
    passes ``span_exporter``). Returns whether tracing is on. Calling it again replaces the
    provider (tests do; a process calls it once)."""
    global _state
    names = configured_exporters(env)
    if not names and span_exporter is None:
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        log.warning("tracing is configured but OpenTelemetry is not installed: pip install 'difflane[otel]'")
        return False
    with _setup_lock:
        # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win over our default name.
        attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": service}
        provider = TracerProvider(resource=Resource.create(attributes))  # the sampler comes from OTEL_*
        for exporter in _exporters(names, env):
            provider.add_span_processor(BatchSpanProcessor(exporter))
        if span_exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        old, _state = _state, _State(provider, provider.get_tracer(TRACER_NAME), names)
        _install_globals()
    if old is not None:
        old.provider.shutdown()
    log.info("tracing on", extra={"exporters": names or ["test"]})
    return True


def shutdown() -> None:
    """Flush and stop (tests, and processes that exit without running atexit handlers)."""
    global _state
    old, _state = _state, None
    if old is not None:
        old.provider.shutdown()


def flush() -> None:
    if _state is not None:
        _state.provider.force_flush()


def _exporters(names: Sequence[str], env: Mapping[str, str]) -> list[Any]:
    found: list[Any] = []
    if "otlp" in names:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("OTLP is configured but its exporter is missing: pip install 'difflane[otel]'")
        else:
            found.append(OTLPSpanExporter())  # endpoint, headers, timeout: OTEL_EXPORTER_OTLP_*
    if "azure_monitor" in names:
        try:
            from azure.monitor.opentelemetry.exporter import AzureMonitorTraceExporter
        except ImportError:
            log.warning("Application Insights is configured but its exporter is missing: pip install 'difflane[azure]'")
        else:
            found.append(AzureMonitorTraceExporter(connection_string=connection_string(env)))
    return found


def _install_globals() -> None:
    """Once per process: the global provider (which the Azure SDK's and httpx's spans use)
    forwards to whichever provider is current, and those libraries are instrumented."""
    global _instrumented
    if _instrumented:
        return
    _instrumented = True
    from opentelemetry import trace

    trace.set_tracer_provider(_forwarding_provider())
    try:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor().instrument()
    except ImportError:
        pass
    try:
        from azure.core.settings import settings
        from azure.core.tracing.ext.opentelemetry_span import OpenTelemetrySpan  # azure-core-tracing-opentelemetry
    except ImportError:
        pass
    else:
        settings.tracing_implementation = OpenTelemetrySpan


def _forwarding_provider() -> Any:
    """A global provider that never needs replacing (OpenTelemetry allows setting it once)."""
    from opentelemetry import trace

    class ForwardingTracer(trace.Tracer):
        def __init__(self, name: str, version: str | None) -> None:
            self._name, self._version = name, version

        def _target(self) -> Any:
            state = _state
            if state is None:
                return trace.NoOpTracer()
            # The SDK builds a new tracer per get_tracer call (~60 µs): keep one per provider.
            key = (self._name, self._version)
            found = state.tracers.get(key)
            if found is None:
                found = state.tracers[key] = state.provider.get_tracer(self._name, self._version)
            return found

        def start_span(self, *args: Any, **kwargs: Any) -> Any:
            return self._target().start_span(*args, **kwargs)

        @contextlib.contextmanager
        def start_as_current_span(self, *args: Any, **kwargs: Any) -> Iterator[Any]:  # type: ignore[override]
            with self._target().start_as_current_span(*args, **kwargs) as current:
                yield current

    class ForwardingProvider(trace.TracerProvider):
        def get_tracer(self, instrumenting_module_name: str, *args: Any, **kwargs: Any) -> Any:
            version = args[0] if args else kwargs.get("instrumenting_library_version")
            return ForwardingTracer(instrumenting_module_name, version)

    return ForwardingProvider()


# --- spans -------------------------------------------------------------------------------------


@contextlib.contextmanager
def span(
    name: str,
    attributes: Attributes | None = None,
    *,
    parent: Mapping[str, str] | None = None,
    links: Sequence[Mapping[str, str]] = (),
    kind: str = "internal",
) -> Iterator[Any]:
    """A span around the block (child of the current one, or of ``parent`` when given as a
    carrier); yields the span, or None while tracing is off. An exception marks it as an error."""
    state = _state
    if state is None:
        yield None
        return
    from opentelemetry import trace

    context = extract(parent) if parent else None
    span_links = [trace.Link(c) for c in (_span_context(carrier) for carrier in links) if c is not None]
    with state.tracer.start_as_current_span(
        name, context=context, kind=_KINDS[kind], attributes=dict(attributes or {}), links=span_links
    ) as current:
        yield current


def event(name: str, attributes: Attributes | None = None) -> None:
    """An event on the current span (render progress: one per step, not a span per step)."""
    if _state is None:
        return
    from opentelemetry import trace

    trace.get_current_span().add_event(name, dict(attributes or {}))


def set_attributes(attributes: Attributes) -> None:
    if _state is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(dict(attributes))


def set_error(description: str) -> None:
    """Mark the current span as failed without an exception (a webhook answered 500, say)."""
    if _state is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_status(trace.Status(trace.StatusCode.ERROR, description))


def _kinds() -> dict[str, Any]:
    try:
        from opentelemetry.trace import SpanKind
    except ImportError:
        return {}
    return {
        "internal": SpanKind.INTERNAL,
        "server": SpanKind.SERVER,
        "client": SpanKind.CLIENT,
        "producer": SpanKind.PRODUCER,
        "consumer": SpanKind.CONSUMER,
    }


_KINDS = _kinds()


# --- carrying context between processes ----------------------------------------------------------


def inject() -> dict[str, str]:
    """The current context as W3C headers (empty while tracing is off or outside any span)."""
    if _state is None:
        return {}
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {k: v for k, v in carrier.items() if k in CARRIER_KEYS}


def extract(carrier: Mapping[str, str] | None) -> Any:
    """An OpenTelemetry Context from W3C headers (None when there is nothing to extract)."""
    if _state is None or not carrier:
        return None
    from opentelemetry import propagate

    return propagate.extract({k: v for k, v in carrier.items() if k in CARRIER_KEYS})


def _span_context(carrier: Mapping[str, str]) -> Any:
    from opentelemetry import trace

    context = trace.get_current_span(extract(carrier)).get_span_context()
    return context if context.is_valid else None


def to_env(carrier: Mapping[str, str]) -> dict[str, str]:
    return {ENV_KEYS[k]: v for k, v in carrier.items() if k in ENV_KEYS}


def from_env(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    return {k: env[e] for k, e in ENV_KEYS.items() if env.get(e)}


def stamp_manifest(manifest: dict[str, Any], carrier: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Put the current trace context into a Kubernetes Job manifest: every container's
    environment and the pod template's annotations. The manifest is returned unchanged while
    tracing is off."""
    carrier = inject() if carrier is None else carrier
    if not carrier:
        return manifest
    template = manifest["spec"]["template"]
    template.setdefault("metadata", {}).setdefault("annotations", {})[ANNOTATION] = carrier["traceparent"]
    for container in template["spec"]["containers"]:
        env = [e for e in container.get("env", []) if e["name"] not in ENV_KEYS.values()]
        container["env"] = env + [{"name": k, "value": v} for k, v in to_env(carrier).items()]
    return manifest


# --- the job's spans in a worker -----------------------------------------------------------------


def owner_hash(owner: str) -> str:
    """Enough to group a tenant's jobs in a trace view, never the subject in clear."""
    return hashlib.sha256(owner.encode()).hexdigest()[:16]


def job_attributes(job: Job, attempt: int | None = None) -> dict[str, str | int]:
    """What a span says about a job: never the prompt, never the owner in clear."""
    found: dict[str, str | int] = {
        "difflane.job.id": job.id,
        "difflane.lane": job.lane,
        "difflane.model": job.request.model,
        "difflane.tenant": job.owner.tenant,
        "difflane.owner_hash": owner_hash(job.owner.key),
        "difflane.images": job.request.num_images,
    }
    if attempt is not None:
        found["difflane.attempt"] = attempt
    return found


def delivery_carrier(delivery: object) -> dict[str, str]:
    """The trace context a delivery brought (queue row, message, pod environment)."""
    carrier = getattr(delivery, "trace_context", None)
    return dict(carrier) if isinstance(carrier, Mapping) else {}


@contextlib.contextmanager
def received(delivery: Any) -> Iterator[Any]:
    """The worker's span for one delivery, in the job's trace; later ``in_job`` spans of the
    same delivery are its children."""
    if _state is None:
        yield None
        return
    attributes = {
        "difflane.job.id": delivery.job_id,
        "difflane.lane": delivery.lane,
        "difflane.attempt": delivery.attempt,
    }
    with span("worker.receive", attributes, parent=delivery_carrier(delivery) or None, kind="consumer") as current:
        with _setup_lock:
            _job_contexts[id(delivery)] = (delivery.job_id, inject())
            while len(_job_contexts) > _JOB_CONTEXTS_KEPT:
                _job_contexts.popitem(last=False)
        yield current


def describe_job(job: Job, attempt: int | None = None) -> None:
    """Add the job's attributes to the current span once the record is read."""
    if _state is not None:
        set_attributes(job_attributes(job, attempt))


def job_carrier(delivery: object) -> dict[str, str]:
    """The context of the delivery's worker span (or what it brought, before that span)."""
    found = _job_contexts.get(id(delivery)) if _state is not None else None
    if found is not None and found[0] == getattr(delivery, "job_id", None):
        return dict(found[1])
    return delivery_carrier(delivery)


@contextlib.contextmanager
def in_job(delivery: object, name: str, attributes: Attributes | None = None) -> Iterator[Any]:
    """A span in the delivery's job trace, whatever span is current (a batch's, for instance)."""
    if _state is None:
        yield None
        return
    with span(name, attributes, parent=job_carrier(delivery) or None) as current:
        yield current


@contextlib.contextmanager
def batch(deliveries: Sequence[object], attributes: Attributes | None = None) -> Iterator[Any]:
    """A batch serves several jobs: its span lives in the first job's trace and links every
    job's worker span, so each job's trace view leads to the pipeline call it shared."""
    if _state is None:
        yield None
        return
    carriers = [job_carrier(d) for d in deliveries]
    first = carriers[0] if carriers else None
    attrs = {"difflane.batch.size": len(deliveries), **(attributes or {})}
    with span("batch", attrs, parent=first or None, links=[c for c in carriers if c]) as current:
        yield current


# --- log correlation -----------------------------------------------------------------------------


class LogCorrelation(logging.Filter):
    """Adds ``trace_id`` and ``span_id`` to every record emitted inside a recording span."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _state is None:
            return True
        from opentelemetry import trace

        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span, hex, for exemplars and error bodies."""
    if _state is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
