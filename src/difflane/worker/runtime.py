"""The Runtime seam: what the worker needs from an inference engine.

A runtime loads pipelines named by catalog entries and renders one batch at a time, reporting
each denoising step through a callback that can stop the batch. Images come back as raw RGB so
that PNG encoding (and its byte-for-byte determinism) stays ours, not the engine's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from difflane.catalog import ModelSpec
from difflane.errors import DifflaneError

# (steps done, 1-based; total steps) -> True to go on, False to stop the batch.
StepCallback = Callable[[int, int], bool]


@dataclass(frozen=True)
class RenderTask:
    """One pipeline call: every image shares model, size, steps and guidance."""

    model: ModelSpec
    prompts: tuple[str, ...]  # one per image
    negative_prompts: tuple[str, ...]  # one per image; "" means none
    seeds: tuple[int, ...]  # one per image: each image gets its own generator
    width: int
    height: int
    steps: int
    guidance_scale: float

    def __post_init__(self) -> None:
        if not (len(self.prompts) == len(self.negative_prompts) == len(self.seeds) > 0):
            raise ValueError("prompts, negative_prompts and seeds must have one entry per image")


@dataclass(frozen=True)
class RenderedImage:
    width: int
    height: int
    rgb: bytes  # row-major, 3 bytes per pixel, len == width * height * 3


FAILURES: dict[str, type[RuntimeFailure]] = {}  # code -> class, filled as the subclasses below are defined


class RuntimeFailure(DifflaneError):
    """A load or render that produced no images, for a reason the worker acts on (by class).

    Each kind has a stable ``code``; the code is what crosses the model process's pipe
    (``model_messages.Failed``), and ``FAILURES`` turns it back into the class. A subclass is
    registered there by being defined: no table to keep in step.
    """

    code = "runtime_failure"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.code in FAILURES:
            raise TypeError(f"{cls.__name__}.code {cls.code!r} is {FAILURES[cls.code].__name__}'s already")
        FAILURES[cls.code] = cls

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message, **details)


class Interrupted(RuntimeFailure):
    """The step callback asked to stop; no images are returned."""

    code = "interrupted"


class ModelUnavailable(RuntimeFailure):
    """The model's weights are not in the cache (or cannot be loaded)."""

    code = "model_unavailable"


class OutOfMemory(RuntimeFailure):
    """The device ran out of memory; the runtime has freed what it could and can go on."""

    code = "oom"


class RenderTimeout(RuntimeFailure):
    """The render outlived its time limit; the runtime was reset (its process killed)."""

    code = "timeout"


class RuntimeCrashed(RuntimeFailure):
    """The process running the model died; a fresh one is started for the next call."""

    code = "crashed"


@dataclass(frozen=True)
class RenderStats:
    """What the last render measured: its pipeline time and peak device memory (CUDA only)."""

    seconds: float
    peak_memory_bytes: int | None = None


class Runtime(Protocol):
    device: str  # "cpu", "cuda", ...

    def load(self, model: ModelSpec) -> float:
        """Make the model ready; returns seconds spent (0.0 when it was already loaded)."""
        ...

    def render(self, task: RenderTask, on_step: StepCallback, timeout: float | None = None) -> list[RenderedImage]:
        """Run one batch; raises Interrupted when on_step returns False, OutOfMemory when the
        device ran out, RenderTimeout past ``timeout`` seconds (runtimes that cannot stop a
        running call, i.e. in-process ones, ignore it)."""
        ...

    @property
    def last_stats(self) -> RenderStats | None:
        """Figures of the last successful render."""
        ...

    def close(self) -> None: ...
