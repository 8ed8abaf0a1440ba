"""The shared vocabulary of ``nn.Transformer`` conversions: what a transformer is made of
(:class:`TransformerLayout`) and how ``nn.Transformer``'s state-dict keys map to a
:class:`~plugformer.core.stack.Seq2SeqStack`'s and back (``in_proj`` split into q/k/v).
:mod:`plugformer.interop.torch_transformer` reads models into a layout and converts.
"""

from __future__ import annotations

from typing import Iterable, Literal

import attrs
import torch
from torch import Tensor

from plugformer.registry.spec import Spec

__all__ = ["Activation", "TransformerLayout", "state_from_torch", "state_to_torch", "uniform"]

Activation = Literal["relu", "gelu"]

#: Submodule names of ``nn.TransformerEncoderLayer`` / ``DecoderLayer`` -> ours, per stack.
_RENAMES = {
    "encoder": {
        "self_attn": "self_attn", "linear1": "ffn.up_proj", "linear2": "ffn.down_proj",
        "norm1": "self_attn_norm", "norm2": "ffn_norm",
    },
    "decoder": {
        "self_attn": "self_attn", "multihead_attn": "cross_attn", "linear1": "ffn.up_proj",
        "linear2": "ffn.down_proj", "norm1": "self_attn_norm", "norm2": "cross_attn_norm",
        "norm3": "ffn_norm",
    },
}
_QKV = ("q_proj", "k_proj", "v_proj")


@attrs.frozen(kw_only=True)
class TransformerLayout:
    """What an ``nn.Transformer`` is made of, as both sides of the conversion read it.

    ``attn_bias``, ``ffn_bias`` and ``norm_bias`` are one flag (``bias``) in ``nn.Transformer``;
    a plugformer stack may set them apart, which only :func:`from_torch` can represent.
    """

    d_model: int
    heads: int
    enc_layers: int
    dec_layers: int
    d_ff: int
    activation: Activation
    norm_first: bool
    eps: float
    attn_bias: bool
    ffn_bias: bool
    norm_bias: bool
    dropout: float
    enc_final_norm: bool = True
    dec_final_norm: bool = True

    def spec(self, attn: str | Spec = "fused") -> Spec:
        """The ``encdec`` spec whose ``.stack`` has this layout (``pe=none``; vocab left default)."""
        parts = {
            "attn": attn,
            "pe": Spec("none"),
            "ffn": Spec(self.activation, {"d_ff": self.d_ff, "bias": self.ffn_bias}),
            "norm": Spec("layernorm", {"eps": self.eps, "bias": self.norm_bias}),
            "block": Spec("pre_ln" if self.norm_first else "post_ln"),
        }
        return Spec("encdec", {
            "d_model": self.d_model, "heads": self.heads, "enc_layers": self.enc_layers,
            "dec_layers": self.dec_layers, "dropout": self.dropout, **parts,
            "final_norm": self.enc_final_norm, "bias": self.attn_bias,
        })


def state_from_torch(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``nn.Transformer`` state-dict keys -> ours; ``in_proj`` rows [q; k; v] split in three."""
    out = {}
    for key, value in state.items():
        stack, rest = key.split(".", 1)
        if not rest.startswith("layers."):  # encoder.norm.*, decoder.norm.*
            out[key] = value
            continue
        _, index, module, param = rest.split(".", 3)
        prefix = f"{stack}.layers.{index}.{_RENAMES[stack][module]}"
        if param.startswith("in_proj_"):  # in_proj_weight (3E, E), in_proj_bias (3E)
            tensor = param.removeprefix("in_proj_")
            for name, rows in zip(_QKV, value.chunk(3)):
                out[f"{prefix}.{name}.{tensor}"] = rows
        else:
            out[f"{prefix}.{param}"] = value
    return out


def state_to_torch(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our state-dict keys -> ``nn.Transformer``'s; q/k/v projections stacked into ``in_proj``."""
    inverse = {stack: {ours: theirs for theirs, ours in names.items()} for stack, names in _RENAMES.items()}
    out, qkv = {}, {}
    for key, value in state.items():
        stack, rest = key.split(".", 1)
        if not rest.startswith("layers."):
            out[key] = value
            continue
        _, index, tail = rest.split(".", 2)
        module, param = tail.rsplit(".", 1)  # e.g. "self_attn.q_proj", "weight"
        owner, _, proj = module.rpartition(".")
        if proj in _QKV:
            qkv.setdefault(f"{stack}.layers.{index}.{inverse[stack][owner]}.in_proj_{param}", {})[proj] = value
        elif proj == "out_proj":
            out[f"{stack}.layers.{index}.{inverse[stack][owner]}.out_proj.{param}"] = value
        else:
            out[f"{stack}.layers.{index}.{inverse[stack][module]}.{param}"] = value
    for key, parts in qkv.items():
        out[key] = torch.cat([parts[name] for name in _QKV])  # rows [q; k; v]
    return out


def uniform(what: str, values: Iterable):
    """The one value every layer has, or a ValueError listing the different ones."""
    distinct = list(dict.fromkeys(values))
    if len(distinct) != 1:
        raise ValueError(f"{what} differs across layers ({distinct}); the conversion needs one value")
    return distinct[0]
