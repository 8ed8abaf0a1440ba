"""``gpt_tiny``-shaped ``lm`` models <-> Hugging Face ``GPT2LMHeadModel``.

The shape (Radford et al., 2019): learned absolute positions, pre-norm blocks with LayerNorm
(gain and bias), multi-head attention with biases, a GELU feed-forward with biases, a final
LayerNorm, and (usually) a tied head. GPT-2's ``Conv1D`` stores weights as (in, out), the
transpose of ``nn.Linear``, and fuses q, k and v into one ``c_attn``; both are undone here.

GELU: GPT-2 was trained with the tanh approximation (Hugging Face's ``gelu_new``), which is
``gelu(approximate='tanh')`` here; an exact ``gelu`` maps to ``activation_function='gelu'``.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from plugformer.interop.hf_common import (
    InteropError, check_lm, exported_embeddings, imported_embeddings, instantiate,
    is_tied, one_value, require_transformers, shared_config, spec_float, spec_part,
)
from plugformer.plugins.feedforward import FeedForwardNetwork
from plugformer.plugins.norms import LayerNorm
from plugformer.plugins.positional import LearnedPositions
from plugformer.registry.builder import build
from plugformer.registry.registry import Registry

TARGET = "GPT-2 (GPT2LMHeadModel)"

#: Hugging Face ``activation_function`` -> our ``gelu(approximate=...)``. Export writes the
#: first name of each.
_ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}
_EXPORTED_ACTIVATION = {"tanh": "gelu_new", "none": "gelu"}

#: Our names inside a block -> GPT-2's, for what maps without reshaping.
_LAYER_KEYS = {
    "self_attn.out_proj": "attn.c_proj",
    "ffn.up_proj": "mlp.c_fc",
    "ffn.down_proj": "mlp.c_proj",
    "self_attn_norm": "ln_1",
    "ffn_norm": "ln_2",
}
_TRANSPOSED = ("attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def gpt2_config(model: nn.Module) -> Any:
    """The ``transformers.GPT2Config`` of ``model``.

    Raises:
        InteropError: a part with no GPT-2 counterpart, named in the message.
        ImportError: transformers is not installed.
    """
    transformers = require_transformers()
    check_lm(model, TARGET)
    pe = model.decoder.pe
    if not isinstance(pe, LearnedPositions):
        raise InteropError(f"positional encoding {spec_part(model, 'pe', pe)} has no {TARGET} counterpart; it needs learned")
    layers = model.decoder.layers
    for i, layer in enumerate(layers):
        attn, ffn = layer.self_attn, layer.ffn
        if attn.kv_heads != attn.heads:
            raise InteropError(
                f"grouped-query attention (kv_heads={attn.kv_heads} < heads={attn.heads}) has no "
                f"{TARGET} counterpart"
            )
        if attn.q_proj.bias is None:
            raise InteropError(f"attention without biases (bias=false) has no {TARGET} counterpart")
        if type(ffn) is not FeedForwardNetwork or type(ffn.activation) is not nn.GELU:
            raise InteropError(
                f"feed-forward {spec_part(model, 'ffn', ffn)} (layer {i}) has no {TARGET} counterpart; it needs gelu"
            )
        if ffn.up_proj.bias is None:
            raise InteropError(f"feed-forward {spec_part(model, 'ffn', ffn)} without biases has no {TARGET} counterpart")
    norms = [m for layer in layers for m in (layer.self_attn_norm, layer.ffn_norm)] + [model.decoder.norm]
    for norm in norms:
        if type(norm) is not LayerNorm or norm.bias is None:
            raise InteropError(
                f"norm {spec_part(model, 'norm', norm)} has no {TARGET} counterpart; it needs layernorm with a bias"
            )
    d_model = model.embed.weight.shape[1]
    dropout = model.decoder.dropout.p
    approximate = one_value([layer.ffn.activation.approximate for layer in layers], "gelu approximate", TARGET)
    return transformers.GPT2Config(
        vocab_size=model.embed.num_embeddings,
        n_positions=pe.weight.shape[0],
        n_embd=d_model,
        n_layer=len(layers),
        n_head=layers[0].self_attn.heads,
        n_inner=one_value([layer.ffn.up_proj.out_features for layer in layers], "ffn d_ff", TARGET),
        activation_function=_EXPORTED_ACTIVATION[approximate],
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        layer_norm_epsilon=one_value([norm.eps for norm in norms], "layernorm eps", TARGET),
        **shared_config(model),
    )


def to_gpt2(model: nn.Module) -> nn.Module:
    """A ``GPT2LMHeadModel`` computing the same logits as ``model`` (same dtype and device)."""
    return instantiate("GPT2LMHeadModel", gpt2_config(model), model, _hf_state(model))


def from_gpt2(hf_model: nn.Module, *, registry: Optional[Registry] = None) -> nn.Module:
    """Our ``lm`` computing the same logits as a ``GPT2LMHeadModel`` (float32, on CPU).

    Raises:
        InteropError: a config setting with no counterpart here (cross-attention, attention
            scaled by layer index or not at all, another activation).
    """
    model = build(gpt2_spec(hf_model.config), registry=registry)
    model.load_state_dict(_our_state(hf_model.state_dict(), model), strict=True)
    return model.eval()


def gpt2_spec(config: Any) -> str:
    """The ``lm`` spec text for a ``GPT2Config``. Dropout is ``resid_pdrop`` (we have one rate)."""
    if config.activation_function not in _ACTIVATIONS:
        raise InteropError(
            f"GPT-2 activation_function {config.activation_function!r} has no counterpart; "
            f"gelu maps {sorted(_ACTIVATIONS)}"
        )
    for flag, wanted in (
        ("add_cross_attention", False), ("scale_attn_by_inverse_layer_idx", False), ("scale_attn_weights", True)
    ):
        if bool(getattr(config, flag, wanted)) != wanted:
            raise InteropError(f"GPT-2 {flag}={not wanted} has no counterpart here")
    d_ff = config.n_inner if config.n_inner is not None else 4 * config.n_embd
    pad = "none" if config.pad_token_id is None else str(config.pad_token_id)
    approximate = _ACTIVATIONS[config.activation_function]
    tied = "true" if config.tie_word_embeddings else "false"
    return (
        f"lm(d_model={config.n_embd}, heads={config.n_head}, layers={config.n_layer}, "
        f"vocab={config.vocab_size}, max_len={config.n_positions}, "
        f"dropout={spec_float(config.resid_pdrop)}, pad_id={pad}, attn=fused, pe=learned, "
        f"ffn=gelu(d_ff={d_ff}, bias=true, approximate='{approximate}'), "
        f"norm=layernorm(eps={spec_float(config.layer_norm_epsilon)}, bias=true), block=pre_ln, "
        f"final_norm=true, tie_embeddings={tied}, bias=true)"
    )


def _hf_state(model: nn.Module) -> dict[str, Tensor]:
    """Our weights under GPT-2's names: q/k/v fused, Conv1D weights transposed."""
    ours = {name: t.detach() for name, t in model.state_dict().items()}
    table, shrink = exported_embeddings(model)
    state = {
        "transformer.wte.weight": table,
        "transformer.wpe.weight": ours["decoder.pe.weight"],
        "transformer.ln_f.weight": ours["decoder.norm.weight"] / shrink,
        "transformer.ln_f.bias": ours["decoder.norm.bias"] / shrink,
        "lm_head.weight": table if is_tied(model) else ours["lm_head.weight"],
    }
    for i in range(len(model.decoder.layers)):
        ours_at, theirs_at = f"decoder.layers.{i}.", f"transformer.h.{i}."
        for leaf in ("weight", "bias"):
            qkv = torch.cat([ours[f"{ours_at}self_attn.{p}_proj.{leaf}"] for p in "qkv"])
            state[f"{theirs_at}attn.c_attn.{leaf}"] = qkv.T.contiguous() if leaf == "weight" else qkv
            for our_name, their_name in _LAYER_KEYS.items():
                tensor = ours[f"{ours_at}{our_name}.{leaf}"]
                if leaf == "weight" and their_name in _TRANSPOSED:
                    tensor = tensor.T.contiguous()
                state[f"{theirs_at}{their_name}.{leaf}"] = tensor
    return state


def _our_state(hf_state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """GPT-2's weights under our names for ``model`` (built by :func:`gpt2_spec`)."""
    tied = is_tied(model)
    table, grow = imported_embeddings(hf_state["transformer.wte.weight"], model.embed.scale, tied)
    state = {
        "embed.weight": table,
        "decoder.pe.weight": hf_state["transformer.wpe.weight"],
        "decoder.norm.weight": hf_state["transformer.ln_f.weight"] * grow,
        "decoder.norm.bias": hf_state["transformer.ln_f.bias"] * grow,
        "lm_head.weight": table if tied else hf_state["lm_head.weight"],
    }
    d_model = model.embed.weight.shape[1]
    for i in range(len(model.decoder.layers)):
        ours_at, theirs_at = f"decoder.layers.{i}.", f"transformer.h.{i}."
        for leaf in ("weight", "bias"):
            qkv = hf_state[f"{theirs_at}attn.c_attn.{leaf}"]
            qkv = qkv.T if leaf == "weight" else qkv  # (3D, D) or (3D,)
            for p, tensor in zip("qkv", qkv.split(d_model)):
                state[f"{ours_at}self_attn.{p}_proj.{leaf}"] = tensor.contiguous()
            for our_name, their_name in _LAYER_KEYS.items():
                tensor = hf_state[f"{theirs_at}{their_name}.{leaf}"]
                if leaf == "weight" and their_name in _TRANSPOSED:
                    tensor = tensor.T.contiguous()
                state[f"{ours_at}{our_name}.{leaf}"] = tensor
    return state
