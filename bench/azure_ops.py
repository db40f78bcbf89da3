"""What one job costs in the Azure shape: Blob Storage and Service Bus operations, by phase.

One single-image job, submitted over the API, followed by one client on its event stream,
rendered by a worker and downloaded: records and results in Blob Storage (Azurite, through the
real SDK), dispatch by Service Bus (the SDK-shaped fake in tests/fakes). Every Blob request is
counted at the SDK's HTTP transport and every Service Bus call on the fake's clients
(tests/operations.py); the API and the worker have their own store objects, as two processes do.

    .venv/bin/python -m bench.azure_ops                 # starts Azurite like the tests do
    .venv/bin/python -m bench.azure_ops --steps 50 --step-seconds 0.05 --json

The render is the fake runtime's (``--steps`` × ``--step-seconds``): operation counts depend on
steps and time, not on pixels. Admission limits are on as in production (``auth`` on turns them
on by default); ``--no-limits`` is the development default. The printed figures are counts, not
timings: the load average is printed beside them because the stream's polls depend on time.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
from collections.abc import Callable
from typing import Any

from tests import azure_shape
from tests.operations import Ledger, Op, recording

# Production defaults of api/limits.py (on once auth is on), set explicitly so auth can stay off.
PRODUCTION_LIMITS = {"limit_outstanding_jobs": 100, "limit_queued_per_lane": 10_000}


# Each operation is booked to the first row whose test it passes.
ROWS: list[tuple[str, Callable[[Op], bool]]] = [
    ("background (API timers)", lambda o: o.side == "background"),
    ("readiness probe (one)", lambda o: o.phase == "probe"),
    ("backlog refresh (one round)", lambda o: o.phase == "backlog"),
    ("worker idle (receive loop)", lambda o: o.phase == "idle"),
    ("cleanup (deletes)", lambda o: o.operation == "DeleteBlob"),
    ("dispatch", lambda o: o.phase == "submit" and o.service == "servicebus" and o.operation == "send"),
    ("submit + admission", lambda o: o.phase == "submit"),
    ("download", lambda o: o.phase == "download"),
    ("status reads by the stream", lambda o: o.side == "api"),
    ("lease renewals", lambda o: o.thread.startswith("lease-keeper")),
    ("worker receive + claim", lambda o: o.phase == "claim"),
    ("progress (all steps)", lambda o: o.phase == "progress"),
    ("upload", lambda o: o.target == "output image"),
    ("final write + settle", lambda o: o.phase == "finish"),
    ("other", lambda o: True),
]
PER_JOB = [
    r for r, _ in ROWS if r not in ("background (API timers)", "readiness probe (one)", "worker idle (receive loop)")
]
PER_JOB.remove("backlog refresh (one round)")


def row_of(op: Op) -> str:
    return next(name for name, test in ROWS if test(op))


def run(args: argparse.Namespace) -> dict[str, Any]:
    changes: dict[str, Any] = {"lease_seconds": args.lease_seconds, "forecast_workers": 0}  # as deployed: --workers 0
    if args.limits:
        changes.update(PRODUCTION_LIMITS)
    settings = azure_shape.settings(**changes)
    ledger = Ledger(settings.azure.azure_container)
    with recording(ledger):
        shape = azure_shape.build(settings, ledger)
        try:
            job = azure_shape.one_job(
                shape, ledger, steps=args.steps, step_seconds=args.step_seconds, idle_seconds=args.idle_seconds
            )
        finally:
            shape.close()
    return _report(ledger, job, args)


def _report(ledger: Ledger, job: azure_shape.Run, args: argparse.Namespace) -> dict[str, Any]:
    by_row: dict[str, collections.Counter[tuple[str, str, str, str]]] = collections.defaultdict(collections.Counter)
    for op in ledger.ops:
        if op.phase in ("setup", "done"):
            continue  # building the shape (the container) and closing it
        by_row[row_of(op)][(op.service, op.operation, op.target, op.condition)] += 1
    rows = []
    for name, _ in ROWS:
        for (service, operation, target, condition), n in sorted(by_row.get(name, {}).items()):
            rows.append(
                {
                    "phase": name,
                    "service": service,
                    "operation": operation,
                    "target": target,
                    "condition": condition,
                    "count": n,
                }
            )
    totals = {name: sum(by_row.get(name, {}).values()) for name, _ in ROWS}
    per_job = [r for r in rows if r["phase"] in PER_JOB]
    stream_ops = totals["status reads by the stream"]
    seconds = job.stream_seconds
    return {
        "settings": {
            "steps": args.steps,
            "step_seconds": args.step_seconds,
            "lease_seconds": args.lease_seconds,
            "limits": args.limits,
            "idle_seconds": args.idle_seconds,
        },
        "rows": rows,
        "totals": totals,
        "per_job": {
            "blob": sum(r["count"] for r in per_job if r["service"] == "blob"),
            "servicebus": sum(r["count"] for r in per_job if r["service"] == "servicebus"),
        },
        "progress_per_step": round(totals["progress (all steps)"] / args.steps, 2),
        "stream": {
            "seconds": round(seconds, 2),
            "ops": stream_ops,
            "ops_per_second": round(stream_ops / seconds, 2) if seconds else None,
            "events": job.events,
        },
        "render_seconds": round(job.render_seconds, 2),
        "outcome": job.outcome,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def _print(result: dict[str, Any]) -> None:
    print(
        f"settings: {result['settings']}  outcome: {result['outcome']}  render: {result['render_seconds']} s  "
        f"load: {result['loadavg']}"
    )
    print()
    print("| phase | service | operation | target | condition | count |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in result["rows"]:
        print(f"| {r['phase']} | {r['service']} | {r['operation']} | {r['target']} | {r['condition']} | {r['count']} |")
    print()
    print("| phase | operations |")
    print("| --- | --- |")
    for name, n in result["totals"].items():
        if n:
            print(f"| {name} | {n} |")
    s = result["stream"]
    print()
    print(
        f"per job (submit to download, stream included): {result['per_job']['blob']} Blob, "
        f"{result['per_job']['servicebus']} Service Bus operations"
    )
    print(f"progress: {result['progress_per_step']} operations per step")
    print(f"stream: {s['ops']} operations in {s['seconds']} s = {s['ops_per_second']}/s; events {s['events']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--step-seconds", type=float, default=0.1)
    parser.add_argument("--lease-seconds", type=float, default=3.0, help="keeper rounds every lease/3 s")
    parser.add_argument("--idle-seconds", type=float, default=3.0, help="an idle worker's receive loop, measured")
    parser.add_argument("--no-limits", dest="limits", action="store_false", help="admission limits off (development)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else "", end="")
    if not args.json:
        _print(result)


if __name__ == "__main__":
    main()
