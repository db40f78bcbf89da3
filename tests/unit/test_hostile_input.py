"""Hostile request bodies: text that would break a later stage is refused at the API (issue 9)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.unit.conftest import Platform

TINY = {"model": "tiny", "prompt": "a red fox in the snow"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**TINY, "prompt": "a fox\x00"}, "prompt"),  # NUL: the PNG text chunk separator
        ({**TINY, "prompt": "bell\x07"}, "prompt"),
        ({**TINY, "prompt": "esc\x1b[31m"}, "prompt"),  # terminal escape in logs
        ({**TINY, "prompt": "del\x7f"}, "prompt"),
        ({**TINY, "prompt": "c1\x85"}, "prompt"),
        ({**TINY, "prompt": "lone \ud800 surrogate"}, "prompt"),  # not encodable as UTF-8
        ({**TINY, "negative_prompt": "blurry\x00"}, "negative_prompt"),
        ({**TINY, "model": "ti\x00ny"}, "model"),
        ({**TINY, "lane": "fa\x00st"}, "lane"),
    ],
)
def test_control_characters_are_422_naming_the_field(platform: Platform, body: dict[str, Any], field: str) -> None:
    raw = json.dumps(body)  # ASCII escapes: "\\u0000", and a lone surrogate as "\\ud800"
    r = platform.client.post("/v1/jobs", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_characters" and error["field"] == field
    assert platform.client.get("/v1/jobs").json()["jobs"] == []  # nothing was written


def test_ordinary_whitespace_and_unicode_are_accepted(platform: Platform) -> None:
    body = {**TINY, "prompt": "line one\nline two\ttabbed\r\n — 狐, émoji 🦊", "negative_prompt": "blur\n"}
    r = platform.client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    assert r.json()["prompt"] == body["prompt"]
