"""How many workers a lane has over time: fixed, scaled by KEDA, or one pod per job under a
Kueue quota; and the nodes they need, with start-up delays.

KEDA (the Service Bus scaler driving an HPA), as modelled:
- every ``polling_s`` the scaler reads the lane's message count: waiting + held + running jobs
  (Service Bus counts a locked message as active until it is settled);
- above ``activation_messages`` the lane is active: desired = ceil(count / target_messages),
  within ``min_replicas``..``max_replicas`` and at least 1;
- scale-down takes the highest desired count of the last ``scale_down_window_s`` (the HPA's
  stabilisation window); to zero only after ``cooldown_s`` inactive (KEDA's cooldownPeriod);
- a new pod needs a node slot (``pods_per_node``); without one a node is added (at most
  ``max_nodes``) and takes ``node_startup_s``; the pod then takes ``pod_startup_s`` plus the
  model load before it takes work; a node with no pods for ``node_idle_s`` is removed
  (the cluster autoscaler's scale-down-unneeded time), down to ``min_nodes``.

Kueue (``DIFFLANE_DISPATCH=kubernetes``): every job is its own Kubernetes Job, admitted in
arrival order while fewer than ``quota`` run; its pod starts (node, pod start-up, model load),
runs that one job and exits: no batching.
"""

from __future__ import annotations

import dataclasses
import math
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from difflane.yamlfile import Entry


class Mode(StrEnum):
    FIXED = "fixed"
    KEDA = "keda"
    KUEUE = "kueue"


class Scaling(Entry):
    mode: Mode = Mode.FIXED
    workers: Annotated[int, Field(ge=1)] = 1  # fixed
    min_replicas: Annotated[int, Field(ge=0)] = 0  # keda
    max_replicas: Annotated[int, Field(ge=1)] = 10
    polling_s: Annotated[float, Field(gt=0)] = 30.0
    target_messages: Annotated[float, Field(gt=0)] = 5.0
    activation_messages: Annotated[float, Field(ge=0)] = 0.0
    cooldown_s: Annotated[float, Field(ge=0)] = 300.0
    scale_down_window_s: Annotated[float, Field(ge=0)] = 300.0
    quota: Annotated[int, Field(ge=1)] = 4  # kueue: jobs running at once
    pod_startup_s: Annotated[float, Field(ge=0)] = 0.0
    node_startup_s: Annotated[float, Field(ge=0)] = 0.0
    pods_per_node: Annotated[int, Field(ge=1)] = 1
    min_nodes: Annotated[int, Field(ge=0)] = 0
    max_nodes: Annotated[int, Field(ge=1)] = 1000
    node_idle_s: Annotated[float, Field(ge=0)] = 600.0


@dataclasses.dataclass
class Node:
    id: int
    created_at: float
    ready_at: float
    pods: int = 0
    idle_since: float | None = None
    removed_at: float | None = None


class NodePool:
    """Nodes of one lane's pool; billing runs from the request to the removal."""

    def __init__(self, scaling: Scaling, *, permanent: int = 0) -> None:
        self.scaling = scaling
        self.nodes: list[Node] = [Node(i, 0.0, 0.0, idle_since=0.0) for i in range(max(permanent, scaling.min_nodes))]
        self.permanent = permanent

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.removed_at is None]

    def place(self, now: float) -> Node | None:
        """A slot for one pod: on a node that has room (the soonest ready), else on a new one."""
        room = [n for n in self.live() if n.pods < self.scaling.pods_per_node]
        if room:
            node = min(room, key=lambda n: n.ready_at)
        elif len(self.live()) < self.scaling.max_nodes:
            node = Node(len(self.nodes), now, now + self.scaling.node_startup_s)
            self.nodes.append(node)
        else:
            return None
        node.pods += 1
        node.idle_since = None
        return node

    def release(self, node: Node, now: float) -> None:
        node.pods -= 1
        if node.pods == 0:
            node.idle_since = now

    def remove_idle(self, now: float) -> None:
        floor = max(self.permanent, self.scaling.min_nodes)
        for node in self.live():
            if len(self.live()) <= floor:
                return
            if node.pods == 0 and node.idle_since is not None and now - node.idle_since >= self.scaling.node_idle_s:
                node.removed_at = now

    def node_seconds(self, until: float) -> float:
        """Billed node-seconds up to ``until`` (a node is paid from its request to its removal)."""
        ends = (until if n.removed_at is None else min(n.removed_at, until) for n in self.nodes)
        return sum(max(end - n.created_at, 0.0) for end, n in zip(ends, self.nodes, strict=True))


class KedaModel:
    """The replica count KEDA + the HPA ask for, given the message counts seen at each poll."""

    def __init__(self, scaling: Scaling) -> None:
        self.s = scaling
        self.history: list[tuple[float, int]] = []
        self.last_active: float | None = None

    def desired(self, now: float, messages: int, current: int) -> int:
        s = self.s
        hpa = min(s.max_replicas, max(1, s.min_replicas, math.ceil(messages / s.target_messages)))
        if messages > s.activation_messages:
            self.last_active = now
            want = hpa
        elif current == 0 and s.min_replicas == 0:
            want = 0  # inactive: KEDA does not wake the lane
        elif s.min_replicas == 0 and (self.last_active is None or now - self.last_active >= s.cooldown_s):
            want = 0
        else:
            want = hpa
        self.history = [(t, d) for t, d in self.history if now - t < s.scale_down_window_s]
        self.history.append((now, want))
        if want == 0:
            return 0  # KEDA's own scale to zero is not held by the HPA's window
        return max(d for _, d in self.history)
