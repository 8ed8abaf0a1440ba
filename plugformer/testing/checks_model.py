"""Checks of a part inside a model: the kit's ``gpt_tiny`` (a causal LM, d_model 32, 2 layers)
with the part in its slot (see :meth:`Subject.model_spec`). The references are the same model
on other inputs (a shorter prefix, the row alone, a fresh build) and, for FLOPs, the matrix
products the forward pass actually runs, counted from their shapes.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from math import prod
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from plugformer.testing import checks_attention
from plugformer.testing.result import CheckResult, failed, not_applicable, passed
from plugformer.testing.subject import VOCAB, Subject, max_difference

ATOL = 1e-5
LENGTH = 20


def ids(batch: int = 2, length: int = LENGTH, seed: int = 0) -> Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def unfit(s: Subject, name: str) -> Optional[CheckResult]:
    """not_applicable when the part cannot sit in the kit's causal LM (a spec that refuses causal)."""
    refusal = s.causal_refusal()
    return None if refusal is None else not_applicable(name, f"checked in a causal LM, which this spec refuses: {refusal}")


def causality(s: Subject) -> CheckResult:
    """Changing the tokens from position t on, for every t, leaves the logits before t unchanged."""
    name = "causality"
    if unfit(s, name):
        return unfit(s, name)
    if s.kind == "attention" and not s.capability("supports_causal"):
        return not_applicable(name, "the kernel declares supports_causal=False")
    model, x = s.model(), ids()
    with torch.no_grad():
        base = model(x)
        for t in range(1, LENGTH):
            changed = x.clone()
            changed[:, t:] = (x[:, t:] + 1 + torch.arange(LENGTH - t)) % VOCAB
            diff, where = max_difference(model(changed)[:, :t], base[:, :t])
            if diff > ATOL:
                return failed(name, f"changing tokens {t}..{LENGTH - 1} moved the logits at position {where[1]} "
                              f"(batch row {where[0]}) by {diff:.3g}: position {where[1]} sees the future")
    return passed(name, f"no logit before t moves when tokens t.. change, for every t in 1..{LENGTH - 1}")


def cached_decoding(s: Subject) -> CheckResult:
    """Prefill 5 tokens, then decode one token a step with KV caches: equal to one full pass."""
    name = "cached_decoding"
    if unfit(s, name):
        return unfit(s, name)
    if s.kind == "attention" and not s.capability("supports_cache"):
        return not_applicable(name, "the kernel declares supports_cache=False")
    model, x, prefill = s.model(), ids(), 5
    with torch.no_grad():
        full = model(x)
        caches = model.new_caches()
        steps = [model(x[:, :prefill], caches=caches)]
        steps += [model(x[:, i:i + 1], caches=caches) for i in range(prefill, LENGTH)]
    diff, where = max_difference(torch.cat(steps, dim=1), full)
    if diff > ATOL:
        return failed(name, f"cached decoding (prefill {prefill}, then one token a step) differs from the full pass "
                      f"by {diff:.3g} at position {where[1]} (batch row {where[0]})")
    return passed(name, f"prefill {prefill} + {LENGTH - prefill} one-token steps equal one pass of {LENGTH}")


def padding_invariance(s: Subject) -> CheckResult:
    """A padded row's real tokens give the logits of the row alone, padded left or right."""
    name = "padding_invariance"
    if s.kind == "attention" and not s.capability("supports_mask"):
        return not_applicable(name, "the kernel declares supports_mask=False")
    if s.kind == "attention":
        kernel_result = checks_attention.kernel_padding_invariance(s)
        if kernel_result is not None:
            return kernel_result
    if unfit(s, name):
        return passed(name, "kernel: bidirectional left/right key padding (the causal LM does not apply: "
                      + s.causal_refusal() + ")")
    model, pad = s.model(), 6
    long, short, filler = ids(1, LENGTH, seed=1), ids(1, LENGTH - pad, seed=2), ids(1, pad, seed=3)
    with torch.no_grad():
        alone = {"full-length row 0": model(long)[0], "padded row 1": model(short)[0]}
        for side in ("left", "right"):
            real = slice(pad, LENGTH) if side == "left" else slice(0, LENGTH - pad)
            padded = torch.cat([filler, short] if side == "left" else [short, filler], dim=1)
            mask = torch.ones(2, LENGTH, dtype=torch.bool)
            mask[0] = False
            mask[1, real] = False
            extra = {"left_padding": torch.tensor([0, pad])} if side == "left" else {}
            out = model(torch.cat([long, padded]), key_padding_mask=mask, **extra)
            for (label, want), got in zip(alone.items(), (out[0], out[1, real])):
                diff, where = max_difference(got, want)
                if diff > ATOL:
                    return failed(name, f"model, {pad} {side} pads in row 1: the {label}'s real tokens' logits differ "
                                  f"from the row alone by {diff:.3g} at real position {where[0]}")
    return passed(name, "rows padded left and right (masked) equal the rows alone"
                  + ("; kernel: bidirectional left/right key padding too" if s.kind == "attention" else ""))


def kernel_swap(s: Subject) -> CheckResult:
    """A model with this kernel and one with ``dense`` load each other's state dicts (keys under
    ``kernel.`` excepted)."""
    name = "kernel_swap"
    if unfit(s, name):
        return unfit(s, name)
    if s.kind != "attention":
        return not_applicable(name, "only attention kernels swap under fixed projection names")
    mine, dense = s.model(), s.model(attn="dense")
    for source, target, label in ((mine, dense, "into dense"), (dense, mine, "from dense")):
        wanted = _shared(target.state_dict())
        given = _shared(source.state_dict())
        if set(wanted) != set(given):
            only = sorted(set(wanted) ^ set(given))[:4]
            return failed(name, f"loading {label}: keys outside kernel. differ: {', '.join(only)}")
        shapes = [k for k in wanted if wanted[k].shape != given[k].shape]
        if shapes:
            k = shapes[0]
            return failed(name, f"loading {label}: {k} is {tuple(given[k].shape)}, expected {tuple(wanted[k].shape)}")
        result = target.load_state_dict(given, strict=False)
        left = [k for k in (*result.missing_keys, *result.unexpected_keys) if ".kernel." not in k]
        if left:
            return failed(name, f"loading {label}: keys not loaded: {', '.join(left[:4])}")
    return passed(name, "state dicts load both ways with dense; only kernel. keys differ")


def _shared(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in state.items() if ".kernel." not in k}


def state_dict_roundtrip(s: Subject) -> CheckResult:
    """Weights from seed 0 loaded into a model built from seed 1, and through save/load: same logits."""
    from plugformer.io import load, save

    name = "state_dict_roundtrip"
    if unfit(s, name):
        return unfit(s, name)
    model, other, x = s.model(seed=0), s.model(seed=1), ids()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        want, got = model(x), other(x)
        diff, where = max_difference(got, want)
        if diff > 0:
            return failed(name, f"load_state_dict: logits differ by {diff:.3g} at {where} (state not in the state dict?)")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.safetensors"
            save(model, path, registry=s.registry)
            loaded = load(path, registry=s.registry).eval()
        diff, where = max_difference(loaded(x), want)
    if diff > 0:
        return failed(name, f"plugformer.save/load: logits differ by {diff:.3g} at {where}")
    return passed(name, "load_state_dict and plugformer.save/load give identical logits")


def determinism(s: Subject) -> CheckResult:
    name = "determinism"
    if unfit(s, name):
        return unfit(s, name)
    first, second, x = s.model(seed=0), s.model(seed=0), ids()
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        if not torch.equal(a, b):
            return failed(name, f"two builds from seed 0 differ in {key}")
    with torch.no_grad():
        outs = [first(x), first(x), second(x)]
    for label, out in (("a second pass", outs[1]), ("a second build", outs[2])):
        diff, where = max_difference(out, outs[0])
        if diff > 0:
            return failed(name, f"{label} from the same seed changes the logits by {diff:.3g} at {where}")
    return passed(name, "same seed, same weights and bit-identical logits, twice")


def flops(s: Subject) -> CheckResult:
    """``compare``'s FLOP count of a forward pass equals the matrix products it runs, counted by hand."""
    from plugformer.compare.flops import count_flops

    name = "flops"
    if unfit(s, name):
        return unfit(s, name)
    model, x = s.model(), ids()
    reported = count_flops(model, lambda m: m(x))
    with MatmulCounter() as counter, torch.no_grad():
        model(x)
    brute = sum(counter.flops.values())
    if reported != brute:
        ops = ", ".join(f"{op} {n:,}" for op, n in counter.flops.most_common())
        return failed(name, f"compare reports {reported:,} forward FLOPs; the matrix products run count {brute:,} ({ops})")
    return passed(name, f"{reported:,} forward FLOPs, equal to the products run by hand-count ({len(counter.flops)} kinds of op)")


class MatmulCounter(TorchDispatchMode):
    """Counts 2 * multiply-adds of every matrix product (mm, bmm, addmm, baddbmm, attention,
    convolution) reaching the dispatcher, from the shapes of its operands; ``flops`` by op name."""

    def __init__(self) -> None:
        super().__init__()
        self.flops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        count = _product_flops(func.__name__.split(".")[0], args, out)
        if count:
            self.flops[func.__name__.split(".")[0]] += count
        return out


def _product_flops(op: str, args: tuple, out) -> Optional[int]:
    if op in ("mm", "addmm", "bmm", "baddbmm"):
        a, b = (args[1], args[2]) if op.startswith(("addmm", "baddbmm")) else (args[0], args[1])
        return 2 * prod(a.shape) * b.shape[-1]
    if op.startswith("_scaled_dot_product") and not op.endswith("backward"):
        q, k, v = args[:3]
        batch = prod(q.shape[:-2])
        return 2 * batch * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
    if op == "convolution":
        weight = args[1]
        result = out[0] if isinstance(out, tuple) else out
        return 2 * result.numel() * prod(weight.shape[1:])
    return None
