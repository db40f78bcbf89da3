"""The model catalog: which models exist, where their weights come from, their limits and lane.

The catalog is data (YAML) shared by the API, the workers and the deployment. Without a
configured file the built-in catalog offers the locally built model ``tiny``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from difflane import yamlfile
from difflane.errors import ConfigError
from difflane.lanes import Lanes
from difflane.yamlfile import Entry

# The snapshot name `difflane models create-tiny` writes; pinned so the built-in catalog can
# name a revision without a hub.
TINY_REPO = "difflane/tiny-sd"
TINY_REVISION = "d1ff1a2e00000000000000000000000000000001"

_HEX40 = re.compile(r"^[0-9a-f]{40}$")


class Defaults(Entry):
    width: int = 512
    height: int = 512
    steps: int = 30
    guidance_scale: float = 7.5
    negative_prompt: str = ""


class Limits(Entry):
    max_width: Annotated[int, Field(gt=0)] = 1024
    max_height: Annotated[int, Field(gt=0)] = 1024
    max_pixels: Annotated[int, Field(gt=0)] = 1024 * 1024
    min_steps: Annotated[int, Field(gt=0)] = 1
    max_steps: Annotated[int, Field(gt=0)] = 50
    max_images: Annotated[int, Field(gt=0)] = 4
    max_prompt_chars: Annotated[int, Field(gt=0)] = 2000
    max_guidance_scale: Annotated[float, Field(ge=0)] = 30.0


PipelineKind = Literal["text2image", "stable-diffusion", "stable-diffusion-xl"]


class ModelSpec(Entry):
    """One catalog entry. ``source`` is a hub repo id (``org/name``) or a local directory."""

    name: str
    source: str
    revision: str | None = None
    pipeline: PipelineKind = "text2image"
    lane: str = "fast"
    description: str = ""
    defaults: Defaults = Defaults()
    limits: Limits = Limits()

    @property
    def is_local_dir(self) -> bool:
        return self.source.startswith(("/", "./", "../", "~"))

    @model_validator(mode="after")
    def _pinned(self) -> ModelSpec:
        # A hub model without a pinned revision would let weights change under a running fleet.
        if not self.is_local_dir and self.revision is None:
            raise ValueError(f"model {self.name!r}: a hub source needs a pinned revision")
        if self.defaults.width > self.limits.max_width or self.defaults.height > self.limits.max_height:
            raise ValueError(f"model {self.name!r}: default size is beyond its limits")
        return self

    @property
    def revision_is_commit(self) -> bool:
        return self.revision is not None and bool(_HEX40.match(self.revision))


class Catalog:
    """An ordered, read-only mapping of model name to spec."""

    def __init__(self, models: list[ModelSpec]) -> None:
        self._models = {m.name: m for m in models}

    def get(self, name: str) -> ModelSpec | None:
        return self._models.get(name)

    def names(self) -> list[str]:
        return list(self._models)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def lanes(self) -> set[str]:
        return {m.lane for m in self._models.values()}

    def check_lanes(self, lanes: Lanes) -> None:
        """Every model's lane must exist: a job routed to no lane would wait forever."""
        missing = sorted({f"{m.name} → {m.lane}" for m in self._models.values() if lanes.get(m.lane) is None})
        if missing:
            raise ConfigError(f"models name lanes the lanes file does not define: {', '.join(missing)}")


def builtin() -> Catalog:
    return Catalog(
        [
            ModelSpec(
                name="tiny",
                source=TINY_REPO,
                revision=TINY_REVISION,
                pipeline="stable-diffusion",
                lane="fast",
                description="A tiny randomly initialised Stable Diffusion pipeline, built locally.",
                defaults=Defaults(width=64, height=64, steps=4, guidance_scale=7.5),
                limits=Limits(max_width=256, max_height=256, max_pixels=256 * 256, max_steps=100),
            )
        ]
    )


def parse(text: str, origin: str = "<catalog>") -> Catalog:
    return Catalog(yamlfile.build(text, "models", origin, ModelSpec))


def load(path: str | Path | None) -> Catalog:
    return builtin() if path is None else parse(*yamlfile.read(path))
