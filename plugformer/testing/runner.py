"""Run the kit's checks on a part: one function per check, and :func:`run_checks` for all."""

from __future__ import annotations

import time
from typing import Callable, Iterable, Optional

import attrs
import torch

from plugformer.registry.registry import Registry
from plugformer.registry.spec import Spec
from plugformer.testing import checks_attention, checks_common, checks_model
from plugformer.testing.result import CHECK_NAMES, CheckResult, failed
from plugformer.testing.subject import Subject, first_line, subject

Check = Callable[[Subject], CheckResult]


def _implementation(name: str, kind: str) -> Check:
    alone = checks_attention if kind == "attention" else checks_common
    return getattr(alone, name, None) or getattr(checks_model, name)


def run_check(name: str, spec: str | Spec, kind: Optional[str] = None, *,
              registry: Optional[Registry] = None) -> CheckResult:
    """Run the check ``name`` (one of :data:`CHECK_NAMES`) on a part.

    A part that raises while being checked fails the check with the exception in the message.

    Raises:
        ValueError: ``name`` is not a check.
        LookupError: the part is not registered (see :func:`~plugformer.testing.subject.subject`).
    """
    if name not in CHECK_NAMES:
        raise ValueError(f"unknown check {name!r}; checks: {', '.join(CHECK_NAMES)}")
    part = subject(spec, kind, registry=registry)
    state = torch.random.get_rng_state()
    try:
        return _implementation(name, part.kind)(part)
    except Exception as err:  # the part under test raised: that is the finding
        return failed(name, f"{part.label} raised {first_line(err)}")
    finally:
        torch.random.set_rng_state(state)


@attrs.frozen
class TimedResult:
    """A check's result and how long it took (seconds)."""

    result: CheckResult
    seconds: float


def run_checks(spec: str | Spec, kind: Optional[str] = None, *, registry: Optional[Registry] = None,
               checks: Optional[Iterable[str]] = None) -> list[TimedResult]:
    """Every check (or those named in ``checks``) on one part, in :data:`CHECK_NAMES` order."""
    names = CHECK_NAMES if checks is None else tuple(checks)
    out = []
    for name in names:
        start = time.perf_counter()
        result = run_check(name, spec, kind, registry=registry)
        out.append(TimedResult(result, time.perf_counter() - start))
    return out


def shapes_dtypes(spec: str | Spec, kind: Optional[str] = None, *, registry: Optional[Registry] = None) -> CheckResult:
    """Output shapes and input dtype kept, float32 and bfloat16, outputs finite (attention: self,
    grouped kv heads, cross Lq < Lk; a score bias's (H, *shape)); parameters built in the dtype asked for."""
    return run_check("shapes_dtypes", spec, kind, registry=registry)


def masked_rows_finite(spec: str | Spec, kind: Optional[str] = None, *, registry: Optional[Registry] = None) -> CheckResult:
    """A query row with every key masked (full masks and (B, 1, 1, Lk) key padding) gives zeros,
    never NaN or Inf, forward and backward."""
    return run_check("masked_rows_finite", spec, kind, registry=registry)


def gradients_reach_parameters(spec: str | Spec, kind: Optional[str] = None, *, registry: Optional[Registry] = None) -> CheckResult:
    """Every parameter of the part gets a finite gradient, nonzero somewhere; its inputs finite ones."""
    return run_check("gradients_reach_parameters", spec, kind, registry=registry)


def causality(spec: str | Spec, kind: Optional[str] = None, *, registry: Optional[Registry] = None) -> CheckResult:
    """Changing the tokens from any position t on leaves every output before t unchanged (within
    1e-6) and moves those from t on: in a causal LM, an encoder-decoder's decoder, a kernel alone."""
    return run_check("causality", spec, kind, registry=registry)


def cached_decoding(spec: str | Spec, kind: Optional[str] = None, *, registry: Optional[Registry] = None) -> CheckResult:
    """Decoding with KV caches (prefill, then one token a step) equals one full pass, in an LM and
    an encoder-decoder; generation sessions with and without caches agree, prompts padded or not."""
    return run_check("cached_decoding", spec, kind, registry=registry)


def padding_invariance(spec: str | Spec, kind: Optional[str] = None, *, registry: Optional[Registry] = None) -> CheckResult:
    """A row padded on the left or the right (padding masked) equals the row alone, in an LM and an
    encoder-decoder; pads' contents move no real output; greedy generation equals each prompt alone."""
    return run_check("padding_invariance", spec, kind, registry=registry)


def kernel_swap(spec: str | Spec, kind: Optional[str] = None, *, registry: Optional[Registry] = None) -> CheckResult:
    """A model with this kernel and one with ``dense`` load each other's weights (``kernel.`` keys excepted)."""
    return run_check("kernel_swap", spec, kind, registry=registry)


def state_dict_roundtrip(spec: str | Spec, kind: Optional[str] = None, *, registry: Optional[Registry] = None) -> CheckResult:
    """``load_state_dict`` (the part alone and in a model) and ``plugformer.save``/``load`` give identical outputs."""
    return run_check("state_dict_roundtrip", spec, kind, registry=registry)


def gradcheck(spec: str | Spec, kind: Optional[str] = None, *, registry: Optional[Registry] = None) -> CheckResult:
    """``torch.autograd.gradcheck`` in float64 at small sizes."""
    return run_check("gradcheck", spec, kind, registry=registry)


def compile_fullgraph(spec: str | Spec, kind: Optional[str] = None, *, registry: Optional[Registry] = None) -> CheckResult:
    """``torch.compile(fullgraph=True)`` (backend ``eager``: dynamo's tracing only) traces the part and matches eager."""
    return run_check("compile_fullgraph", spec, kind, registry=registry)


def capabilities(spec: str | Spec, kind: Optional[str] = None, *, registry: Optional[Registry] = None) -> CheckResult:
    """Declared capabilities work when tried; undeclared ones are refused at build time."""
    return run_check("capabilities", spec, kind, registry=registry)


def determinism(spec: str | Spec, kind: Optional[str] = None, *, registry: Optional[Registry] = None) -> CheckResult:
    """The same seed gives the same weights and bit-identical outputs."""
    return run_check("determinism", spec, kind, registry=registry)


def flops(spec: str | Spec, kind: Optional[str] = None, *, registry: Optional[Registry] = None) -> CheckResult:
    """``compare``'s FLOP count of a forward pass equals a count of the matrix products it runs."""
    return run_check("flops", spec, kind, registry=registry)
