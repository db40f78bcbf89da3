"""`difflane simulate`: inputs, the table, the JSON record per lane, the chart, bad input."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from difflane.cli import main

COSTS = """price_per_node_hour: 2.0
models:
  tiny:
    reference: {width: 64, height: 64}
    seconds_per_step_per_image: {1: 0.25}
"""


def test_a_trace_file_gives_a_table_and_exact_json(tmp_path: Path) -> None:
    (tmp_path / "costs.yaml").write_text(COSTS)
    (tmp_path / "trace.csv").write_text(
        "timestamp,model,width,height,steps,images\n"
        "2026-12-01T10:00:00Z,tiny,64,64,4,1\n"
        "2026-12-01T10:00:00.5Z,tiny,64,64,4,1\n"
        "2026-12-01T10:00:03Z,tiny,64,64,4,1\n"
    )
    (tmp_path / "lanes.yaml").write_text("lanes:\n  fast: {max_batch: 1}\n")
    out = tmp_path / "out.json"
    args = ["simulate", "--trace", str(tmp_path / "trace.csv"), "--lanes", str(tmp_path / "lanes.yaml")]
    args += ["--costs", str(tmp_path / "costs.yaml"), "--json", str(out), "--chart", str(tmp_path / "c.png")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].split()[:4] == ["lane", "mode", "submitted", "rejected"]
    lane = json.loads(out.read_text())["lanes"]["fast"]
    # one worker, 1 s per job: waits 0, 0.5, 0 → p50 0, p95 0.5; busy 3 s of a 4 s horizon
    assert (lane["wait_p50_s"], lane["wait_p95_s"], lane["wait_p99_s"], lane["rejected"]) == (0.0, 0.5, 0.5, 0)
    assert lane["utilisation"] == 0.75 and lane["cost"] == round(2.0 * 4 / 3600, 4)
    assert (tmp_path / "c.png").read_bytes().startswith(b"\x89PNG")


def test_poisson_with_keda_runs_and_bad_input_is_one_line() -> None:
    result = CliRunner().invoke(main, ["simulate", "--poisson", "2", "--duration", "60", "--autoscale", "keda"])
    assert result.exit_code == 0 and "keda" in result.output
    both = CliRunner().invoke(main, ["simulate", "--poisson", "2", "--duration", "60", "--trace", "x.csv"])
    assert both.exit_code == 1 and "either --trace FILE or --poisson" in both.output
    bad = CliRunner().invoke(main, ["simulate", "--poisson", "2", "--duration", "60", "--workers", "0"])
    assert bad.exit_code == 1 and "invalid simulation settings" in bad.output
    model = CliRunner().invoke(main, ["simulate", "--poisson", "2", "--duration", "60", "--model", "nope"])
    assert model.exit_code == 1 and "unknown model 'nope'" in model.output


def test_a_bad_trace_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("timestamp,model,width,height,steps,images\n0,tiny,64,64,,1\n")
    result = CliRunner().invoke(main, ["simulate", "--trace", str(tmp_path / "t.csv")])
    assert result.exit_code == 1 and "line 2: missing steps" in result.output
