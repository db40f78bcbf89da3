"""A batched job's image matches the same job run alone, on the real tiny Diffusers pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from difflane import catalog
from difflane.worker.runtime import RenderTask

pytestmark = pytest.mark.integration


def test_batched_images_match_alone_images(tiny_hf_home: Path) -> None:
    from difflane.worker.diffusers_runtime import DiffusersRuntime

    spec = catalog.builtin().get("tiny")
    assert spec is not None
    runtime = DiffusersRuntime(tiny_hf_home, device="cpu")
    prompts = ("a red fox", "a blue whale", "a green tree", "a grey cat")
    seeds = (11, 22, 33, 44)
    batched = runtime.render(RenderTask(spec, prompts, ("",) * 4, seeds, 64, 64, 4, 7.5), lambda s, t: True)
    for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
        alone = runtime.render(RenderTask(spec, (prompt,), ("",), (seed,), 64, 64, 4, 7.5), lambda s, t: True)[0]
        diffs = [abs(a - b) for a, b in zip(batched[i].rgb, alone.rgb, strict=True)]
        # Batched matrix products may round differently in the last bit, never visibly.
        assert max(diffs) <= 3, f"image {i}: max channel difference {max(diffs)}"
        assert sum(diffs) / len(diffs) < 0.5
    # and the images really differ from each other (the comparison above can fail)
    assert batched[0].rgb != batched[1].rgb
    runtime.close()
