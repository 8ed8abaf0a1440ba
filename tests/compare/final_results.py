"""The final ``results.json`` of a comparison without what differs run to run (wall times,
threads): what a resumed or multi-worker comparison must reproduce exactly."""

from __future__ import annotations

import json
from pathlib import Path

TIMES = ("seconds", "train_s", "eval_s", "wall_s", "time_fwd_s", "time_fwd_bwd_s", "threads")


def without_times(value):
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k not in TIMES}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def final(directory: Path) -> dict:
    data = json.loads((directory / "results.json").read_text())
    data["settings"].pop("interrupted", None)
    return without_times(data)
