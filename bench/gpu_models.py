"""Full-size Stable Diffusion 1.5 and SDXL architectures with random weights, built locally.

The configurations are the published architectures' shapes, so a forward pass costs exactly
the FLOPs of the real models; the weights are random because nothing can be downloaded on the
benchmark machines. ``scale="tiny"`` shrinks every width and depth so the same code path can be
exercised on a CPU in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
}
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "transformer_layers_per_block": (1, 2, 10),
    "use_linear_projection": True,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
}
CLIP_L = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
CLIP_BIGG = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "projection_dim": 1280,
    "hidden_act": "gelu",
}
SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
}


def _tiny(config: dict[str, Any]) -> dict[str, Any]:
    """Same structure, small widths and depths: for exercising the code on a CPU."""
    out = dict(config)
    if "block_out_channels" in out:
        out["block_out_channels"] = tuple(32 for _ in out["block_out_channels"])
    if "attention_head_dim" in out and isinstance(out["attention_head_dim"], tuple):
        out["attention_head_dim"] = tuple(2 for _ in out["attention_head_dim"])
    elif "attention_head_dim" in out:
        out["attention_head_dim"] = 2
    if "transformer_layers_per_block" in out:
        out["transformer_layers_per_block"] = tuple(1 for _ in out["transformer_layers_per_block"])
    if "cross_attention_dim" in out:
        out["cross_attention_dim"] = 64 if config is SDXL_UNET else 32
    if "projection_class_embeddings_input_dim" in out:
        out["addition_time_embed_dim"] = 8
        out["projection_class_embeddings_input_dim"] = 32 + 6 * 8  # pooled text + 6 time ids
    out["layers_per_block"] = 1
    if "norm_num_groups" not in out and "block_out_channels" in out:
        out["norm_num_groups"] = 8
    return out


def _tiny_text(config: dict[str, Any], hidden: int) -> dict[str, Any]:
    return {
        **config,
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "projection_dim": hidden,
    }


def build(kind: str, out: Path, scale: str = "full") -> Path:
    """Write a diffusers pipeline folder (bf16 safetensors) for ``kind`` in ``sd15``/``sdxl``."""
    if (out / "model_index.json").exists():
        return out
    import torch
    import transformers
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    from difflane.worker.tiny_model import _build_tokenizer  # our download-free byte-level tokenizer

    tiny = scale == "tiny"
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(transformers, out / "tokenizer")
    ids = {
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    torch.manual_seed(0)
    with torch.device("cpu"):
        vae = AutoencoderKL(**(_tiny(VAE) if tiny else VAE))
        scheduler = EulerDiscreteScheduler(**SCHEDULER)
        if kind == "sd15":
            text = transformers.CLIPTextModel(
                transformers.CLIPTextConfig(**ids, **(_tiny_text(CLIP_L, 32) if tiny else CLIP_L))
            )
            unet = UNet2DConditionModel(**(_tiny(SD15_UNET) if tiny else SD15_UNET))
            pipe: Any = StableDiffusionPipeline(
                vae=vae,
                text_encoder=text,
                tokenizer=tokenizer,
                unet=unet,
                scheduler=scheduler,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        else:
            text = transformers.CLIPTextModel(
                transformers.CLIPTextConfig(**ids, **(_tiny_text(CLIP_L, 32) if tiny else CLIP_L))
            )
            text2 = transformers.CLIPTextModelWithProjection(
                transformers.CLIPTextConfig(**ids, **(_tiny_text(CLIP_BIGG, 32) if tiny else CLIP_BIGG))
            )
            unet = UNet2DConditionModel(**(_tiny(SDXL_UNET) if tiny else SDXL_UNET))
            tokenizer_2 = _build_tokenizer(transformers, out / "tokenizer_2")
            pipe = StableDiffusionXLPipeline(
                vae=vae,
                text_encoder=text,
                text_encoder_2=text2,
                tokenizer=tokenizer,
                tokenizer_2=tokenizer_2,
                unet=unet,
                scheduler=scheduler,
            )
    pipe.to(torch.bfloat16)
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "difflane-bench.json").write_text(json.dumps({"kind": kind, "scale": scale}))
    return out
