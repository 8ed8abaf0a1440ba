"""Equal-cost views: what it cost a run to reach a target quality.

A learning curve is a list of points taken during training, each a mapping with the keys
``step`` (optimiser steps done), ``seconds`` (wall-clock training seconds so far), ``flops``
(training FLOPs so far, or None where they could not be counted) and one entry per metric
measured at that point, e.g. ``{"step": 100, "seconds": 4.2, "flops": 3.1e12,
"exact_match@16": 0.97}``. A cheaper kernel that learns a little slower is judged fairly by
the steps, seconds and FLOPs it needed to reach ``--target``, not only by its final number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import attrs

from plugformer.compare import stats

__all__ = ["Reached", "cost_to_reach", "training_flops"]


@attrs.frozen
class Reached:
    """Where a curve first reached its target.

    Attributes:
        step: optimiser steps done at the first point at or past the target.
        seconds: wall-clock training seconds at that point (None if not recorded).
        flops: training FLOPs at that point (None if not counted).
        value: the metric's value there.
    """

    step: int
    seconds: Optional[float]
    flops: Optional[float]
    value: float


def _optional(point: Mapping[str, Any], key: str) -> Optional[float]:
    value = point.get(key)
    return None if value is None else float(value)


def cost_to_reach(
    curve: Sequence[Mapping[str, Any]],
    target: float,
    *,
    metric: str,
    higher_is_better: Optional[bool] = None,
) -> Optional[Reached]:
    """The cost of the first point of ``curve`` whose ``metric`` is at or past ``target``.

    No interpolation: the answer is the first evaluation at which the target was met, so its
    resolution is the evaluation interval. Points are taken in step order; points without the
    metric, or with a non-finite value, are skipped.

    Args:
        curve: points with ``step``, ``seconds``, ``flops`` and the metric (see the module).
        target: the value to reach, in the metric's own units (0.99 for 99% exact match).
        metric: the key of the metric in each point, e.g. ``"exact_match@16"``.
        higher_is_better: whether reaching means ``>= target`` (True) or ``<= target`` (False,
            for losses). Default: from the metric's name (`plugformer.compare.stats.higher_is_better`).

    Returns:
        A `Reached`, or None when the curve never reaches the target.

    Raises:
        ValueError: if ``target`` is not finite, or a point that has the metric lacks ``step``.
    """
    if not math.isfinite(target):
        raise ValueError(f"target must be a finite number, got {target!r}")
    higher = stats.higher_is_better(metric) if higher_is_better is None else higher_is_better
    points = []
    for point in curve:
        value = point.get(metric)
        if value is None or not math.isfinite(float(value)):
            continue
        if "step" not in point:
            raise ValueError(f"a curve point has {metric!r} but no 'step': {dict(point)!r}")
        points.append(point)
    for point in sorted(points, key=lambda p: p["step"]):
        value = float(point[metric])
        if (value >= target) if higher else (value <= target):
            return Reached(step=int(point["step"]), seconds=_optional(point, "seconds"),
                           flops=_optional(point, "flops"), value=value)
    return None


def training_flops(steps: int, flops_fwd_bwd: Optional[float]) -> Optional[float]:
    """Training FLOPs after ``steps`` optimiser steps of one forward+backward each (the
    optimiser's own arithmetic is left out); None when ``flops_fwd_bwd`` is unknown."""
    return None if flops_fwd_bwd is None else float(steps) * float(flops_fwd_bwd)
