"""The surfaces people use, against one running ``difflane serve``: the OpenAI Images API through
the official ``openai`` client, the ``difflane jobs`` commands, and a quiet log."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.acceptance.conftest import Platform

pytestmark = pytest.mark.acceptance

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def client(p: Platform, principal: str = "contoso/openai") -> openai.OpenAI:
    # max_retries=0: a retried POST would be a second job (see README, OpenAI-compatible API).
    return openai.OpenAI(
        base_url=f"{p.url}/openai/v1",
        api_key="not-checked-with-DIFFLANE_AUTH=none",
        max_retries=0,
        default_headers={"X-Difflane-Principal": principal},
    )


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_MAGIC)
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_models_in_openai_list_shape(shared_platform: Platform) -> None:
    with client(shared_platform) as c:
        models = c.models.list()
        assert [m.id for m in models.data] == ["tiny"]
        assert models.data[0].object == "model" and models.data[0].owned_by == "difflane"
        assert c.models.retrieve("tiny").id == "tiny"
        with pytest.raises(openai.NotFoundError):
            c.models.retrieve("dall-e-3")


def test_n_images_as_b64_json_with_difflane_parameters(shared_platform: Platform) -> None:
    with client(shared_platform) as c:
        raw = c.images.with_raw_response.generate(
            model="tiny",
            prompt="a red fox in the snow",
            n=2,
            size="64x48",
            response_format="b64_json",
            user="end-user-42",
            extra_body={"seed": 5, "steps": 3, "negative_prompt": "blurry", "guidance_scale": 6.0},
        )
        result = raw.parse()
    job_id = raw.headers["x-difflane-job-id"]
    images = [base64.b64decode(d.b64_json or "") for d in result.data or []]
    assert len(images) == 2 and all(png_size(i) == (64, 48) for i in images)
    assert result.size == "64x48" and result.output_format == "png"
    # One job holds both, with the extra parameters and per-image seeds 5 and 6.
    job = shared_platform.http.get(f"/v1/jobs/{job_id}", headers={"X-Difflane-Principal": "contoso/openai"}).json()
    assert (job["num_images"], job["seed"], job["steps"], job["negative_prompt"]) == (2, 5, 3, "blurry")
    assert job["guidance_scale"] == 6.0
    assert [o["sha256"] for o in job["outputs"]] == [hashlib.sha256(i).hexdigest() for i in images]


def test_url_format_links_to_the_jobs_outputs_and_ownership_holds(shared_platform: Platform) -> None:
    with client(shared_platform, "contoso/alice") as c:
        raw = c.images.with_raw_response.generate(prompt="a lighthouse", response_format="url")
        result = raw.parse()
    job_id = raw.headers["x-difflane-job-id"]
    assert result.data and len(result.data) == 1
    url = result.data[0].url or ""
    assert url.startswith(f"{shared_platform.url}/v1/jobs/{job_id}/outputs/")
    alice = httpx.get(url, headers={"X-Difflane-Principal": "contoso/alice"})
    assert alice.status_code == 200 and png_size(alice.content) == (64, 64)  # the model's default size
    assert httpx.get(url, headers={"X-Difflane-Principal": "contoso/bob"}).status_code == 404


@pytest.mark.parametrize(
    ("kwargs", "param", "code"),
    [
        ({"size": "huge"}, "size", "invalid_size"),
        ({"size": "60x64"}, "size", "invalid_input"),  # not a multiple of 8: the /v1 schema says so
        ({"size": "1024x1024"}, "size", "limit_exceeded"),  # beyond the model's catalog limits
        ({"n": 5}, "n", "limit_exceeded"),
        ({"extra_body": {"steps": "many"}}, "steps", "invalid_input"),
        ({"extra_body": {"colour": "red"}}, "colour", "unknown_parameter"),
    ],
)
def test_bad_parameters_are_400_in_openai_shape(
    shared_platform: Platform, kwargs: dict[str, Any], param: str, code: str
) -> None:
    with client(shared_platform) as c, pytest.raises(openai.BadRequestError) as caught:
        c.images.generate(model="tiny", prompt="a fox", **kwargs)
    error = caught.value
    assert error.status_code == 400
    assert (error.param, error.code, error.type) == (param, code, "invalid_request_error"), error.body


def test_unknown_model_is_404_model_not_found(shared_platform: Platform) -> None:
    with client(shared_platform) as c, pytest.raises(openai.NotFoundError) as caught:
        c.images.generate(model="dall-e-3", prompt="a fox")
    assert (caught.value.code, caught.value.param) == ("model_not_found", "model")
    assert "tiny" in caught.value.message  # the allowed models are named


# --- the CLI ----------------------------------------------------------------------------------


def cli(p: Platform, *args: str) -> Any:
    return p.cli(*args, env={"DIFFLANE_API_URL": p.url})


def test_generate_writes_every_image_into_the_output_dir(shared_platform: Platform, tmp_path: Path) -> None:
    r = cli(
        shared_platform, "generate", "a red fox", "--num-images", "2", "--negative", "blurry", "--steps", "3",
        "--output-dir", str(tmp_path / "out"), "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    assert job["negative_prompt"] == "blurry" and job["num_images"] == 2
    files = [Path(f) for f in job["files"]]
    assert files == [tmp_path / "out" / f"{job['id']}-{i}.png" for i in (0, 1)]
    assert all(png_size(f.read_bytes()) == (64, 64) for f in files)
    assert "accepted" in r.stderr and "step 3/3" in r.stderr  # what a person sees

    listed = cli(shared_platform, "jobs", "list", "--json", "--state", "succeeded")
    assert job["id"] in [j["id"] for j in json.loads(listed.stdout)["jobs"]]
    table = cli(shared_platform, "jobs", "list", "--limit", "1")
    assert table.stdout.splitlines()[0].startswith("ID") and job["id"] in table.stdout
    shown = cli(shared_platform, "jobs", "show", job["id"])
    assert shown.returncode == 0 and "negative:  blurry" in shown.stdout and "output 1:" in shown.stdout
    watched = cli(shared_platform, "jobs", "watch", job["id"])
    assert watched.returncode == 0 and "succeeded" in watched.stderr
    again = cli(shared_platform, "jobs", "download", job["id"], "-o", str(tmp_path / "again"))
    assert again.returncode == 0
    assert [p.read_bytes() for p in sorted((tmp_path / "again").iterdir())] == [f.read_bytes() for f in files]


def test_cancel_and_watch_a_cancelled_job(shared_platform: Platform) -> None:
    job = shared_platform.submit(steps=100, width=128, height=128)
    r = cli(shared_platform, "jobs", "cancel", job["id"], "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["cancel_requested"] is True
    shared_platform.wait(job["id"], ("cancelled",))
    watched = cli(shared_platform, "jobs", "watch", job["id"], "--json")
    assert watched.returncode == 1  # followed to an end that is not success
    assert json.loads(watched.stdout.splitlines()[-1])["data"]["state"] == "cancelled"
    again = cli(shared_platform, "jobs", "cancel", job["id"])
    assert again.returncode == 3 and "[job_finished]" in again.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("generate", "a fox", "--steps", "500"), "--steps: steps must be 1..100 [limit_exceeded]"),
        (("generate", "a fox", "--model", "sdxl"), "--model: unknown model 'sdxl'; allowed: tiny [unknown_model]"),
        (("jobs", "show", "01a00000-0000-7000-8000-000000000000"), "belongs to someone else"),
        (("jobs", "list", "--api-url", "http://127.0.0.1:9"), "cannot reach the API at http://127.0.0.1:9"),
    ],
)
def test_errors_are_one_clean_message(shared_platform: Platform, args: tuple[str, ...], message: str) -> None:
    r = cli(shared_platform, *args)
    assert r.returncode == 3
    assert message in r.stderr and "Traceback" not in r.stderr


def test_serve_and_its_worker_print_no_third_party_noise(shared_platform: Platform) -> None:
    # Runs last in this module: by now the worker has imported diffusers and run jobs.
    output = "".join(p.output() for p in shared_platform.procs)
    assert "worker ready" in output
    for noise in ("torchvision", "Writing model shards", "color_message"):
        assert noise not in output, noise
