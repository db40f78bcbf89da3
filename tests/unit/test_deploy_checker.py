"""deploy/check_manifests.py reads custom resources the way the API server does: against the
upstream CRDs, with every field the structural schema does not name treated as an error (the API
server would prune it silently). Run in the deploy tools venv, as scripts/check-deploy runs it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.deploy_tools import tools_python

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
GENERATED = (
    K8S / "overlays" / "servicebus" / "generated" / "workers.yaml",
    K8S / "components" / "kueue" / "generated" / "kueue.yaml",
)


def check(tmp_path: Path, edits: list[tuple[str, str]]) -> subprocess.CompletedProcess[str]:
    text = "".join(path.read_text(encoding="utf-8") for path in GENERATED)
    for old, new in edits:
        assert old in text, f"nothing to edit: {old!r}"
        text = text.replace(old, new, 1)  # one object each, so every message has one cause
    render = tmp_path / "render.yaml"
    render.write_text(text, encoding="utf-8")
    command = [tools_python(), str(ROOT / "deploy" / "check_manifests.py"), "--kubernetes", "1.33"]
    command += ["--lanes", str(K8S / "base/config/lanes.yaml"), str(render)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


SCALED_OBJECT_META = "kind: ScaledObject\nmetadata:\n  name: difflane-worker-fast\n  namespace: difflane\n  "
# (edit, what the checker must say). The renders themselves pass (scripts/check-deploy).
TYPOS = [
    # KEDA TriggerAuthentication: the identity KEDA would silently not use.
    (
        ("identityId:", "identityID:"),
        "TriggerAuthentication/difflane-servicebus: spec/podIdentity: "
        "Additional properties are not allowed ('identityID' was unexpected)",
    ),
    # KEDA ScaledObject: the British spelling of the HPA's behavior.
    (("behavior:", "behaviour:"), "Additional properties are not allowed ('behaviour' was unexpected)"),
    # Metadata is ObjectMeta whatever the CRD says: a misspelt field there is pruned too.
    (
        (SCALED_OBJECT_META + "labels:", SCALED_OBJECT_META + "lables:"),
        "ScaledObject/difflane-worker-fast: metadata: Additional properties are not allowed ('lables' was unexpected)",
    ),
    # Kueue v1beta2 renamed the ClusterQueue's cohort.
    (("cohortName:", "cohort:"), "spec: Additional properties are not allowed ('cohort' was unexpected)"),
    # A PriorityClass that lets kube-scheduler evict other teams' pods.
    (("preemptionPolicy: Never", "preemptionPolicy: PreemptLowerPriority"), "may preempt other pods"),
    # An API version the installed CRDs do not serve.
    (
        (
            "apiVersion: kueue.x-k8s.io/v1beta2\nkind: LocalQueue",
            "apiVersion: kueue.x-k8s.io/v1beta3\nkind: LocalQueue",
        ),
        "no CRD or schema for kueue.x-k8s.io/v1beta3 LocalQueue",
    ),
]


def test_a_field_the_api_server_would_prune_fails(tmp_path: Path) -> None:
    result = check(tmp_path, [edit for edit, _ in TYPOS])
    assert result.returncode == 1
    for _, message in TYPOS:
        assert message in result.stdout, result.stdout
    problems = [line for line in result.stdout.splitlines() if not line.startswith("manifests:")]
    assert len(problems) == len(TYPOS), result.stdout  # nothing else was flagged


def test_the_same_objects_unedited_pass(tmp_path: Path) -> None:
    result = check(tmp_path, [])
    assert result.returncode == 0, result.stdout + result.stderr
