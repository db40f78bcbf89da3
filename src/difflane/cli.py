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


def _settings(**overrides: Any):  # type: ignore[no-untyped-def]
    from difflane import settings

    return settings.load(**overrides)


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"difflane: {message}", err=True)
    sys.exit(code)


class _OneLineErrors(click.Group):
    """Turns our own errors into one line on stderr instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DifflaneError as exc:
            _fail(exc.message)


@click.group(cls=_OneLineErrors)
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
    """Run one job and exit (0 done, 1 retry later, 2 the job can never succeed, 3 given back
    after SIGTERM)."""
    from difflane.worker import main as worker_main

    sys.exit(int(worker_main.run_one(_settings(data_dir=data_dir), job_id)))


@main.command()
def controller() -> None:
    """Run the Kubernetes controller (DIFFLANE_DISPATCH=kubernetes): repairs jobs whose pods died,
    timed out or never started, with leader election so several replicas are safe."""
    from difflane.controller import main as controller_main

    controller_main.run(_settings())


# --- client -----------------------------------------------------------------------------------


def _api_client(api_url: str | None):  # type: ignore[no-untyped-def]
    from difflane import settings
    from difflane.client import Client

    client = settings.load_client(api_url=api_url)
    token = client.client_token.get_secret_value() if client.client_token else None
    return Client(client.api_url, token=token)


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
    """Cancel a job (a running job stops within a few steps)."""
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
    for spec in catalog.load(settings.paths.catalog):
        if spec.is_local_dir:
            present = Path(spec.source).expanduser().is_dir()
        else:
            present = tiny_model.is_present(settings.paths.hf_home_path, spec.source, spec.revision or "main")
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
    path = tiny_model.create_tiny(settings.paths.hf_home_path, force=force)
    click.echo(f"tiny model ready at {path}")


@models.command("pull")
@click.argument("name")
def models_pull(name: str) -> None:
    """Download a catalog model at its pinned revision into the cache."""
    _quiet()
    from difflane import catalog
    from difflane.worker import hub

    settings = _settings()
    spec = catalog.load(settings.paths.catalog).get(name)
    if spec is None:
        _fail(f"unknown model {name!r}")
    assert spec is not None
    path = hub.pull(spec, settings.paths.hf_home_path)
    click.echo(f"{name} ready at {path}")


# --- store maintenance ------------------------------------------------------------------------


@main.group()
def store() -> None:
    """Maintain the job store."""


@store.command("reindex")
def store_reindex() -> None:
    """Azure Blob store: add the missing entries of the index of unfinished jobs (jobs accepted
    before the index existed are otherwise missing from queue ETAs and the outstanding cap until
    they end). Safe beside live traffic, and to run again."""
    from difflane import wiring

    settings = _settings()
    if settings.backends.store != "azure":
        _fail(f"DIFFLANE_STORE={settings.backends.store} has no index to rebuild: only the azure store keeps one", 2)
    job_store, _, _ = wiring.azure_store(settings)
    try:
        written = job_store.reindex_unfinished()
    finally:
        job_store.close()
    click.echo(f"{written} index entries written")


# --- config -----------------------------------------------------------------------------------


@main.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("show")
def config_show() -> None:
    """Print the effective settings (secrets redacted) as JSON."""
    click.echo(json.dumps(_settings().redacted(), indent=2, default=str))


# --- capacity (issue 15) ----------------------------------------------------------------------


@main.command()
@click.option("--trace", "trace_file", type=click.Path(path_type=Path, dir_okay=False), help="CSV of arrivals.")
@click.option("--poisson", type=float, help="Generate Poisson arrivals at RATE per second (with --duration).")
@click.option("--duration", type=float, help="Seconds of generated traffic.")
@click.option("--burst-factor", type=float, default=1.0, show_default=True, help="Rate multiplier during bursts.")
@click.option("--burst-period", type=float, default=0.0, show_default=True, help="A burst starts every S seconds.")
@click.option("--burst-length", type=float, default=0.0, show_default=True, help="Each burst lasts S seconds.")
@click.option("--model", help="Model of generated jobs (default: the catalog's first).")
@click.option("--width", type=int)
@click.option("--height", type=int)
@click.option("--steps", type=int)
@click.option("--images", type=int, default=1, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--lanes", "lanes_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--catalog", "catalog_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--costs", "costs_file", type=click.Path(path_type=Path, dir_okay=False), help="Cost model YAML.")
@click.option("--autoscale", type=click.Choice(["fixed", "keda", "kueue"]), default="fixed", show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="fixed: workers per lane.")
@click.option("--min-replicas", type=int, default=0, show_default=True)
@click.option("--max-replicas", type=int, default=10, show_default=True)
@click.option("--polling-s", type=float, default=30.0, show_default=True, help="KEDA pollingInterval.")
@click.option("--target-messages", type=float, default=5.0, show_default=True, help="KEDA messageCount per replica.")
@click.option("--activation-messages", type=float, default=0.0, show_default=True)
@click.option("--cooldown-s", type=float, default=300.0, show_default=True, help="KEDA cooldownPeriod.")
@click.option("--scale-down-window-s", type=float, default=300.0, show_default=True, help="HPA stabilisation.")
@click.option("--quota", type=int, default=4, show_default=True, help="kueue: jobs running at once per lane.")
@click.option("--pod-startup-s", type=float, default=0.0, show_default=True)
@click.option("--node-startup-s", type=float, default=0.0, show_default=True)
@click.option("--pods-per-node", type=int, default=1, show_default=True)
@click.option("--max-nodes", type=int, default=1000, show_default=True)
@click.option("--node-idle-s", type=float, default=600.0, show_default=True, help="Idle node removed after this.")
@click.option("--queued-cap", type=int, default=0, show_default=True, help="Admission: waiting jobs per lane.")
@click.option("--max-queue-wait-s", type=float, help="Admission by prediction (overrides the lanes file).")
@click.option("--json", "json_out", type=click.Path(path_type=Path, dir_okay=False), help="Write results as JSON.")
@click.option("--chart", type=click.Path(path_type=Path, dir_okay=False), help="Write a PNG (needs Pillow).")
def simulate(**opts: Any) -> None:
    """Simulate lanes, batching and autoscaling on a traffic trace; print wait, cost and load."""
    from difflane.capacity import command

    try:
        traffic = command.Traffic(**{f: opts.pop(f) for f in command.Traffic.__dataclass_fields__})
        paths = {k: opts.pop(k) for k in ("lanes_file", "catalog_file", "costs_file")}
        admission = {k: opts.pop(k) for k in ("queued_cap", "max_queue_wait_s")}
        json_out, chart = opts.pop("json_out"), opts.pop("chart")
        scaling = command.Scaling(mode=opts.pop("autoscale"), **opts)
    except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        _fail(f"invalid simulation settings: {exc}")
    results = command.run(traffic, scaling=scaling, **paths, **admission)
    click.echo(command.table(results))
    if json_out:
        command.write_json(results, scaling, json_out)
    if chart:
        from difflane.capacity import chart as chart_mod

        chart_mod.write_png(results, chart)


@main.command()
def openapi() -> None:
    """Print the OpenAPI document of the HTTP API."""
    from difflane.api.app import create_app

    # The document does not depend on deployment settings: build it on the in-memory fakes.
    app = create_app(_settings(store="memory", dispatch="memory", auth="none"))
    click.echo(json.dumps(app.openapi(), indent=2, sort_keys=True))


# --- release verification (infra: docs/howto/deploy-aks.md) ------------------------------------


@main.command()
@click.option("--url", required=True, help="The deployment's base URL, e.g. https://difflane.example.com")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="A bearer token.")
@click.option("--client-id", help="Client credentials: the app registration (with --client-secret-file).")
@click.option("--client-secret-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tenant-id", help="Client credentials: Entra ID tenant (or give --token-url).")
@click.option("--token-url", help="Client credentials: the token endpoint of any OAuth 2.0 provider.")
@click.option("--scope", default="api://difflane/.default", show_default=True, help="Client credentials scope.")
@click.option("--model", help="Default: the model whose smallest job costs least.")
@click.option("--ready-timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for /readyz.")
@click.option("--timeout", "job_timeout", type=float, default=900.0, show_default=True, help="Seconds for the job.")
def smoke(
    url: str,
    token_file: Path | None,
    client_id: str | None,
    client_secret_file: Path | None,
    tenant_id: str | None,
    token_url: str | None,
    scope: str,
    model: str | None,
    ready_timeout: float,
    job_timeout: float,
) -> None:
    """Check a deployment end to end (readiness, a job, its image); exit 1 on any failure."""
    from difflane import smoke as smoke_mod

    token = token_file.read_text(encoding="utf-8").strip() if token_file else None
    if client_id or client_secret_file:
        if token is not None or not (client_id and client_secret_file and (tenant_id or token_url)):
            raise click.UsageError(
                "client credentials need --client-id, --client-secret-file and --tenant-id or --token-url "
                "(and no --token-file)"
            )
        credentials = smoke_mod.ClientCredentials(
            token_url=token_url or smoke_mod.entra_token_url(tenant_id or ""),
            client_id=client_id,
            client_secret=client_secret_file.read_text(encoding="utf-8").strip(),
            scope=scope,
        )
        try:
            token = smoke_mod.client_credentials_token(credentials)
        except smoke_mod.SmokeFailure as exc:
            _fail(f"smoke: FAILED at token: {exc}")
    options = smoke_mod.Options(
        url=url, token=token, model=model, ready_timeout_s=ready_timeout, job_timeout_s=job_timeout
    )
    sys.exit(smoke_mod.run(options, say=lambda line: click.echo(line)))


if __name__ == "__main__":
    main()
