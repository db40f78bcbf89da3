"""The diffusers runtime, the tiny model builder and hub pulls, against a real (tiny) pipeline.

The tiny model is built once per session into a temporary HF home; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from difflane.catalog import TINY_REPO, TINY_REVISION, ModelSpec, builtin
from difflane.errors import DifflaneError
from difflane.worker import tiny_model
from difflane.worker.runtime import Interrupted, ModelUnavailable, RenderTask

pytestmark = pytest.mark.integration

pytest.importorskip("diffusers")

from huggingface_hub import scan_cache_dir  # noqa: E402

from difflane.worker import hub  # noqa: E402
from difflane.worker.diffusers_runtime import DiffusersRuntime  # noqa: E402

OTHER_REVISION = "0" * 39 + "2"


@pytest.fixture(scope="session")
def tiny_hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("hf-home")
    tiny_model.create_tiny(home)
    return home


@pytest.fixture(scope="module")
def runtime(tiny_hf_home: Path) -> Iterator[DiffusersRuntime]:
    rt = DiffusersRuntime(tiny_hf_home, device="cpu")
    yield rt
    rt.close()


def _tiny() -> ModelSpec:
    spec = builtin().get("tiny")
    assert spec is not None
    return spec


def _task(seeds: tuple[int, ...] = (1,), *, model: ModelSpec | None = None, negative: str = "") -> RenderTask:
    return RenderTask(
        model=model or _tiny(),
        prompts=tuple(f"a red fox {i}" for i in range(len(seeds))),
        negative_prompts=(negative,) * len(seeds),
        seeds=seeds,
        width=64,
        height=64,
        steps=4,
        guidance_scale=7.5,
    )


def _go_on(step: int, total: int) -> bool:
    return True


# --- the tiny model in the hub cache -------------------------------------------------------------


def test_tiny_model_is_a_hub_cache_entry(tiny_hf_home: Path) -> None:
    repo_dir = tiny_hf_home / "hub" / "models--difflane--tiny-sd"
    snapshot = repo_dir / "snapshots" / TINY_REVISION
    assert (repo_dir / "refs" / "main").read_bytes() == TINY_REVISION.encode()
    for name in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (snapshot / name).exists(), name
    assert tiny_model.is_present(tiny_hf_home, TINY_REPO, TINY_REVISION)
    assert not tiny_model.is_present(tiny_hf_home, TINY_REPO, OTHER_REVISION)
    # No staging folders are left behind beside the snapshot.
    assert sorted(p.name for p in repo_dir.iterdir()) == ["refs", "snapshots"]

    (repo,) = scan_cache_dir(tiny_hf_home / "hub").repos
    assert repo.repo_id == TINY_REPO
    (revision,) = repo.revisions
    assert revision.commit_hash == TINY_REVISION
    assert revision.refs == frozenset({"main"})


def test_create_tiny_is_idempotent(tiny_hf_home: Path) -> None:
    snapshot = tiny_hf_home / "hub" / "models--difflane--tiny-sd" / "snapshots" / TINY_REVISION
    before = _digests(snapshot)
    inode = snapshot.stat().st_ino
    assert tiny_model.create_tiny(tiny_hf_home) == snapshot
    assert snapshot.stat().st_ino == inode  # not rebuilt
    assert _digests(snapshot) == before


def test_forced_rebuild_with_the_same_seed_is_byte_identical(tiny_hf_home: Path, tmp_path: Path) -> None:
    reference = _digests(tiny_hf_home / "hub" / "models--difflane--tiny-sd" / "snapshots" / TINY_REVISION)
    first = tiny_model.create_tiny(tmp_path, seed=0)
    inode = first.stat().st_ino
    second = tiny_model.create_tiny(tmp_path, seed=0, force=True)
    assert second == first
    assert second.stat().st_ino != inode  # force really rebuilt it
    assert _digests(second) == reference
    other_seed = tiny_model.create_tiny(tmp_path, revision=OTHER_REVISION, seed=1)
    assert (
        _digests(other_seed)["unet/diffusion_pytorch_model.safetensors"]
        != (reference["unet/diffusion_pytorch_model.safetensors"])
    )
    # refs/main follows the latest build.
    assert (tmp_path / "hub" / "models--difflane--tiny-sd" / "refs" / "main").read_text() == OTHER_REVISION


def test_a_failed_build_leaves_no_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(out: Path, seed: int) -> None:
        (out / "model_index.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(tiny_model, "_build_pipeline", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        tiny_model.create_tiny(tmp_path)
    repo_dir = tmp_path / "hub" / "models--difflane--tiny-sd"
    assert not tiny_model.is_present(tmp_path)
    assert not (repo_dir / "snapshots" / TINY_REVISION).exists()
    assert [p.name for p in repo_dir.iterdir()] == []


# --- rendering -----------------------------------------------------------------------------------


def test_render_gives_images_of_the_requested_size(runtime: DiffusersRuntime) -> None:
    images = runtime.render(_task((1, 2)), _go_on)
    assert len(images) == 2
    for image in images:
        assert (image.width, image.height) == (64, 64)
        assert len(image.rgb) == 64 * 64 * 3
        assert len(set(image.rgb)) > 16  # not a constant (or nearly constant) image
    assert images[0].rgb != images[1].rgb


def test_same_seed_gives_identical_bytes(runtime: DiffusersRuntime) -> None:
    first = runtime.render(_task((7,)), _go_on)
    second = runtime.render(_task((7,)), _go_on)
    assert first[0].rgb == second[0].rgb


def test_different_seeds_give_different_bytes(runtime: DiffusersRuntime) -> None:
    (a,) = runtime.render(_task((7,)), _go_on)
    (b,) = runtime.render(_task((8,)), _go_on)
    assert a.rgb != b.rgb


def test_negative_prompt_is_used(runtime: DiffusersRuntime) -> None:
    (plain,) = runtime.render(_task((7,)), _go_on)
    (negative,) = runtime.render(_task((7,), negative="blurry, dark"), _go_on)
    assert plain.rgb != negative.rgb


def test_on_step_reports_every_step(runtime: DiffusersRuntime) -> None:
    calls: list[tuple[int, int]] = []

    def on_step(step: int, total: int) -> bool:
        calls.append((step, total))
        return True

    runtime.render(_task((3,)), on_step)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_on_step_false_interrupts_and_the_next_render_runs_in_full(runtime: DiffusersRuntime) -> None:
    calls: list[tuple[int, int]] = []

    def stop_at_two(step: int, total: int) -> bool:
        calls.append((step, total))
        return step < 2

    with pytest.raises(Interrupted):
        runtime.render(_task((3,)), stop_at_two)
    assert calls == [(1, 4), (2, 4)]

    # The interrupt flag must not leak into the next call on the same pipeline.
    calls.clear()

    def record(step: int, total: int) -> bool:
        calls.append((step, total))
        return True

    (after,) = runtime.render(_task((3,)), record)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    (fresh,) = runtime.render(_task((3,)), _go_on)
    assert after.rgb == fresh.rgb


# --- loading -------------------------------------------------------------------------------------


def test_load_by_revision_through_the_auto_pipeline(tiny_hf_home: Path) -> None:
    spec = ModelSpec(name="tiny-auto", source=TINY_REPO, revision=TINY_REVISION, pipeline="text2image")
    rt = DiffusersRuntime(tiny_hf_home, device="cpu")
    try:
        assert rt.load(spec) > 0.0
        assert rt.load(spec) == 0.0  # already loaded
        (image,) = rt.render(_task((5,), model=spec), _go_on)
        assert (image.width, image.height) == (64, 64)
    finally:
        rt.close()


def test_load_from_a_local_directory(tiny_hf_home: Path, runtime: DiffusersRuntime) -> None:
    folder = tiny_hf_home / "hub" / "models--difflane--tiny-sd" / "snapshots" / TINY_REVISION
    spec = ModelSpec(name="tiny-local", source=str(folder), pipeline="stable-diffusion")
    assert spec.is_local_dir
    (local,) = runtime.render(_task((11,), model=spec), _go_on)
    (cached,) = runtime.render(_task((11,)), _go_on)
    assert local.rgb == cached.rgb  # same weights, same seed


def test_a_model_missing_from_the_cache_is_unavailable(runtime: DiffusersRuntime) -> None:
    spec = ModelSpec(name="absent", source="someone/absent-model", revision="a" * 40)
    with pytest.raises(ModelUnavailable) as caught:
        runtime.load(spec)
    assert "difflane models pull absent" in caught.value.message
    assert caught.value.code == "model_unavailable"


def test_a_missing_tiny_revision_says_how_to_build_it(runtime: DiffusersRuntime) -> None:
    spec = ModelSpec(name="tiny-old", source=TINY_REPO, revision=OTHER_REVISION, pipeline="stable-diffusion")
    with pytest.raises(ModelUnavailable, match="difflane models create-tiny"):
        runtime.load(spec)


def test_a_damaged_local_model_is_unavailable(tmp_path: Path, runtime: DiffusersRuntime) -> None:
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers"')
    spec = ModelSpec(name="broken", source=str(tmp_path), pipeline="stable-diffusion")
    with pytest.raises(ModelUnavailable, match="broken"):
        runtime.load(spec)


# --- pulling -------------------------------------------------------------------------------------


def test_pull_from_an_unreachable_hub_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A bound socket that does not listen: connections to it are refused, and no other
    # process can take the port while the test runs.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        error = _pull_with_hang_guard(_remote_spec(), tmp_path)
    assert isinstance(error, ModelUnavailable)
    assert "\n" not in error.message
    for part in ("'remote'", "someone/remote-model", "b" * 40):
        assert part in error.message


def test_pull_from_a_stalled_hub_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Accepts connections (the kernel completes the handshake) but never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "0.5")
        monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "0.5")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        error = _pull_with_hang_guard(_remote_spec(), tmp_path)
    assert isinstance(error, ModelUnavailable)
    assert "Timeout" in error.message


def test_pull_refuses_a_local_directory(tmp_path: Path) -> None:
    spec = ModelSpec(name="here", source=str(tmp_path), pipeline="stable-diffusion")
    with pytest.raises(DifflaneError, match="nothing to pull"):
        hub.pull(spec, tmp_path)


def _remote_spec() -> ModelSpec:
    return ModelSpec(name="remote", source="someone/remote-model", revision="b" * 40)


def _pull_with_hang_guard(spec: ModelSpec, hf_home: Path) -> BaseException | None:
    """Run hub.pull in a thread so that a hang fails the test instead of blocking the run.

    The bound is a guard against "forever", far above the expected sub-second failure; it is
    not a timing assertion.
    """
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            hub.pull(spec, hf_home)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "hub.pull hung"
    assert outcome, "hub.pull ended without an outcome"
    return outcome[0]


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
