"""The Runtime backed by Hugging Face diffusers.

Models come only from the local hub cache (``hf_home/hub``) or a local directory: a worker never
downloads while serving, so a missing model is a clear ModelUnavailable with the command that
fixes it, not a slow surprise download. Loaded pipelines are kept per model name.

torch and diffusers are imported when a runtime is created, never when this module is imported,
so the API process can import the worker package without the ``worker`` extra.
"""

from __future__ import annotations

import gc
import importlib
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from difflane.catalog import TINY_REPO, ModelSpec
from difflane.errors import DifflaneError, MissingExtra
from difflane.telemetry import metrics
from difflane.worker.runtime import (
    Interrupted,
    ModelUnavailable,
    OutOfMemory,
    RenderedImage,
    RenderStats,
    RenderTask,
    StepCallback,
)

# Catalog pipeline kind -> diffusers class name. A plain dict: adding a kind is one line.
PIPELINE_CLASSES: dict[str, str] = {
    "text2image": "AutoPipelineForText2Image",
    "stable-diffusion": "StableDiffusionPipeline",
    "stable-diffusion-xl": "StableDiffusionXLPipeline",
}


def _require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra("worker", module) from None


@dataclass
class _Loaded:
    spec: ModelSpec
    pipe: Any
    bytes: int  # parameters and buffers: what the budget counts


def _pipeline_bytes(pipe: Any) -> int:
    total = 0
    for component in getattr(pipe, "components", {}).values():
        for tensors in (getattr(component, "parameters", None), getattr(component, "buffers", None)):
            if callable(tensors):
                total += sum(t.numel() * t.element_size() for t in tensors())
    return total


class _StepRelay:
    """``callback_on_step_end`` adapter: reports each step and turns False into an interrupt."""

    def __init__(self, on_step: StepCallback) -> None:
        self._on_step = on_step
        self.interrupted = False

    def __call__(self, pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if not self._on_step(step + 1, pipe.num_timesteps):
            # diffusers skips the remaining denoising steps but still decodes the latents;
            # render() discards that image.
            pipe._interrupt = True
            self.interrupted = True
        return kwargs  # diffusers reads (possibly replaced) tensors back from this dict


# Above this many pixels the VAE decodes in tiles and slices: its activations at 1024² and up
# would otherwise dominate peak memory.
VAE_TILING_PIXELS = 1024 * 1024


class DiffusersRuntime:
    def __init__(
        self,
        hf_home: Path,
        device: str = "auto",
        *,
        memory_budget_bytes: int | None = None,
        compile_models: frozenset[str] = frozenset(),
    ) -> None:
        self._torch = _require("torch")
        self._diffusers = _require("diffusers")
        self._np = _require("numpy")
        self.hf_home = Path(hf_home)
        self.device = self._resolve_device(device)
        self._on_cuda = self._torch.device(self.device).type == "cuda"
        # bfloat16 halves memory and is fast on modern GPUs without fp16's overflow issues;
        # CPUs compute float32 fastest and most exactly.
        self._dtype = self._torch.bfloat16 if self._on_cuda else self._torch.float32
        self._pipelines: dict[str, _Loaded] = {}  # insertion order = least recently used first
        self._budget = memory_budget_bytes
        self._compile = compile_models
        self._last_stats: RenderStats | None = None
        # Loading bars are noise in a worker's logs (diffusers and transformers draw them).
        self._diffusers.utils.logging.disable_progress_bar()
        _require("transformers").utils.logging.disable_progress_bar()

    def _resolve_device(self, device: str) -> str:
        if device == "auto":
            return "cuda" if self._torch.cuda.is_available() else "cpu"
        return device

    # --- loading ---------------------------------------------------------------------------------

    def load(self, model: ModelSpec) -> float:
        loaded = self._pipelines.pop(model.name, None)
        if loaded is not None and loaded.spec == model:
            self._pipelines[model.name] = loaded  # now the most recently used
            return 0.0
        # Same name, different spec (a catalog edit): the old weights must not serve it.
        start = time.perf_counter()
        pipe = self._load_pipeline(model)
        self._pipelines[model.name] = _Loaded(model, pipe, _pipeline_bytes(pipe))
        self._evict()
        return time.perf_counter() - start

    def loaded_models(self) -> list[str]:
        """Loaded model names, least recently used first."""
        return list(self._pipelines)

    def _evict(self) -> None:
        """Drop least recently used pipelines until the rest fit the memory budget (the newest stays)."""
        if self._budget is None:
            return
        while len(self._pipelines) > 1 and sum(p.bytes for p in self._pipelines.values()) > self._budget:
            evicted = next(iter(self._pipelines))
            del self._pipelines[evicted]
            metrics.MODEL_EVICTIONS.labels(evicted).inc()
            self._free()

    def _load_pipeline(self, model: ModelSpec) -> Any:
        cls = getattr(self._diffusers, PIPELINE_CLASSES[model.pipeline])
        source, options = self._source(model)
        if model.is_local_dir and not (Path(source) / "model_index.json").is_file():
            # Checked here: diffusers would blame a failed connection to the hub instead.
            raise self._unavailable(model, FileNotFoundError(f"no model_index.json in {source}"))
        try:
            with warnings.catch_warnings():
                # diffusers passes a deprecated argument to huggingface_hub on every load.
                warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
                pipe = cls.from_pretrained(source, dtype=self._dtype, **options)
        except DifflaneError:
            raise
        except Exception as exc:  # missing files, corrupt weights or configs: all "not loadable"
            raise self._unavailable(model, exc) from exc
        pipe.set_progress_bar_config(disable=True)
        pipe.to(self.device)
        if self._on_cuda and getattr(pipe, "unet", None) is not None:
            # channels_last suits the UNet's convolutions on GPUs; SDPA attention is diffusers' default.
            pipe.unet.to(memory_format=self._torch.channels_last)
        if model.name in self._compile and getattr(pipe, "unet", None) is not None:
            # Compiled lazily on the first call per shape: the worker's warm-up pays for it.
            pipe.unet = self._torch.compile(pipe.unet)
        return pipe

    def _unavailable(self, model: ModelSpec, cause: BaseException) -> ModelUnavailable:
        message = _unavailable_message(model, cause, self.hf_home / "hub")
        return ModelUnavailable(message, model=model.name)

    def _source(self, model: ModelSpec) -> tuple[str, dict[str, Any]]:
        # Explicit cache_dir and local_files_only: HF_HOME may be read by huggingface_hub at
        # import time, before our settings apply, and a worker must never download.
        if model.is_local_dir:
            return str(Path(model.source).expanduser()), {"local_files_only": True}
        return model.source, {
            "revision": model.revision,
            "cache_dir": str(self.hf_home / "hub"),
            "local_files_only": True,
        }

    # --- rendering -------------------------------------------------------------------------------

    @property
    def last_stats(self) -> RenderStats | None:
        return self._last_stats

    def render(self, task: RenderTask, on_step: StepCallback, timeout: float | None = None) -> list[RenderedImage]:
        # ``timeout`` cannot interrupt a running kernel from inside; the isolated runtime
        # enforces it by killing the process that runs this.
        self.load(task.model)
        pipe = self._pipelines[task.model.name].pipe
        relay = _StepRelay(on_step)
        # One generator per image: each image's starting noise depends on its own seed only.
        generators = [self._generator(seed) for seed in task.seeds]
        negatives = list(task.negative_prompts) if any(task.negative_prompts) else None
        self._vae_for(pipe, task.width * task.height)
        if self._on_cuda:
            self._torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        try:
            with self._torch.inference_mode():
                output = pipe(
                    prompt=list(task.prompts),
                    negative_prompt=negatives,
                    width=task.width,
                    height=task.height,
                    num_inference_steps=task.steps,
                    guidance_scale=task.guidance_scale,
                    generator=generators,
                    output_type="np",
                    callback_on_step_end=relay,
                )
        except self._torch.cuda.OutOfMemoryError as exc:
            del exc  # holds frames that hold tensors
            self._free()
            raise OutOfMemory(f"CUDA out of memory rendering {len(task.seeds)} image(s) of {task.model.name}") from None
        if relay.interrupted:
            raise Interrupted(f"stopped by the step callback ({task.model.name})")
        images = [self._to_image(image) for image in output.images]
        peak = int(self._torch.cuda.max_memory_allocated()) if self._on_cuda else None
        self._last_stats = RenderStats(seconds=time.perf_counter() - started, peak_memory_bytes=peak)
        return images

    def _vae_for(self, pipe: Any, pixels: int) -> None:
        vae = getattr(pipe, "vae", None)
        if vae is None or not hasattr(vae, "enable_tiling"):
            return
        if pixels >= VAE_TILING_PIXELS:
            vae.enable_tiling()
            vae.enable_slicing()
        else:
            vae.disable_tiling()
            vae.disable_slicing()

    def _free(self) -> None:
        gc.collect()  # pipelines and exceptions hold reference cycles; free tensors first
        if self._on_cuda:
            self._torch.cuda.empty_cache()

    def _generator(self, seed: int) -> Any:
        device = self.device if self._on_cuda else "cpu"
        return self._torch.Generator(device=device).manual_seed(seed)

    def _to_image(self, image: Any) -> RenderedImage:
        np = self._np
        if image.ndim != 3 or image.shape[2] != 3:
            raise RuntimeError(f"expected an HxWx3 image from the pipeline, got shape {image.shape}")
        pixels = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
        height, width = pixels.shape[:2]
        return RenderedImage(width=width, height=height, rgb=np.ascontiguousarray(pixels).tobytes())

    # --- shutdown --------------------------------------------------------------------------------

    def close(self) -> None:
        self._pipelines.clear()
        self._free()


def _unavailable_message(model: ModelSpec, exc: BaseException, cache_dir: Path) -> str:
    cause = _first_sentence(exc)
    if model.is_local_dir:
        return (
            f"model {model.name!r} cannot be loaded from {model.source}: {cause}. "
            "Check that the directory holds a diffusers pipeline (model_index.json and its components)."
        )
    where = f"{model.source}@{model.revision}"
    if model.source == TINY_REPO:
        fix = "run `difflane models create-tiny`"
    else:
        fix = f"run `difflane models pull {model.name}`"
    problem = f"is missing from the model cache in {cache_dir} or damaged"
    return f"model {model.name!r} ({where}) {problem}: {cause}. To fix: {fix}"


def _first_sentence(exc: BaseException) -> str:
    # Library errors run to several sentences of advice meant for their own API users (such as
    # "pass local_files_only=False"); keep the first, which says what went wrong.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0].split('. ')[0].rstrip('.')}"
