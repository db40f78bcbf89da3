"""The tools scripts/check-deploy installs into .ci-cache/deploy-tools (kubectl with kustomize, the
manifest checker's Python). Tests that need them skip when they are absent, except under CI
(``CI`` set), where they fail: scripts/test runs check-deploy first, so CI always has them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / ".ci-cache" / "deploy-tools" / "bin"


def _missing(what: str) -> None:
    message = f"{what} not found: run scripts/check-deploy once (it builds .ci-cache/deploy-tools)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def kubectl() -> str:
    for candidate in (TOOLS / "kubectl", shutil.which("kubectl")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    _missing("kubectl")
    raise AssertionError("unreachable")


def tools_python() -> str:
    python = TOOLS / "python"
    if not python.exists():
        _missing("the deploy tools venv")
    return str(python)


def kustomize(directory: Path) -> str:
    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout
