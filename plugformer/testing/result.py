"""What a check returns, and the names of the checks (no torch here: the pytest plugin and the
CLI's argument parsing read this module without building anything)."""

from __future__ import annotations

from typing import Literal

import attrs

Status = Literal["passed", "failed", "not_applicable"]

#: Every check, in the order they run; the pytest test of each carries its name.
CHECK_NAMES = (
    "shapes_dtypes",
    "masked_rows_finite",
    "gradients_reach_parameters",
    "causality",
    "cached_decoding",
    "padding_invariance",
    "kernel_swap",
    "state_dict_roundtrip",
    "gradcheck",
    "compile_fullgraph",
    "capabilities",
    "determinism",
    "flops",
)


@attrs.frozen
class CheckResult:
    """The outcome of one check on one part.

    Attributes:
        name: the check (one of :data:`CHECK_NAMES`).
        status: ``passed``, ``failed`` or ``not_applicable``.
        message: for a failure, what differed, where and by how much; for ``not_applicable``,
            why the check does not apply; for a pass, what was checked.
    """

    name: str
    status: Status
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def passed(name: str, message: str = "") -> CheckResult:
    return CheckResult(name, "passed", message)


def failed(name: str, message: str) -> CheckResult:
    return CheckResult(name, "failed", message)


def not_applicable(name: str, message: str) -> CheckResult:
    return CheckResult(name, "not_applicable", message)
