"""The delivery pipeline's promises, read from .github/workflows (no GitHub here to run them):
OIDC sign-in with no stored Azure secret, actions pinned by commit, images tagged by commit and
deployed by digest, one deploy per environment, production behind its environment, and a
failed smoke test rolling back by itself."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    # YAML 1.1 reads the key `on` as True.
    data["on"] = data.pop(True, data.get("on"))
    return dict(data)


def steps(workflow: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [(name, job, step) for name, job in workflow["jobs"].items() for step in job.get("steps", [])]


def unpinned(workflow: dict[str, Any]) -> list[str]:
    uses = [step["uses"] for _, _, step in steps(workflow) if "uses" in step]
    uses += [job["uses"] for job in workflow["jobs"].values() if "uses" in job]
    return [u for u in uses if not u.startswith("./") and not PINNED.match(u)]


def azure_secrets(text: str) -> list[str]:
    """Anything that looks like a stored Azure credential: `secrets.AZURE_*`, azure/login's
    `creds:`, a client secret or a registry password."""
    patterns = (r"secrets\.AZURE\w*", r"^\s*creds:", r"client-secret", r"secrets\.\w*(PASSWORD|KEY|SECRET)\w*")
    return [m.group(0) for p in patterns for m in re.finditer(p, text, re.MULTILINE | re.IGNORECASE)]


ALL = sorted(p.name for p in WORKFLOWS.glob("*.yml"))


def test_the_expected_workflows_exist() -> None:
    assert {"pr.yml", "main.yml", "deploy.yml", "infra.yml"} <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_actions_are_pinned_by_commit_sha(name: str) -> None:
    assert unpinned(load(name)) == []


def test_the_pin_check_catches_a_tag_and_a_branch() -> None:
    workflow = {"jobs": {"j": {"steps": [{"uses": "actions/checkout@v4"}, {"uses": "azure/login@main"}]}}}
    assert unpinned(workflow) == ["actions/checkout@v4", "azure/login@main"]


@pytest.mark.parametrize("name", ALL)
def test_no_stored_azure_secret_and_least_permissions(name: str) -> None:
    text = (WORKFLOWS / name).read_text(encoding="utf-8")
    assert azure_secrets(text) == []
    workflow = load(name)
    assert workflow["permissions"] == {"contents": "read"}, "default: read the repository, nothing else"
    for job_name, job, step in steps(workflow):
        if str(step.get("uses", "")).startswith("azure/login@"):
            assert set(step["with"]) == {"client-id", "tenant-id", "subscription-id"}, "OIDC only"
            assert job["permissions"]["id-token"] == "write", f"{job_name} signs in with OIDC"
    for job_name, job in workflow["jobs"].items():
        granted = {k for k, v in job.get("permissions", {}).items() if v == "write"}
        assert granted <= {"id-token", "attestations"}, f"{job_name} writes {granted}"


def test_the_secret_check_catches_a_service_principal_secret() -> None:
    text = "with:\n  creds: ${{ secrets.AZURE_CREDENTIALS }}\n"
    assert azure_secrets(text) == ["secrets.AZURE_CREDENTIALS", "  creds:"]


def test_images_are_tagged_with_the_commit_and_carry_sbom_and_provenance() -> None:
    main = load("main.yml")
    builds = [step for _, _, step in steps(main) if str(step.get("uses", "")).startswith("docker/build-push-action@")]
    assert len(builds) == 2  # the API and the worker, built once
    for build in builds:
        assert build["with"]["tags"].endswith(":${{ github.sha }}")
        assert "latest" not in build["with"]["tags"]
        assert build["with"]["sbom"] is True
        assert build["with"]["provenance"] == "mode=max"
    attested = [
        step for _, _, step in steps(main) if str(step.get("uses", "")).startswith("actions/attest-build-provenance@")
    ]
    assert len(attested) == 2
    # What every environment deploys is the digest the build produced, not a tag.
    outputs = main["jobs"]["build"]["outputs"]
    refs = next(step for _, _, step in steps(main) if step.get("id") == "refs")
    assert "@$API_DIGEST" in refs["run"] and "@$WORKER_DIGEST" in refs["run"]
    assert set(outputs) == {"api-image", "worker-image"}


def test_dev_then_prod_with_the_same_digests() -> None:
    jobs = load("main.yml")["jobs"]
    assert jobs["dev"]["uses"] == jobs["prod"]["uses"] == "./.github/workflows/deploy.yml"
    assert "dev" in jobs["prod"]["needs"]
    for env in ("dev", "prod"):
        assert jobs[env]["with"]["environment"] == env
        assert jobs[env]["with"]["api-image"] == "${{ needs.build.outputs.api-image }}"
        assert jobs[env]["with"]["worker-image"] == "${{ needs.build.outputs.worker-image }}"
    assert jobs["prod"]["with"]["promote"] is True


def test_a_deploy_runs_in_its_environment_one_at_a_time() -> None:
    release = load("deploy.yml")["jobs"]["release"]
    assert release["environment"] == "${{ inputs.environment }}"
    assert release["concurrency"] == {"group": "deploy-${{ inputs.environment }}", "cancel-in-progress": False}


def test_rollout_is_verified_by_smoke_and_a_failure_rolls_back() -> None:
    ordered = load("deploy.yml")["jobs"]["release"]["steps"]
    ids = [step.get("id") for step in ordered]
    previous, apply, smoke = ids.index("previous"), ids.index("apply"), ids.index("smoke")
    assert previous < apply < smoke
    assert "deploy/release.sh current" in ordered[previous]["run"]
    assert "deploy/release.sh apply" in ordered[apply]["run"]
    assert "deploy/release.sh smoke" in ordered[smoke]["run"]
    rollback = ordered[-1]
    assert rollback["if"].startswith("failure()")  # runs only when an earlier step failed
    assert 'deploy/release.sh apply "$PREVIOUS_API" "$PREVIOUS_WORKER"' in rollback["run"]
    assert rollback["env"]["PREVIOUS_API"] == "${{ steps.previous.outputs.api }}"
    # It does not swallow the failure: no continue-on-error anywhere in the release.
    assert not any(step.get("continue-on-error") for step in ordered)
    release = (ROOT / "deploy" / "release.sh").read_text(encoding="utf-8")
    assert "rollout status" in release and "difflane smoke" in release


def test_infrastructure_has_its_own_workflow_under_change_control() -> None:
    infra, main = load("infra.yml"), load("main.yml")
    assert "infra/**" in main["on"]["push"]["paths-ignore"]
    assert "infra/**" in infra["on"]["push"]["paths"]
    assert infra["jobs"]["dev"]["environment"] == "infra-dev"
    assert infra["jobs"]["prod"]["environment"] == "infra-prod"
    assert "dev" in infra["jobs"]["prod"]["needs"]
    for env in ("dev", "prod"):
        assert infra["jobs"][env]["concurrency"] == {"group": f"infra-{env}", "cancel-in-progress": False}


def test_the_ci_identities_trust_exactly_the_environments_that_sign_in() -> None:
    """The federated subjects of infra/env/*.parameters.json are the GitHub environments of the
    jobs that call azure/login with that environment's identity."""
    signing_in = set()
    for name in ("main.yml", "deploy.yml"):
        for _, job, step in steps(load(name)):
            if str(step.get("uses", "")).startswith("azure/login@"):
                signing_in.add(job["environment"])
    assert signing_in == {"build", "${{ inputs.environment }}"}
    subjects = {
        env: json.loads((ROOT / "infra" / "env" / f"{env}.parameters.json").read_text())["parameters"][
            "githubSubjects"
        ]["value"]
        for env in ("dev", "prod")
    }
    assert [s.rsplit(":", 1)[1] for s in subjects["dev"]] == ["build", "dev"]
    assert [s.rsplit(":", 1)[1] for s in subjects["prod"]] == ["prod"]
    assert all(":environment:" in s for s in subjects["dev"] + subjects["prod"])
