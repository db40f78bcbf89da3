"""One name, one concept: no two classes of the package share a name.

Two ``Conflict``s, ``Outcome``s or ``Outbox``es with different meanings made readers (and
imports) pick the wrong one; the OpenAPI document even had to qualify schema names by module.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import difflane

PACKAGE = Path(difflane.__file__).parent


def test_every_class_in_the_package_has_a_name_of_its_own() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                where[node.name].append(str(path.relative_to(PACKAGE)))
    shared = {name: files for name, files in where.items() if len(files) > 1}
    assert not shared, f"class names defined more than once: {shared}"
