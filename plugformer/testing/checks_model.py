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
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from plugformer.registry.spec import Spec
from plugformer.testing import checks_attention, checks_common, checks_encdec
from plugformer.testing.result import CheckResult, failed, not_applicable, passed
from plugformer.testing.subject import HEADS, VOCAB, Subject, max_difference

ATOL = 1e-5
LENGTH = 20


def ids(batch: int = 2, length: int = LENGTH, seed: int = 0) -> Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def unfit(s: Subject, name: str) -> Optional[CheckResult]:
    """not_applicable when the part cannot sit in the kit's causal LM (a spec that refuses causal)."""
    refusal = s.causal_refusal()
    return None if refusal is None else not_applicable(name, f"checked in a causal LM, which this spec refuses: {refusal}")


def causality(s: Subject) -> CheckResult:
    """Changing the tokens from position t on, for every t, leaves the logits before t unchanged
    (within 1e-6) and moves those from t on: in the LM, in the encoder-decoder's decoder and, for
    a kernel, on q, k, v alone."""
    name = "causality"
    if unfit(s, name):
        return unfit(s, name)
    if s.kind == "attention" and not s.capability("supports_causal"):
        return not_applicable(name, "the kernel declares supports_causal=False")
    model = s.model()
    with torch.no_grad():
        found = checks_encdec.future_moves_past(name, "model", model, ids())
    if found is None and s.kind == "attention":
        found = checks_attention.kernel_causality(s)
    found = found or checks_encdec.causality(s, name)
    return found or passed(name, f"no logit before t moves (within {checks_encdec.CAUSAL_ATOL:g}) and later ones do "
                           f"when tokens t.. change, for every t: LM, encdec decoder"
                           + (", kernel alone" if s.kind == "attention" else ""))


def cached_decoding(s: Subject) -> CheckResult:
    """Prefill 5 tokens, then decode one token a step with KV caches: equal to one full pass."""
    name = "cached_decoding"
    if unfit(s, name):
        return unfit(s, name)
    if s.kind == "attention" and not s.capability("supports_cache"):
        return not_applicable(name, "the kernel declares supports_cache=False")
    x, prefill = ids(), 5
    variants = [{}] + ([{"pe": Spec("learned")}, {"pe": Spec("sinusoidal")}] if s.kind == "attention" else [])
    for args in variants:
        model = s.model(**args)
        with torch.no_grad():
            full = model(x)
            caches = model.new_caches()
            steps = [model(x[:, :prefill], caches=caches)]
            steps += [model(x[:, i:i + 1], caches=caches) for i in range(prefill, LENGTH)]
        diff, where = max_difference(torch.cat(steps, dim=1), full)
        if diff > ATOL:
            label = "".join(f", {k}={v}" for k, v in args.items())
            return failed(name, f"model{label}: cached decoding (prefill {prefill}, then one token a step) differs from "
                          f"the full pass by {diff:.3g} at position {where[1]} (batch row {where[0]})")
    found = checks_encdec.cached_decoding(s, name)
    return found or passed(name, f"prefill {prefill} + {LENGTH - prefill} one-token steps equal one pass of {LENGTH}"
                           + (" (pe default, learned, sinusoidal)" if s.kind == "attention" else "")
                           + "; encdec decoder too; sessions with and without caches agree, padded and not")


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
    model = s.model()
    rows = [ids(1, n, seed=1 + i)[0] for i, n in enumerate((LENGTH, 14, 9, 4))]
    with torch.no_grad():
        alone = [model(row[None])[0] for row in rows]
        for side in ("left", "right"):
            batch, padding = checks_encdec.padded(rows, left=side == "left")
            extra = {"left_padding": padding.sum(1)} if side == "left" else {}
            out = model(batch, key_padding_mask=padding, **extra)
            if not torch.isfinite(out).all():
                return failed(name, f"model, rows {side}-padded: NaN/Inf logits (padded positions included)")
            for i, want in enumerate(alone):
                diff, where = max_difference(out[i][~padding[i]], want)
                if diff > ATOL:
                    return failed(name, f"model, {int(padding[i].sum())} {side} pads in row {i}: its real tokens' logits "
                                  f"differ from the row alone by {diff:.3g} at real position {where[0]}")
    found = checks_encdec.lm_padding(s, name, model) or checks_encdec.encdec_padding(s, name)
    return found or passed(name, "rows of 20, 14, 9, 4 tokens padded left and right (masked) equal the rows alone, "
                           "in the LM and (sources) the encdec; pads' contents move no real logit; greedy generation "
                           "from padded batches equals each prompt alone"
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
    found = _part_roundtrip(s, name)
    if found:
        return found
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
    return passed(name, "load_state_dict (the part alone and in a model) and plugformer.save/load give identical outputs")


def _part_roundtrip(s: Subject, name: str) -> Optional[CheckResult]:
    """The part alone (attention: grouped kv heads), seed-0 weights loaded strictly into a seed-1 build."""
    if s.kind == "attention":
        kv_heads = HEADS // 2
        built = [s.build(seed=seed, kv_heads=kv_heads, causal=s.causal) for seed in (0, 1)]
        q, k, v = checks_attention.qkv(kv_heads=kv_heads)
        run = lambda m: (m(q, k, v, causal=s.causal),)  # noqa: E731
    else:
        built = [checks_common.part_module(s, seed=seed) for seed in (0, 1)]
        args = checks_common.inputs(s)
        run = lambda m: checks_common.call(s, m, args)  # noqa: E731
    built[1].load_state_dict(built[0].state_dict(), strict=True)
    with torch.no_grad():
        for i, (got, want) in enumerate(zip(run(built[1]), run(built[0]))):
            diff, where = max_difference(got, want)
            if diff > 0:
                return failed(name, f"the {s.kind} alone: output {i} differs by {diff:.3g} at {where} after "
                              f"load_state_dict (state not in the state dict?)")
    return None


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
