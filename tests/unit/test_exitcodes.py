"""One set of ``run-job`` exit codes: the worker returns them, the Job's podFailurePolicy acts on
them, the controller reads the Job's verdict. This ties the three together."""

from __future__ import annotations

from click.testing import CliRunner

from difflane import cli
from difflane.dispatch import kubernetes_spec as spec
from difflane.exitcodes import RunJobExit
from difflane.lanes import Lane


def _rules() -> list[dict[str, object]]:
    manifest = spec.build_job("id-1", Lane(name="fast"), spec.JobTemplate(namespace="ns", image="w:1"))
    return list(manifest["spec"]["podFailurePolicy"]["rules"])


def test_the_job_fails_at_once_on_never_and_ignores_a_give_back() -> None:
    by_action: dict[str, list[int]] = {}
    for rule in _rules():
        codes = rule.get("onExitCodes")
        if isinstance(codes, dict):
            by_action.setdefault(str(rule["action"]), []).extend(codes["values"])
    assert by_action == {"FailJob": [RunJobExit.NEVER], "Ignore": [RunJobExit.GIVEN_BACK]}
    # RETRY is the one failing code left to backoffLimit: no rule may swallow it.
    assert RunJobExit.RETRY not in by_action["Ignore"] + by_action["FailJob"]


def test_run_job_exits_never_for_something_that_is_not_a_job() -> None:
    result = CliRunner().invoke(cli.main, ["run-job", "not-a-job"])
    assert result.exit_code == RunJobExit.NEVER


def test_every_code_is_documented_where_operators_read_it() -> None:
    help_text = CliRunner().invoke(cli.main, ["run-job", "--help"]).output
    for code in RunJobExit:
        assert str(int(code)) in help_text
