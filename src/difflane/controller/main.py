"""Starting the controller process: wiring, identity, probes, signals."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid
from types import FrameType

from difflane import wiring
from difflane.controller import pending
from difflane.controller.decide import Rules
from difflane.controller.reconciler import Controller, ControllerConfig
from difflane.dispatch.kubernetes import KubernetesDispatcher
from difflane.errors import ConfigError
from difflane.settings import Settings, check_controller
from difflane.telemetry import logging as log_setup
from difflane.telemetry.probes import ProbeServer

log = logging.getLogger(__name__)


def config_from(settings: Settings) -> ControllerConfig:
    return ControllerConfig(
        lease_name=settings.controller.controller_lease_name,
        lease_seconds=settings.controller.controller_lease_seconds,
        retry_seconds=max(0.5, settings.controller.controller_lease_seconds / 7),  # client-go: 15 s lease, 2 s retry
        resync_seconds=settings.controller.controller_resync_seconds,
        rules=Rules(
            image_pull_grace_s=settings.controller.controller_image_pull_grace_seconds,
            dispatch_after_s=settings.controller.controller_dispatch_after_seconds,
        ),
    )


def identity() -> str:
    """Unique per process: a restarted container must not inherit its predecessor's Lease."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}-{uuid.uuid4().hex[:6]}"


def build(settings: Settings, parts: wiring.Components, *, name: str | None = None) -> Controller:
    # With the Azure store the dispatcher is wrapped in the outbox (dispatch.sweeper).
    dispatcher = getattr(parts.dispatcher, "inner", parts.dispatcher)
    if not isinstance(dispatcher, KubernetesDispatcher):
        raise ConfigError("`difflane controller` needs DIFFLANE_DISPATCH=kubernetes")
    unfinished = pending.for_store(parts.store)
    if unfinished is None:
        log.warning(
            "this job store cannot list unfinished jobs: records whose Job was never created are not re-dispatched"
        )
    return Controller(
        dispatcher.api,
        parts.store,
        dispatcher,
        name or identity(),
        config_from(settings),
        unfinished=unfinished,
    )


def run(settings: Settings) -> None:
    check_controller(settings)  # DIFFLANE_DISPATCH=kubernetes with a worker image
    log_setup.setup(settings.logging.log_level, settings.logging.log_format)
    parts = wiring.build(settings)
    controller = build(settings, parts)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: releasing the lease and stopping", signal.Signals(signum).name)
        stop.set()
        controller.wake()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # A loop that has not turned for this long is stuck (the slowest turn is one renewal).
    stuck_after = max(30.0, 10 * controller.config.retry_seconds)

    def probe() -> tuple[bool, dict[str, str]]:
        # Alive and ready alike: a standby that keeps turning is a healthy replica.
        ok = controller.idle_seconds() < stuck_after
        return ok, {"status": "ok" if ok else "stuck", "role": "leader" if controller.leading else "standby"}

    health = ProbeServer({"/livez": probe, "/readyz": probe}, name="controller-probes")
    port = health.serve(settings.api.host, settings.controller.controller_health_port)
    log.info("controller %s started; probes on port %d", controller.elector.identity, port)
    try:
        controller.run(stop)
    finally:
        health.close()
        parts.close()
