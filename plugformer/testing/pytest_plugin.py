"""The pytest plugin of the conformance kit, registered through the ``pytest11`` entry point.

A plugin author writes, in any test module::

    from plugformer.testing import conformance_tests
    test_my_kernel = conformance_tests("attention", "mine")

and pytest collects one test per check, ``test_my_kernel[causality]`` and so on; a check that
does not apply is skipped with the reason. The parts are looked up in the registry the fixture
``plugformer_registry`` returns (the default registry, which loads every installed plugin);
override the fixture to check parts registered in a test registry.

pytest imports this module in every run of every project that has plugformer installed, so it
imports neither torch nor the registry until a test asks for them.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import pytest

MARKER = "plugformer_conformance(kind, spec, check): a conformance-kit test of one part"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)


@pytest.fixture
def plugformer_registry() -> Any:
    """The registry conformance tests look their part up in: the default one."""
    from plugformer.registry.registry import default_registry

    return default_registry()


def conformance_tests(kind: str, spec: str, *, checks: Optional[Iterable[str]] = None) -> Callable[..., None]:
    """A pytest test function, parametrised over the kit's checks, for one part.

    Args:
        kind: the part's kind (attention, positional, feedforward, norm, block).
        spec: its name or spec, e.g. ``"mine"`` or ``"mine(window=8)"``.
        checks: run only these checks. Default: every one in ``CHECK_NAMES``.

    Assign the result to a name starting with ``test_`` in a test module. Each check passes,
    fails with the kit's message (no traceback of the kit itself) or is skipped with the reason
    it does not apply.

    Raises:
        ValueError: a name in ``checks`` is not a check.
    """
    from plugformer.testing.result import CHECK_NAMES

    names = CHECK_NAMES if checks is None else tuple(checks)
    unknown = [name for name in names if name not in CHECK_NAMES]
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; checks: {', '.join(CHECK_NAMES)}")

    @pytest.mark.parametrize("check", [pytest.param(n, marks=pytest.mark.plugformer_conformance(kind, spec, n)) for n in names], ids=names)
    def test_conformance(check: str, plugformer_registry: Any) -> None:
        from plugformer.testing.runner import run_check

        result = run_check(check, spec, kind, registry=plugformer_registry)
        if result.status == "not_applicable":
            pytest.skip(f"{check} does not apply to {kind}:{spec}: {result.message}")
        if result.failed:
            pytest.fail(f"{kind}:{spec} fails {check}: {result.message}", pytrace=False)

    test_conformance.__doc__ = f"The conformance kit's checks on {kind}:{spec}."
    return test_conformance
