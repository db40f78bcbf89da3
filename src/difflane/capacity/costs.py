"""The cost model: what one pipeline call costs, per model, read from a YAML file.

    price_per_node_hour: 3.67        # what one node of the lane's pool costs per hour
    gpus_per_node: 1                 # GPU-hours = node-hours x this
    models:
      tiny:
        reference: {width: 64, height: 64}
        seconds_per_step_per_image: {1: 0.045, 4: 0.03, 8: 0.025}   # by batch size (images)
        batch_overhead_s: 0.02       # per pipeline call: claim, VAE decode, bookkeeping
        image_overhead_s: 0.004      # per image: PNG encoding, upload, record write
        load_s: 0.5                  # loading the weights into a fresh worker

A batch of ``b`` images at ``steps`` steps costs
``batch_overhead_s + b * image_overhead_s + steps * b * sps(b) * pixels / reference_pixels``
where ``sps(b)`` is interpolated linearly between the measured batch sizes (and held flat beyond
the largest). The pixel scaling is linear: a first-order model, measure at the sizes you serve.
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import Field, ValidationError, field_validator

from difflane.errors import ConfigError
from difflane.yamlfile import Entry


class Size(Entry):
    width: Annotated[int, Field(gt=0)] = 512
    height: Annotated[int, Field(gt=0)] = 512


class ModelCost(Entry):
    reference: Size = Size()
    seconds_per_step_per_image: dict[int, Annotated[float, Field(ge=0)]]
    batch_overhead_s: Annotated[float, Field(ge=0)] = 0.0
    image_overhead_s: Annotated[float, Field(ge=0)] = 0.0
    load_s: Annotated[float, Field(ge=0)] = 0.0

    @field_validator("seconds_per_step_per_image")
    @classmethod
    def _sizes(cls, value: dict[int, float]) -> dict[int, float]:
        if not value or min(value) < 1:
            raise ValueError("needs at least one batch size (>= 1) with its seconds per step per image")
        return dict(sorted(value.items()))

    def per_step_per_image(self, batch: int) -> float:
        sizes = list(self.seconds_per_step_per_image)
        values = list(self.seconds_per_step_per_image.values())
        if batch <= sizes[0]:
            return values[0]
        if batch >= sizes[-1]:
            return values[-1]
        i = bisect.bisect_left(sizes, batch)
        if sizes[i] == batch:
            return values[i]
        lo, hi = sizes[i - 1], sizes[i]
        return values[i - 1] + (values[i] - values[i - 1]) * (batch - lo) / (hi - lo)

    def batch_seconds(self, images: int, steps: int, width: int, height: int) -> float:
        scale = (width * height) / (self.reference.width * self.reference.height)
        compute = steps * images * self.per_step_per_image(images) * scale
        return self.batch_overhead_s + images * self.image_overhead_s + compute


class CostModel(Entry):
    price_per_node_hour: Annotated[float, Field(ge=0)] = 0.0
    gpus_per_node: Annotated[int, Field(ge=0)] = 1
    models: dict[str, ModelCost]

    def model(self, name: str) -> ModelCost:
        found = self.models.get(name)
        if found is None:
            raise ConfigError(f"the cost file has no entry for model {name!r} (it has {', '.join(self.models)})")
        return found

    def batch_seconds(self, model: str, images: int, steps: int, width: int, height: int) -> float:
        return self.model(model).batch_seconds(images, steps, width, height)


def parse(text: str, origin: str = "<costs>") -> CostModel:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping with 'models:'")
    try:
        return CostModel(**data)
    except (ValidationError, TypeError) as exc:
        raise ConfigError(f"{origin}: {exc}") from exc


def load(path: str | Path) -> CostModel:
    p = Path(path)
    try:
        return parse(p.read_text(encoding="utf-8"), str(p))
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc}") from exc


def builtin() -> CostModel:
    """The tiny model on a 2-core CPU, used when no cost file is configured, so that queue ETAs
    exist out of the box on the embedded platform. Pipeline figures from the CPU timings in the
    project's environment notes (64x64, 4 steps: ~0.18 s per image alone, ~0.145 s at batch 8;
    loading ~0.1 s); overheads as bench/capacity_costs.py measured them with the fake runtime
    (bench/capacity_costs_fake.yaml). Any other hardware needs its own measured file."""
    return CostModel(
        models={
            "tiny": ModelCost(
                reference=Size(width=64, height=64),
                seconds_per_step_per_image={1: 0.045, 8: 0.036},
                batch_overhead_s=0.01,
                image_overhead_s=0.028,
                load_s=0.1,
            )
        }
    )
