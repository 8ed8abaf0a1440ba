"""``llama_tiny``-shaped ``lm`` models <-> Hugging Face ``LlamaForCausalLM``.

The shape: pre-norm blocks with RMSNorm, SwiGLU, rotary positions over the whole head, exact
softmax attention with grouped-query heads, a final RMSNorm, tied or untied head (Touvron et al.,
2023). Key names map one to one (``self_attn.out_proj`` <-> ``self_attn.o_proj``,
``self_attn_norm`` <-> ``input_layernorm``, ``ffn`` <-> ``mlp``, ...).

Rotary layout: Hugging Face pairs feature i with i + Dh/2 (``rotate_half``); our default
``rope(layout='interleaved')`` pairs 2i with 2i+1. Exporting an interleaved model reorders the
rows of each query/key head (even features first, then odd), which rotates the same pairs in
Hugging Face's layout; importing reorders them back unless ``rope_layout='half'`` is asked for.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
from torch import Tensor, nn

from plugformer.interop.hf_common import (
    InteropError, check_lm, exported_embeddings, imported_embeddings, instantiate,
    is_tied, one_value, require_transformers, shared_config, spec_float, spec_part,
)
from plugformer.plugins.gated_ffn import GatedFeedForward
from plugformer.plugins.norms import RMSNorm
from plugformer.plugins.rope import RotaryPositions
from plugformer.registry.builder import build
from plugformer.registry.registry import Registry

TARGET = "Llama (LlamaForCausalLM)"
RopeLayout = Literal["interleaved", "half"]

#: Our names inside a block -> Hugging Face's, for the projections and norms.
_LAYER_KEYS = {
    "self_attn.q_proj": "self_attn.q_proj",
    "self_attn.k_proj": "self_attn.k_proj",
    "self_attn.v_proj": "self_attn.v_proj",
    "self_attn.out_proj": "self_attn.o_proj",
    "ffn.gate_proj": "mlp.gate_proj",
    "ffn.up_proj": "mlp.up_proj",
    "ffn.down_proj": "mlp.down_proj",
    "self_attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def llama_config(model: nn.Module) -> Any:
    """The ``transformers.LlamaConfig`` of ``model``.

    Raises:
        InteropError: a part with no Llama counterpart, named in the message.
        ImportError: transformers is not installed.
    """
    transformers = require_transformers()
    check_lm(model, TARGET)
    pe = model.decoder.pe
    if not isinstance(pe, RotaryPositions):
        raise InteropError(f"positional encoding {spec_part(model, 'pe', pe)} has no {TARGET} counterpart; it needs rope")
    if pe.rotary_dim != pe.head_dim:
        raise InteropError(
            f"rope(fraction=...) rotating {pe.rotary_dim} of {pe.head_dim} features has no {TARGET} "
            "counterpart; Llama rotates the whole head"
        )
    layers = model.decoder.layers
    for i, layer in enumerate(layers):
        ffn = layer.ffn
        if type(ffn) is not GatedFeedForward or type(ffn.activation) is not nn.SiLU:
            part = spec_part(model, "ffn", ffn)
            raise InteropError(f"feed-forward {part} (layer {i}) has no {TARGET} counterpart; it needs swiglu")
    norms = [m for layer in layers for m in (layer.self_attn_norm, layer.ffn_norm)] + [model.decoder.norm]
    for norm in norms:
        if type(norm) is not RMSNorm:
            raise InteropError(f"norm {spec_part(model, 'norm', norm)} has no {TARGET} counterpart; it needs rmsnorm")
    attn = layers[0].self_attn
    spec_args = dict(getattr(getattr(model, "spec", None), "args", ()))
    return transformers.LlamaConfig(
        vocab_size=model.embed.num_embeddings,
        hidden_size=model.embed.weight.shape[1],
        intermediate_size=one_value([layer.ffn.up_proj.out_features for layer in layers], "ffn d_ff", TARGET),
        num_hidden_layers=len(layers),
        num_attention_heads=attn.heads,
        num_key_value_heads=attn.kv_heads,
        head_dim=attn.head_dim,
        hidden_act="silu",
        max_position_embeddings=spec_args.get("max_len", 2048),
        rms_norm_eps=one_value([norm.eps for norm in norms], "rmsnorm eps", TARGET),
        rope_theta=pe.base,
        attention_bias=one_value([layer.self_attn.q_proj.bias is not None for layer in layers], "bias", TARGET),
        mlp_bias=one_value([layer.ffn.up_proj.bias is not None for layer in layers], "ffn bias", TARGET),
        attention_dropout=model.decoder.dropout.p,
        **shared_config(model),
    )


def to_llama(model: nn.Module) -> nn.Module:
    """A ``LlamaForCausalLM`` computing the same logits as ``model`` (same dtype and device)."""
    return instantiate("LlamaForCausalLM", llama_config(model), model, _hf_state(model))


def from_llama(
    hf_model: nn.Module, *, rope_layout: RopeLayout = "interleaved", registry: Optional[Registry] = None
) -> nn.Module:
    """Our ``lm`` computing the same logits as a ``LlamaForCausalLM`` (float32, on CPU).

    Args:
        hf_model: the Hugging Face model.
        rope_layout: the rope layout of the result; 'interleaved' (our default) reorders the
            query/key rows, 'half' keeps them as Hugging Face stores them.
        registry: the registry to build from (default: the default registry).

    Raises:
        InteropError: a config setting with no counterpart here (rope scaling, another
            activation, a head_dim other than hidden_size / heads).
    """
    config = hf_model.config
    model = build(llama_spec(config, rope_layout), registry=registry)
    model.load_state_dict(_our_state(hf_model.state_dict(), model), strict=True)
    return model.eval()


def llama_spec(config: Any, rope_layout: RopeLayout = "interleaved") -> str:
    """The ``lm`` spec text for a ``LlamaConfig``."""
    heads = config.num_attention_heads
    if config.hidden_act != "silu":
        raise InteropError(f"Llama hidden_act {config.hidden_act!r} has no counterpart; swiglu uses 'silu'")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if head_dim * heads != config.hidden_size:
        raise InteropError(
            f"Llama head_dim {head_dim} with {heads} heads != hidden_size {config.hidden_size}; "
            "our lm has head_dim = d_model / heads"
        )
    if rope_layout not in ("interleaved", "half"):
        raise ValueError(f"rope_layout must be 'interleaved' or 'half', got {rope_layout!r}")
    theta = _rope_theta(config)
    pad = "none" if config.pad_token_id is None else str(config.pad_token_id)
    return (
        f"lm(d_model={config.hidden_size}, heads={heads}, kv_heads={config.num_key_value_heads}, "
        f"layers={config.num_hidden_layers}, vocab={config.vocab_size}, "
        f"max_len={config.max_position_embeddings}, dropout={spec_float(config.attention_dropout)}, "
        f"pad_id={pad}, attn=fused, pe=rope(base={spec_float(theta)}, layout='{rope_layout}'), "
        f"ffn=swiglu(d_ff={config.intermediate_size}, bias={_bool(config.mlp_bias)}), "
        f"norm=rmsnorm(eps={spec_float(config.rms_norm_eps)}), block=pre_ln, final_norm=true, "
        f"tie_embeddings={_bool(config.tie_word_embeddings)}, bias={_bool(config.attention_bias)})"
    )


def _rope_theta(config: Any) -> float:
    """rope_theta from ``rope_parameters`` (transformers 5) or ``rope_theta`` (4.x); an error
    for any rope scaling (linear, dynamic, YaRN, llama3), which our rope does not do."""
    params = getattr(config, "rope_parameters", None)
    if params:
        theta, kind = params["rope_theta"], params.get("rope_type", "default")
    else:
        scaling = getattr(config, "rope_scaling", None) or {}
        theta, kind = config.rope_theta, scaling.get("rope_type", scaling.get("type", "default"))
    if kind != "default":
        raise InteropError(f"Llama rope scaling {kind!r} has no counterpart; our rope is unscaled")
    if getattr(config, "partial_rotary_factor", 1.0) != 1.0:
        raise InteropError("Llama partial_rotary_factor != 1 has no counterpart here")
    return float(theta)


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _half_order(head_dim: int) -> Tensor:
    """Feature order of a head in the 'half' layout, from the 'interleaved' one: evens, odds."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def _reorder_heads(x: Tensor, head_dim: int, order: Tensor) -> Tensor:
    """Rows (H * Dh, ...) -> the same with each head's Dh rows taken in ``order``."""
    return x.unflatten(0, (-1, head_dim))[:, order].flatten(0, 1)


def _hf_state(model: nn.Module) -> dict[str, Tensor]:
    """Our weights under Llama's names, rows reordered for rope and embeddings scaled."""
    ours = {name: t.detach() for name, t in model.state_dict().items()}
    pe = model.decoder.pe
    order = _half_order(pe.head_dim) if pe.layout == "interleaved" else None
    table, shrink = exported_embeddings(model)
    state = {"model.embed_tokens.weight": table, "model.norm.weight": ours["decoder.norm.weight"] / shrink}
    state["lm_head.weight"] = table if is_tied(model) else ours["lm_head.weight"]
    for i in range(len(model.decoder.layers)):
        for name, tensor in ours.items():
            prefix = f"decoder.layers.{i}."
            if not name.startswith(prefix):
                continue
            module, _, leaf = name[len(prefix):].rpartition(".")
            if order is not None and module in ("self_attn.q_proj", "self_attn.k_proj"):
                tensor = _reorder_heads(tensor, pe.head_dim, order)
            state[f"model.layers.{i}.{_LAYER_KEYS[module]}.{leaf}"] = tensor
    return state


def _our_state(hf_state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Llama's weights under our names for ``model`` (built by :func:`llama_spec`)."""
    pe = model.decoder.pe
    order = torch.argsort(_half_order(pe.head_dim)) if pe.layout == "interleaved" else None
    tied = is_tied(model)
    table, grow = imported_embeddings(hf_state["model.embed_tokens.weight"], model.embed.scale, tied)
    state = {"embed.weight": table, "decoder.norm.weight": hf_state["model.norm.weight"] * grow}
    state["lm_head.weight"] = table if tied else hf_state["lm_head.weight"]
    renames = {theirs: ours for ours, theirs in _LAYER_KEYS.items()}
    for name, tensor in hf_state.items():
        if not name.startswith("model.layers."):
            continue
        i, _, rest = name[len("model.layers."):].partition(".")
        module, _, leaf = rest.rpartition(".")
        ours = renames[module]
        if order is not None and ours in ("self_attn.q_proj", "self_attn.k_proj"):
            tensor = _reorder_heads(tensor, pe.head_dim, order)
        state[f"decoder.layers.{i}.{ours}.{leaf}"] = tensor
    return state
