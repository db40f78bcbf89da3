"""Reading the YAML data files (catalog, lanes): one top-level mapping of named entries."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from difflane.errors import ConfigError

T = TypeVar("T")


class Entry(BaseModel):
    """An entry of a data file (catalog, lanes, costs, scaling): frozen, and an unknown key is
    refused, so a misspelt setting is an error at load instead of a default silently kept."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def entries(text: str, key: str, origin: str) -> dict[str, dict[str, Any]]:
    """The ``key:`` mapping of ``text``: name → fields (an empty entry is an empty dict)."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML: {exc}") from exc
    body = data.get(key) if isinstance(data, dict) else None
    if not isinstance(body, dict) or not body:
        raise ConfigError(f"{origin}: expected a top-level '{key}:' mapping with at least one entry")
    out: dict[str, dict[str, Any]] = {}
    for name, fields in body.items():
        if fields is not None and not isinstance(fields, dict):
            raise ConfigError(f"{origin}: {key}.{name} must be a mapping")
        out[str(name)] = fields or {}
    return out


def build(text: str, key: str, origin: str, make: Callable[..., T]) -> list[T]:
    """One object per entry of ``key:``, made as ``make(name=..., **fields)``; a ConfigError
    names the entry whose fields are wrong."""
    made = []
    for name, fields in entries(text, key, origin).items():
        try:
            made.append(make(name=name, **fields))
        except (ValidationError, TypeError) as exc:
            raise ConfigError(f"{origin}: {key}.{name}: {exc}") from exc
    return made


def read(path: str | Path) -> tuple[str, str]:
    """(text, origin) of a data file; ConfigError when it cannot be read."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8"), str(p)
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc}") from exc
