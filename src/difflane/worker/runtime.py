"""The Runtime seam: what the worker needs from an inference engine.

A runtime loads pipelines named by catalog entries and renders one batch at a time, reporting
each denoising step through a callback that can stop the batch. Images come back as raw RGB so
that PNG encoding (and its byte-for-byte determinism) stays ours, not the engine's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

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


class Interrupted(Exception):
    """The step callback asked to stop; no images are returned."""


class ModelUnavailable(DifflaneError):
    """The model's weights are not in the cache (or cannot be loaded)."""

    code = "model_unavailable"


class Runtime(Protocol):
    device: str  # "cpu", "cuda", ...

    def load(self, model: ModelSpec) -> float:
        """Make the model ready; returns seconds spent (0.0 when it was already loaded)."""
        ...

    def render(self, task: RenderTask, on_step: StepCallback) -> list[RenderedImage]:
        """Run one batch; raises Interrupted when on_step returns False."""
        ...

    def close(self) -> None: ...
