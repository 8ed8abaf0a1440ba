"""The conformance kit: the contract every part of plugformer must keep, as checks.

One function per check, each taking a part's spec or registered name (and its kind when the
name alone is ambiguous) and returning a :class:`CheckResult`::

    from plugformer.testing import causality
    causality("bra(region=4, topk=2)", "attention")   # CheckResult(name='causality', status='passed', ...)

Checks: shapes_dtypes, masked_rows_finite, gradients_reach_parameters, causality,
cached_decoding, padding_invariance, kernel_swap, state_dict_roundtrip, gradcheck,
compile_fullgraph, capabilities, determinism, flops (see :data:`CHECK_NAMES`). A check that
does not apply to a part (a kernel that declares ``supports_cache=False`` is not decoded with a
cache) is ``not_applicable`` and says why.

In a plugin's tests, one line gives one pytest test per check::

    from plugformer.testing import conformance_tests
    test_my_kernel = conformance_tests("attention", "mine")

This package imports torch only when a check runs: pytest imports its plugin in every run.
"""

from __future__ import annotations

from typing import Any

from plugformer.testing.pytest_plugin import conformance_tests
from plugformer.testing.result import CHECK_NAMES, CheckResult

__all__ = ["CHECK_NAMES", "CheckResult", "conformance_tests", "run_check", "run_checks", "subject", *CHECK_NAMES]

_RUNNER = frozenset({"run_check", "run_checks", *CHECK_NAMES})


def __getattr__(name: str) -> Any:
    if name in _RUNNER:
        from plugformer.testing import runner

        return getattr(runner, name)
    if name == "subject":
        from plugformer.testing.subject import subject

        return subject
    raise AttributeError(f"module 'plugformer.testing' has no attribute {name!r}")
