"""The ``difflane`` command. Heavy imports (torch, diffusers, the API) happen inside commands,
so ``difflane --help`` and the client commands start fast."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from difflane import __version__
from difflane.errors import DifflaneError

EXIT_INVALID_INPUT = 2  # run-job: the job can never succeed (Kubernetes fails the Job at once)
EXIT_RETRY = 1


def _settings(**overrides: Any):  # type: ignore[no-untyped-def]
    from difflane import settings

    return settings.load(**overrides)


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"difflane: {message}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Turns our own errors into one line on stderr instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DifflaneError as exc:
            _fail(exc.message)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="difflane")
def main() -> None:
    """difflane: serve diffusion image-generation workloads."""


# --- platform ---------------------------------------------------------------------------------


@main.command()
@click.option("--host", help="Interface for the API (default 127.0.0.1).")
@click.option("--port", type=int, help="Port for the API (default 8000).")
@click.option("--workers", type=int, help="Worker processes to run beside the API (0 = API only).")
@click.option("--api-workers", type=int, help="API processes (default 1).")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Where the database, results and models live.")
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    default=None,
    help="Allow DIFFLANE_AUTH=none on a non-loopback address (callers name themselves: never in production).",
)
def serve(
    host: str | None,
    port: int | None,
    workers: int | None,
    api_workers: int | None,
    data_dir: Path | None,
    insecure_no_auth: bool | None,
) -> None:
    """Run the API and workers on the embedded defaults (SQLite, local results, the tiny model)."""
    from difflane.serve import run

    run(
        _settings(
            host=host,
            port=port,
            workers=workers,
            api_workers=api_workers,
            data_dir=data_dir,
            insecure_no_auth=insecure_no_auth,
        )
    )


@main.command()
@click.option("--lane", "lanes", multiple=True, help="Lane to serve (repeatable; default: every lane in the catalog).")
@click.option("--data-dir", type=click.Path(path_type=Path))
@click.option("--max-jobs", type=int, default=None, hidden=True)
def worker(lanes: tuple[str, ...], data_dir: Path | None, max_jobs: int | None) -> None:
    """Run a long-lived worker that takes jobs from the queue."""
    from difflane.worker import main as worker_main

    settings = _settings(data_dir=data_dir, worker_lanes=list(lanes) or None)
    worker_main.run_worker(settings, max_jobs=max_jobs)


@main.command("run-job")
@click.argument("job_id")
@click.option("--data-dir", type=click.Path(path_type=Path))
def run_job(job_id: str, data_dir: Path | None) -> None:
    """Run one job and exit (0 done, 1 retry later, 2 the job can never succeed)."""
    from difflane.worker import main as worker_main

    sys.exit(worker_main.run_one(_settings(data_dir=data_dir), job_id))


@main.command()
def controller() -> None:
    """Run the Kubernetes controller (DIFFLANE_DISPATCH=kubernetes): repairs jobs whose pods died,
    timed out or never started, with leader election so several replicas are safe."""
    from difflane.controller import main as controller_main

    controller_main.run(_settings())


# --- client -----------------------------------------------------------------------------------


def _api_client(api_url: str | None):  # type: ignore[no-untyped-def]
    from difflane.client import Client

    settings = _settings(api_url=api_url)
    token = settings.client_token.get_secret_value() if settings.client_token else None
    return Client(settings.api_url, token=token)


def _run_client(action: Any) -> None:
    """Run a client action; API and connection errors become a clean message and exit code 3."""
    from difflane import console
    from difflane.client import ClientError

    try:
        code = action()
    except ClientError as exc:
        console.err(f"difflane: {exc}")
        code = console.EXIT_API_ERROR
    sys.exit(code or 0)


_API_URL = click.option("--api-url", help="Default: $DIFFLANE_API_URL or http://127.0.0.1:8000")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


@main.command()
@click.argument("prompt")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Image file (default: <job id>-<n>.png).")
@click.option("--output-dir", type=click.Path(path_type=Path), help="Folder for the image(s).")
@click.option("--model", default="tiny", show_default=True)
@click.option("--negative", "--negative-prompt", "negative_prompt", help="What the image should not show.")
@click.option("--width", type=int)
@click.option("--height", type=int)
@click.option("--steps", type=int)
@click.option("--guidance-scale", type=float)
@click.option("--seed", type=int)
@click.option("--num-images", type=int, default=1, show_default=True)
@_JSON
@_API_URL
def generate(
    prompt: str, output: Path | None, output_dir: Path | None, as_json: bool, api_url: str | None, **params: Any
) -> None:
    """Submit a job, show its queue position and progress, and write the image(s)."""
    from difflane import console

    body = {"prompt": prompt, **{k: v for k, v in params.items() if v is not None}}

    def action() -> int:
        with _api_client(api_url) as client:
            job = client.submit(body)
            console.err(console.summary(job).replace(" queued ", " accepted ", 1))
            try:
                job = console.follow(client, job)
            except KeyboardInterrupt:
                client.cancel(job["id"])
                console.err("\ncancel requested")
                return console.EXIT_INTERRUPTED
            code = console.finished(job)
            paths = console.download(client, job, output, output_dir) if code == console.EXIT_OK else []
            if as_json:
                console.dump({**job, "files": [str(p) for p in paths]})
            return code

    _run_client(action)


@main.group()
def jobs() -> None:
    """Your jobs on the API: list, show, watch, cancel, download."""


@jobs.command("list")
@click.option(
    "--state", type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]), help="Only this state."
)
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--cursor", help="next_cursor of the previous page.")
@_JSON
@_API_URL
def jobs_list(state: str | None, limit: int, cursor: str | None, as_json: bool, api_url: str | None) -> None:
    """Your jobs, newest first."""
    from difflane import console

    def action() -> int:
        with _api_client(api_url) as client:
            page = client.list(state, cursor, limit)
        if as_json:
            console.dump(page)
        else:
            console.table(page["jobs"])
            if page["next_cursor"]:
                console.err(f"more: difflane jobs list --cursor {page['next_cursor']}")
        return 0

    _run_client(action)


@jobs.command("show")
@click.argument("job_id")
@_JSON
@_API_URL
def jobs_show(job_id: str, as_json: bool, api_url: str | None) -> None:
    """One job: parameters, state, timings, outputs."""
    from difflane import console

    def action() -> int:
        with _api_client(api_url) as client:
            job = client.get(job_id)
        console.dump(job) if as_json else console.details(job)
        return 0

    _run_client(action)


@jobs.command("watch")
@click.argument("job_id")
@_JSON
@_API_URL
def jobs_watch(job_id: str, as_json: bool, api_url: str | None) -> None:
    """Follow a job to its end (--json: one line per event). Exit 0 succeeded, 1 failed or cancelled."""
    from difflane import console

    def action() -> int:
        with _api_client(api_url) as client:
            job = console.follow(client, client.get(job_id), json_events=as_json)
        if not as_json:
            console.err(console.summary(job))
        return console.finished(job)

    _run_client(action)


@jobs.command("cancel")
@click.argument("job_id")
@_JSON
@_API_URL
def jobs_cancel(job_id: str, as_json: bool, api_url: str | None) -> None:
    """Cancel a job (a running job stops within one step)."""
    from difflane import console

    def action() -> int:
        with _api_client(api_url) as client:
            job = client.cancel(job_id)
        console.dump(job) if as_json else console.err(console.summary(job))
        return 0

    _run_client(action)


@jobs.command("download")
@click.argument("job_id")
@click.option("-o", "--output-dir", type=click.Path(path_type=Path), default=Path(), help="Default: here.")
@_JSON
@_API_URL
def jobs_download(job_id: str, output_dir: Path, as_json: bool, api_url: str | None) -> None:
    """Write a finished job's images as DIR/<job id>-<n>.png."""
    from difflane import console

    def action() -> int:
        with _api_client(api_url) as client:
            job = client.get(job_id)
            if job["state"] != "succeeded":
                return console.finished(job) if job["state"] in ("failed", "cancelled") else _not_yet(job)
            paths = console.download(client, job, None, output_dir)
        if as_json:
            console.dump({"id": job["id"], "files": [str(p) for p in paths]})
        return 0

    _run_client(action)


def _not_yet(job: dict[str, Any]) -> int:
    from difflane import console

    console.err(f"job {job['id']} is {job['state']}: nothing to download yet (difflane jobs watch {job['id']})")
    return console.EXIT_JOB_FAILED


# --- models -----------------------------------------------------------------------------------


@main.group()
def models() -> None:
    """Inspect and prepare the model catalog."""


def _quiet() -> None:
    """Before diffusers loads: no third-party warnings, progress bars only for a person."""
    from difflane.telemetry import logging as log_setup

    log_setup.quiet_third_party(interactive=sys.stderr.isatty())


@models.command("list")
def models_list() -> None:
    """The catalog, and whether each model is in the local cache."""
    from difflane import catalog
    from difflane.worker import tiny_model

    settings = _settings()
    for spec in catalog.load(settings.catalog):
        if spec.is_local_dir:
            present = Path(spec.source).expanduser().is_dir()
        else:
            present = tiny_model.is_present(settings.hf_home_path, spec.source, spec.revision or "main")
        click.echo(
            f"{spec.name:<20} lane={spec.lane:<10} {spec.source}@{spec.revision or '-'}  "
            f"{'cached' if present else 'not cached'}"
        )


@models.command("create-tiny")
@click.option("--force", is_flag=True, help="Rebuild even if present.")
def models_create_tiny(force: bool) -> None:
    """Build the tiny Stable Diffusion pipeline into the Hugging Face cache (no download)."""
    _quiet()
    from difflane.worker import tiny_model

    settings = _settings()
    path = tiny_model.create_tiny(settings.hf_home_path, force=force)
    click.echo(f"tiny model ready at {path}")


@models.command("pull")
@click.argument("name")
def models_pull(name: str) -> None:
    """Download a catalog model at its pinned revision into the cache."""
    _quiet()
    from difflane import catalog
    from difflane.worker import hub

    settings = _settings()
    spec = catalog.load(settings.catalog).get(name)
    if spec is None:
        _fail(f"unknown model {name!r}")
    assert spec is not None
    path = hub.pull(spec, settings.hf_home_path)
    click.echo(f"{name} ready at {path}")


# --- config -----------------------------------------------------------------------------------


@main.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("show")
def config_show() -> None:
    """Print the effective settings (secrets redacted) as JSON."""
    click.echo(json.dumps(_settings().redacted(), indent=2, default=str))


@main.command()
def openapi() -> None:
    """Print the OpenAPI document of the HTTP API."""
    from difflane.api.app import create_app

    # The document does not depend on deployment settings: build it on the in-memory fakes.
    app = create_app(_settings(store="memory", dispatch="memory", auth="none"))
    click.echo(json.dumps(app.openapi(), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
