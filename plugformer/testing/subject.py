"""The part under test: its spec resolved against a registry, and the small modules and models
the checks build around it.

Sizes are small on purpose (d_model 32, 4 heads, 2 layers, vocab 64): every check runs in well
under a second on a CPU for the built-in parts.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import attrs
import torch
from torch import nn

from plugformer.registry.builder import build, build_part
from plugformer.registry.resolver import PART_KINDS
from plugformer.registry.errors import SpecError
from plugformer.registry.registry import Registry, default_registry
from plugformer.registry.spec import Spec, parse
from plugformer.testing.result import CheckResult, failed, passed

D_MODEL = 32
HEADS = 4
VOCAB = 64
MAX_LEN = 256  # gpt_tiny's own: bra's defaults (region 64, topk 4) need 256 positions

#: The slot of ``gpt_tiny`` that takes a part of each kind.
MODEL_SLOTS = {"attention": "attn", "positional": "pe", "feedforward": "ffn", "norm": "norm", "block": "block"}


@attrs.frozen
class Subject:
    """A part to check.

    Attributes:
        kind: attention, positional, feedforward, norm or block.
        spec: its spec, as written (defaults are filled in when it is built).
        registry: where its name is looked up.
    """

    kind: str
    spec: Spec
    registry: Registry = attrs.field(eq=False)

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.spec}"

    def build(self, *, seed: int = 0, **context: Any) -> nn.Module:
        """The part alone at the kit's sizes (``context`` overrides BuildContext fields), eval mode."""
        fields = {"d_model": D_MODEL, "heads": HEADS, **context}
        torch.manual_seed(seed)
        return build_part(self.kind, self.spec, registry=self.registry, **fields).eval()

    def model_spec(self, **model_args: Any) -> Spec:
        """``gpt_tiny`` at the kit's sizes with this part in its slot."""
        args = {"d_model": D_MODEL, "heads": HEADS, "layers": 2, "vocab": VOCAB, "max_len": MAX_LEN,
                MODEL_SLOTS[self.kind]: self.spec, **model_args}
        if self.kind == "positional" and "attn" not in model_args:
            args["attn"] = Spec("dense")  # takes every kind of positional hook
        return Spec("gpt_tiny", list(args.items()))

    def model(self, *, seed: int = 0, dtype: Optional[torch.dtype] = None, **model_args: Any) -> nn.Module:
        """A causal LM (``gpt_tiny``) built around the part, eval mode, weights from ``seed``."""
        torch.manual_seed(seed)
        return build(self.model_spec(**model_args), registry=self.registry, dtype=dtype).eval()

    def encdec_spec(self, **model_args: Any) -> Spec:
        """``transformer_tiny`` at the kit's sizes with this part in its slot (encoder and decoder)."""
        args = {"d_model": D_MODEL, "heads": HEADS, "layers": 2, "vocab": VOCAB, "max_len": MAX_LEN,
                MODEL_SLOTS[self.kind]: self.spec, **model_args}
        if self.kind == "positional" and "attn" not in model_args:
            args["attn"] = Spec("dense")
        return Spec("transformer_tiny", list(args.items()))

    def encdec(self, *, seed: int = 0, **model_args: Any) -> nn.Module:
        """An encoder-decoder (``transformer_tiny``) built around the part, eval mode, weights from
        ``seed``; cross-attention is ``dense`` where the kernel refuses to attend across sequences."""
        if self.kind == "attention" and "cross_attn" not in model_args and not self.attends_across():
            model_args["cross_attn"] = Spec("dense")
        torch.manual_seed(seed)
        return build(self.encdec_spec(**model_args), registry=self.registry).eval()

    def attends_across(self) -> bool:
        """Whether the kernel builds as cross-attention (``local`` windows refuse: a window means
        nothing across two sequences)."""
        try:
            build_part(self.kind, self.spec, registry=self.registry, d_model=D_MODEL, heads=HEADS,
                       cross=True, decoder=True, device="meta")
        except SpecError:
            return False
        return True

    def causal_refusal(self) -> Optional[str]:
        """Why this spec cannot be built for causal attention (``bra(routing='region')``), or None."""
        if self.kind != "attention":
            return None
        try:
            build_part(self.kind, self.spec, registry=self.registry, d_model=D_MODEL, heads=HEADS,
                       causal=True, device="meta")
        except SpecError as err:
            return str(err).splitlines()[0]
        return None

    @property
    def causal(self) -> bool:
        """Whether the part declares ``supports_causal`` and this spec of it builds causal."""
        return self.capability("supports_causal") and self.causal_refusal() is None

    def capability(self, name: str) -> bool:
        """A declared ``supports_*`` / ``uses_*`` flag of the part (False when undeclared)."""
        return bool(self.registry.get(self.kind, self.spec.name).capabilities.get(name, False))


def subject(spec: str | Spec, kind: Optional[str] = None, *, registry: Optional[Registry] = None) -> Subject:
    """The part named by ``spec`` (a spec string, a registered name or a :class:`Spec`).

    ``kind`` may be left out when the name is registered under one part kind only.

    Raises:
        LookupError: the name is not registered, or under several kinds and ``kind`` is None.
        ValueError: ``kind`` is not a part kind (models and tasks are not checked by the kit).
    """
    registry = registry or default_registry()
    parsed = spec if isinstance(spec, Spec) else parse(spec)
    if kind is None:
        kinds = [k for k in PART_KINDS if (k, parsed.name) in registry]
        if len(kinds) != 1:
            found = ", ".join(f"{k}:{parsed.name}" for k in kinds) or "none"
            raise LookupError(
                f"cannot tell the kind of {parsed.name!r} (registered as: {found}); "
                f"pass kind= one of {', '.join(PART_KINDS)}"
            )
        kind = kinds[0]
    if kind not in PART_KINDS:
        raise ValueError(f"the kit checks parts of kinds {', '.join(PART_KINDS)}, not {kind!r}")
    registry.get(kind, parsed.name)  # UnknownPartError (a LookupError) with suggestions
    return Subject(kind, parsed, registry)


def max_difference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, tuple[int, ...]]:
    """The largest absolute difference of two same-shaped tensors and where it is."""
    diff = (a.double() - b.double()).abs()
    same_nan = a.isnan() & b.isnan()
    diff = torch.nan_to_num(diff, nan=float("inf")).masked_fill(same_nan, 0.0)
    flat = int(diff.argmax())
    return float(diff.flatten()[flat]), tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))


def gradient_result(name: str, params: dict[str, nn.Parameter]) -> CheckResult:
    """Passed when every parameter of ``params`` holds a finite gradient that is nonzero somewhere."""
    missing = [key for key, p in params.items() if p.grad is None]  # also when nothing required grad
    if missing:
        return failed(name, f"no gradient reaches {', '.join(missing)}")
    zero = [key for key, p in params.items() if not p.grad.abs().any()]
    if zero:
        return failed(name, f"the gradient of {', '.join(zero)} is zero everywhere")
    bad = [key for key, p in params.items() if not torch.isfinite(p.grad).all()]
    if bad:
        return failed(name, f"NaN/Inf gradient in {', '.join(bad)}")
    return passed(name, f"all {len(params)} parameters get a finite, nonzero gradient")


def first_line(err: BaseException) -> str:
    """``Type: first line of the message``, for one-line reports of an exception."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0].rstrip(',:') if text else ''}"


def jacobian_gap(fn: Callable[..., Any], inputs: tuple[torch.Tensor, ...], eps: float = 1e-6) -> str:
    """Where the analytic and central-difference Jacobians of ``fn`` (float64) differ most:
    ``output i w.r.t. input j: analytic a vs numerical n at (out index, in index)``."""
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    worst = (-1.0, "")
    for j, x in enumerate(inputs):
        flat = x.detach().flatten()
        for i, out in enumerate(outs):
            if not out.requires_grad:
                continue
            rows = [torch.autograd.grad(out.flatten()[r], x, retain_graph=True, allow_unused=True)[0]
                    for r in range(out.numel())]
            analytic = torch.stack([torch.zeros_like(flat) if g is None else g.flatten() for g in rows])  # (N_out, N_in)
            numerical = torch.empty_like(analytic)
            for c in range(flat.numel()):
                shifted = [t.detach().clone() for t in inputs]
                shifted[j].view(-1)[c] += eps
                up = _pick(fn(*shifted), i).clone()  # an output may be the input itself
                shifted[j].view(-1)[c] -= 2 * eps
                down = _pick(fn(*shifted), i)
                numerical[:, c] = ((up - down) / (2 * eps)).detach().flatten()
            gap = (analytic - numerical).abs()
            index = int(gap.argmax())
            row, col = divmod(index, gap.shape[1])
            if float(gap.max()) > worst[0]:
                worst = (float(gap.max()), f"output {i} w.r.t. input {j}: analytic {float(analytic[row, col]):.6g} vs "
                                           f"numerical {float(numerical[row, col]):.6g} (gap {float(gap.max()):.3g}) at "
                                           f"output element {row}, input element {col}")
    return worst[1]


def _pick(outs: Any, i: int) -> torch.Tensor:
    return outs[i] if isinstance(outs, tuple) else outs
