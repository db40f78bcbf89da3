"""Build a tiny, randomly initialised Stable Diffusion pipeline into a Hugging Face hub cache.

No model can be downloaded in CI or on a laptop without credentials, yet the worker, the API and
the deployment all want a real diffusers pipeline to run end to end. This module writes one
(~6.6 MB, a 64x64 image is a 32x32 latent) exactly where ``from_pretrained(repo, revision=...,
cache_dir=HF_HOME/hub)`` looks for a downloaded model:

    HF_HOME/hub/models--ORG--NAME/snapshots/<revision>/{model_index.json, unet/, vae/, ...}
    HF_HOME/hub/models--ORG--NAME/refs/main            (the revision, no trailing newline)

so the runtime loads it through the same code path as any pulled model. Weights are seeded, so a
build is reproducible. torch, diffusers and transformers are imported lazily: the API process
imports this package without the ``worker`` extra.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from difflane.catalog import TINY_REPO, TINY_REVISION
from difflane.errors import MissingExtra

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_BUILD_MODULES = ("torch", "diffusers", "transformers")
_MAX_TOKENS = 77  # CLIP's context length; the UNet's cross-attention sees this many tokens


# --- cache layout --------------------------------------------------------------------------------


def repo_cache_dir(hf_home: Path, repo: str) -> Path:
    """``HF_HOME/hub/models--ORG--NAME``: the hub cache folder of one model repo."""
    if not _REPO_ID.match(repo):
        raise ValueError(f"not a hub repo id (ORG/NAME): {repo!r}")
    return Path(hf_home) / "hub" / ("models--" + repo.replace("/", "--"))


def snapshot_dir(hf_home: Path, repo: str, revision: str) -> Path:
    # Only a commit hash names a snapshot folder; a branch name would live in refs/ instead.
    if not _HEX40.match(revision):
        raise ValueError(f"revision must be a 40-character lowercase hex commit hash: {revision!r}")
    return repo_cache_dir(hf_home, repo) / "snapshots" / revision


def is_present(hf_home: Path, repo: str = TINY_REPO, revision: str = TINY_REVISION) -> bool:
    """True when the snapshot holds a model_index.json and every component it names."""
    return _is_complete(snapshot_dir(hf_home, repo, revision))


def _is_complete(snapshot: Path) -> bool:
    try:
        index = json.loads((snapshot / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(index, dict):
        return False
    components = [name for name, value in index.items() if _is_component(value)]
    return bool(components) and all(_component_complete(snapshot / name) for name in components)


def _is_component(value: object) -> bool:
    # model_index.json lists components as [library, class]; [null, null] marks an absent one.
    return isinstance(value, list) and len(value) == 2 and value[0] is not None


def _component_complete(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    names = {p.name for p in folder.iterdir() if p.is_file()}
    if not any(n.endswith(".json") for n in names):
        return False
    # A model (config.json) is only usable with its weights; schedulers and tokenizers have none.
    if "config.json" in names:
        return any(n.endswith((".safetensors", ".bin")) for n in names)
    return True


# --- building ------------------------------------------------------------------------------------


def create_tiny(
    hf_home: Path,
    *,
    repo: str = TINY_REPO,
    revision: str = TINY_REVISION,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Build (or find) the tiny pipeline's snapshot; returns the snapshot folder."""
    target = snapshot_dir(hf_home, repo, revision)
    repo_dir = repo_cache_dir(hf_home, repo)
    if force or not _is_complete(target):
        for module in _BUILD_MODULES:  # fail on a missing extra before touching the cache
            _require(module)
        repo_dir.mkdir(parents=True, exist_ok=True)
        # Build beside the final folder (same file system) and rename it into place, so a crash
        # leaves a stray temp folder, never a half-written snapshot under snapshots/.
        staging = Path(tempfile.mkdtemp(prefix=".tmp-snapshot-", dir=repo_dir))
        try:
            _build_pipeline(staging, seed)
            _make_shareable(staging)
            _install(staging, target, replace=force)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    _write_ref(repo_dir, "main", revision)
    return target


def _install(staging: Path, target: Path, *, replace: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    old: Path | None = None
    if target.exists() and (replace or not _is_complete(target)):
        old = Path(tempfile.mkdtemp(prefix=".tmp-old-", dir=target.parent.parent))
        os.rename(target, old / "snapshot")
    try:
        os.rename(staging, target)
    except OSError:
        # Another builder won the race and its snapshot is complete: keep theirs.
        if not _is_complete(target):
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_ref(repo_dir: Path, ref: str, revision: str) -> None:
    refs = repo_dir / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    path = refs / ref
    if path.is_file() and path.read_text(encoding="ascii") == revision:
        return
    # The temp file lives outside refs/: a stray one there would be read as a ref by cache scans.
    tmp = repo_dir / f".tmp-ref-{ref}-{os.getpid()}"
    tmp.write_text(revision, encoding="ascii")  # no trailing newline: the hub writes none
    os.replace(tmp, path)


def _make_shareable(root: Path) -> None:
    # mkdtemp makes a 0700 folder and the serialisers write some files 0600; a cache is
    # often shared by several users or containers, so open it up for reading.
    root.chmod(0o755)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra("worker", module) from None


def _build_pipeline(out: Path, seed: int) -> None:
    torch = _require("torch")
    diffusers = _require("diffusers")
    transformers = _require("transformers")
    tokenizer = _build_tokenizer(transformers, out / "tokenizer")
    # fork_rng: seed the weights without disturbing the caller's global random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = diffusers.UNet2DConditionModel(**_UNET)
        vae = diffusers.AutoencoderKL(**_VAE)
        text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(**_text_config(tokenizer)))
    scheduler = diffusers.EulerDiscreteScheduler(**_SCHEDULER)
    pipe = diffusers.StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)


_UNET: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "sample_size": 32,  # latent side: 64 px / 2 (the VAE halves once)
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32,  # == the text encoder's hidden size
}

# Two blocks: the encoder downsamples between them once, so 64x64 pixels <-> 32x32 latents.
_VAE: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "latent_channels": 4,
    "sample_size": 64,
}

# The usual Stable Diffusion v1 schedule; steps_offset=1 as SD v1 checkpoints ship it.
_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
}


def _text_config(tokenizer: Any) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": _MAX_TOKENS,
        "projection_dim": 32,
        "layer_norm_eps": 1e-5,
        # The pooled output is read at the end-of-text token, so the ids must match our vocab.
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _build_tokenizer(transformers: ModuleType, folder: Path) -> Any:
    # A byte-level BPE with no merges: every character is its own token. Useless for meaning,
    # but it accepts any text, and it needs no downloaded vocabulary.
    folder.mkdir(parents=True)
    vocab = _byte_level_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    # transformers 5's CLIPTokenizer constructor takes vocab/merges contents, not paths;
    # from_pretrained reads the two files. The pipeline then saves tokenizer.json beside them.
    return transformers.CLIPTokenizer.from_pretrained(str(folder), model_max_length=_MAX_TOKENS)


def _byte_level_vocab() -> dict[str, int]:
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})  # word-final forms
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def _byte_chars() -> list[str]:
    """The printable stand-in character of each byte 0..255, as byte-level BPE (GPT-2, CLIP) uses.

    Bytes that print as themselves (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) keep their own code
    point; every other byte, in increasing order, takes the next code point from 256 up.
    """
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    chars: list[str] = []
    spare = 256
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(spare))
            spare += 1
    # Byte-level BPE orders the vocabulary with the printable bytes first.
    return [chars[b] for b in sorted(printable)] + [chars[b] for b in range(256) if b not in printable]
