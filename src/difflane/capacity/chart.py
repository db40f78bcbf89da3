"""A PNG of one simulation: each job's wait at its start time, and workers and queue depth over
time, one panel per lane. Drawn with Pillow (imported here only: the simulator does not need it)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from difflane.capacity.results import LaneResult
from difflane.errors import DifflaneError

WIDTH, PANEL, MARGIN = 900, 220, 50


def write_png(results: Sequence[LaneResult], path: str | Path) -> None:
    try:
        from PIL import Image, ImageDraw
    except ImportError as exc:
        raise DifflaneError("--chart needs Pillow: pip install pillow") from exc
    height = MARGIN + len(results) * 2 * (PANEL + MARGIN)
    image = Image.new("RGB", (WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    top = MARGIN // 2
    for r in results:
        _panel(draw, top, r, f"lane {r.lane}: wait (s) per job at its start", waits=True)
        top += PANEL + MARGIN
        _panel(draw, top, r, f"lane {r.lane}: workers (blue), queue depth (orange)", waits=False)
        top += PANEL + MARGIN
    image.save(str(path), format="PNG")


def _panel(draw, top: int, r: LaneResult, title: str, *, waits: bool) -> None:  # type: ignore[no-untyped-def]
    left, right, bottom = MARGIN, WIDTH - MARGIN // 2, top + PANEL
    draw.rectangle([left, top, right, bottom], outline="black")
    span = max(r.horizon_s, 1e-9)

    def x(t: float) -> float:
        return left + (right - left) * min(t / span, 1.0)

    if waits:
        ymax = max(r.waits, default=0.0) or 1.0
        draw.text((left, top - 14), f"{title}  (max {ymax:.2f} s)", fill="black")
        for t, w in zip(r.starts, r.waits, strict=True):
            y = bottom - (bottom - top) * w / ymax
            draw.point((x(t), y), fill="crimson")
        return
    ymax = max([s.workers for s in r.timeline] + [s.depth for s in r.timeline] + [1])
    draw.text((left, top - 14), f"{title}  (max {ymax})", fill="black")
    for attr, colour in (("workers", "royalblue"), ("depth", "darkorange")):
        points = [(x(s.t), bottom - (bottom - top) * getattr(s, attr) / ymax) for s in r.timeline]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
