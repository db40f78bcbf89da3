"""What the worker (parent) and its model process (child) say to each other over their pipe.

Both sides import this module and nothing of each other: ``isolation`` starts ``child`` by its
module path. Messages are small frozen dataclasses (pickled by the pipe). A failure crosses as
(code, message); ``runtime.FAILURES`` turns the code back into the same exception class.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from difflane.catalog import ModelSpec
from difflane.worker.runtime import FAILURES, RenderedImage, RenderStats, RenderTask, RuntimeFailure

UNCLASSIFIED = "error"  # an exception that is no RuntimeFailure: the parent raises RuntimeError


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """How the child builds its runtime (picklable: it crosses the process boundary)."""

    kind: Literal["diffusers", "fake"]
    hf_home: str
    device: str = "auto"
    memory_budget_bytes: int | None = None
    compile_models: frozenset[str] = frozenset()
    fake_step_seconds: float = 0.0
    # CPU share of the model process (settings.worker.model_threads, model_nice): torch's
    # intra-op threads (None: torch's default, one per core) and a niceness added to its own.
    threads: int | None = None
    nice: int = 0


# --- parent → child ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Load:
    model: ModelSpec


@dataclasses.dataclass(frozen=True)
class Render:
    task: RenderTask


@dataclasses.dataclass(frozen=True)
class GoOn:
    go_on: bool


@dataclasses.dataclass(frozen=True)
class Stop:
    pass


# --- child → parent ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Ready:
    device: str


@dataclasses.dataclass(frozen=True)
class Loaded:
    seconds: float


@dataclasses.dataclass(frozen=True)
class Step:
    step: int
    total: int


@dataclasses.dataclass(frozen=True)
class Done:
    images: list[RenderedImage]
    stats: RenderStats | None


@dataclasses.dataclass(frozen=True)
class Failed:
    code: str  # a RuntimeFailure's code, or UNCLASSIFIED
    message: str

    @classmethod
    def of(cls, failure: RuntimeFailure, default_message: str = "") -> Failed:
        return cls(failure.code, failure.message or default_message)

    def exception(self) -> Exception:
        """The exception the child caught, rebuilt on the parent's side."""
        kind = FAILURES.get(self.code)
        return kind(self.message) if kind is not None else RuntimeError(self.message)
