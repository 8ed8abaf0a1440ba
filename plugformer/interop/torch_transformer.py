"""``torch.nn.Transformer`` weights in and out.

:func:`from_torch` turns an ``nn.Transformer`` into a :class:`~plugformer.core.stack.Seq2SeqStack`
built from the library's own parts (``fused`` or any exact kernel, ``relu`` / ``gelu``,
``layernorm``, ``post_ln`` / ``pre_ln``) with the same weights; :func:`to_torch` goes back where
the parts have an ``nn.Transformer`` counterpart. Both read the model into one
:class:`TransformerLayout` first (:mod:`plugformer.interop.torch_layout`, with the state-dict key
mapping), so what converts is decided in one place and a round trip keeps
every weight.

Our stacks are batch-first whatever the source's ``batch_first``: call the result with
(batch, length, d_model) tensors and ``nn.Transformer``'s mask arguments.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from plugformer.core.attention import MultiHeadAttention
from plugformer.core.context import BuildContext
from plugformer.core.stack import Seq2SeqStack
from plugformer.interop.torch_layout import (
    Activation, TransformerLayout, state_from_torch, state_to_torch, uniform,
)
from plugformer.plugins.blocks import PostLNBlock, PreLNBlock
from plugformer.plugins.dense import DenseAttention
from plugformer.plugins.feedforward import FeedForwardNetwork
from plugformer.plugins.fused import FusedAttention
from plugformer.plugins.models import model_context, seq2seq_stack
from plugformer.registry.builder import bind, resolve
from plugformer.registry.registry import Registry, default_registry
from plugformer.registry.spec import Spec

__all__ = ["TransformerLayout", "from_torch", "read_stack", "read_torch", "to_torch"]


# ---------------------------------------------------------------------------- nn.Transformer in


def from_torch(
    transformer: nn.Transformer,
    *,
    attn: str | Spec = "fused",
    registry: Optional[Registry] = None,
) -> Seq2SeqStack:
    """A :class:`Seq2SeqStack` with the parts and weights of ``transformer``.

    Post- and pre-norm (``norm_first``), ReLU and GELU (as strings or ``F.relu`` / ``F.gelu`` /
    ``nn.ReLU()`` / exact ``nn.GELU()``), ``bias=False``, any ``layer_norm_eps`` and different
    encoder and decoder depths convert. The result is batch-first whatever
    ``transformer.batch_first`` says, lives on the same device in the same dtype, and agrees with
    ``transformer`` to float tolerance (``tests/interop/test_torch_transformer.py``).

    ``stack.spec`` is the ``encdec`` spec whose ``.stack`` has this structure (``pe=none``); it is
    ``None`` when only one of the two stacks has a final norm (a custom encoder or decoder).
    nn.Transformer has no dropout on its inputs, so the stacks' input dropout is set to 0.

    Args:
        transformer: the model to copy.
        attn: attention kernel of every attention layer, as spec text. Default: ``fused``.
        registry: where part names are looked up. Default: the default registry.

    Raises:
        TypeError: ``transformer`` is not an ``nn.Transformer`` made of the standard layers.
        ValueError: a setting with no plugformer counterpart (another activation, ``add_bias_kv``,
            LayerNorm without affine weights, layers that differ from each other).
    """
    layout = read_torch(transformer)
    registry = registry or default_registry()
    spec = resolve(layout.spec(attn), registry=registry, check=False)
    parts = bind(spec, "model", registry).kwargs
    weight = next(transformer.parameters())
    ctx = model_context(
        BuildContext(device=weight.device, dtype=weight.dtype),
        d_model=layout.d_model, heads=layout.heads, kv_heads=None, max_len=spec.kwargs["max_len"],
        dropout=layout.dropout,
    )
    stack = seq2seq_stack(
        ctx, layout.enc_layers, layout.dec_layers, attn=parts["attn"],
        final_norm=(layout.enc_final_norm, layout.dec_final_norm),
        **{k: parts[k] for k in ("pe", "ffn", "norm", "block", "bias")},
    )
    for part in (stack.encoder, stack.decoder):
        part.dropout.p = 0.0
    stack.load_state_dict(state_from_torch(transformer.state_dict()), strict=True)
    stack.spec = spec if layout.enc_final_norm == layout.dec_final_norm else None
    return stack


def read_torch(transformer: nn.Transformer) -> TransformerLayout:
    """The :class:`TransformerLayout` of an ``nn.Transformer``, or a clear error where it has none."""
    if not isinstance(transformer, nn.Transformer):
        raise TypeError(f"from_torch needs an nn.Transformer, got {type(transformer).__name__}")
    enc, dec = transformer.encoder, transformer.decoder
    _expect(enc, nn.TransformerEncoder, "transformer.encoder")
    _expect(dec, nn.TransformerDecoder, "transformer.decoder")
    for i, layer in enumerate(enc.layers):
        _expect(layer, nn.TransformerEncoderLayer, f"transformer.encoder.layers[{i}]")
    for i, layer in enumerate(dec.layers):
        _expect(layer, nn.TransformerDecoderLayer, f"transformer.decoder.layers[{i}]")
    layers = [*enc.layers, *dec.layers]
    attentions = [layer.self_attn for layer in layers] + [layer.multihead_attn for layer in dec.layers]
    for mha in attentions:
        _check_torch_attention(mha)
    norms = [n for layer in layers for n in _torch_norms(layer)]
    norms += [n for n in (enc.norm, dec.norm) if n is not None]
    for norm in norms:
        _check_torch_norm(norm)
    return TransformerLayout(
        d_model=uniform("d_model", (mha.embed_dim for mha in attentions)),
        heads=uniform("heads", (mha.num_heads for mha in attentions)),
        enc_layers=len(enc.layers),
        dec_layers=len(dec.layers),
        d_ff=uniform("dim_feedforward", (layer.linear1.out_features for layer in layers)),
        activation=uniform("activation", (_activation_name(layer.activation) for layer in layers)),
        norm_first=uniform("norm_first", (layer.norm_first for layer in layers)),
        eps=uniform("layer_norm_eps", (norm.eps for norm in norms)),
        attn_bias=uniform("attention bias", (mha.out_proj.bias is not None for mha in attentions)),
        ffn_bias=uniform("feed-forward bias", (
            lin.bias is not None for layer in layers for lin in (layer.linear1, layer.linear2)
        )),
        norm_bias=uniform("LayerNorm bias", (norm.bias is not None for norm in norms)),
        dropout=uniform("dropout", (p for layer in layers for p in _torch_dropouts(layer))),
        enc_final_norm=enc.norm is not None,
        dec_final_norm=dec.norm is not None,
    )


def _expect(module: nn.Module, cls: type, where: str) -> None:
    if type(module) is not cls:
        raise TypeError(f"{where} is a {type(module).__name__}; from_torch converts {cls.__name__} only")


def _check_torch_attention(mha: nn.MultiheadAttention) -> None:
    if mha.bias_k is not None or mha.add_zero_attn:
        raise ValueError("nn.MultiheadAttention with add_bias_kv or add_zero_attn has no plugformer counterpart")
    if not mha._qkv_same_embed_dim:
        raise ValueError(f"key/value widths ({mha.kdim}, {mha.vdim}) must equal d_model ({mha.embed_dim})")


def _check_torch_norm(norm: nn.Module) -> None:
    if type(norm) is not nn.LayerNorm:
        raise TypeError(f"norm {type(norm).__name__} does not convert; from_torch converts nn.LayerNorm only")
    if not norm.elementwise_affine:
        raise ValueError("LayerNorm(elementwise_affine=False) has no plugformer counterpart (layernorm has a gain)")


def _torch_norms(layer: nn.Module) -> list[nn.LayerNorm]:
    names = ("norm1", "norm2", "norm3") if isinstance(layer, nn.TransformerDecoderLayer) else ("norm1", "norm2")
    return [getattr(layer, name) for name in names]


def _torch_dropouts(layer: nn.Module) -> list[float]:
    names = ("dropout", "dropout1", "dropout2", "dropout3")
    return [layer.self_attn.dropout] + [getattr(layer, n).p for n in names if hasattr(layer, n)]


def _activation_name(activation: Callable[[Tensor], Tensor]) -> Activation:
    if activation is F.relu or isinstance(activation, nn.ReLU):
        return "relu"
    if activation is F.gelu or (isinstance(activation, nn.GELU) and activation.approximate == "none"):
        return "gelu"
    raise ValueError(
        f"activation {activation!r} has no plugformer feed-forward counterpart; from_torch "
        "converts relu and gelu (as 'relu' / 'gelu', F.relu / F.gelu, nn.ReLU() or exact nn.GELU())"
    )


# ---------------------------------------------------------------------------- nn.Transformer out


def to_torch(stack_or_model: nn.Module) -> nn.Transformer:
    """An ``nn.Transformer(batch_first=True)`` with the weights of a plugformer stack or model.

    Fits where every part has a counterpart: an exact-attention kernel (``dense``, ``fused``)
    with the default scale, ``relu`` or ``gelu`` feed-forward, ``layernorm`` everywhere,
    ``post_ln`` or ``pre_ln`` blocks, no positional encoding (``pe=none``: nn.Transformer takes
    embedded, position-encoded inputs), ``kv_heads == heads``, final norms, and one bias setting
    for every Linear and LayerNorm. The stacks' input dropout, which nn.Transformer leaves to
    its caller, is not carried over.

    Args:
        stack_or_model: a :class:`Seq2SeqStack`, or an ``encdec`` model (its ``.stack``).

    Raises:
        ValueError: naming the part that does not fit.
    """
    stack = getattr(stack_or_model, "stack", stack_or_model)
    layout = read_stack(stack)
    if not (layout.enc_final_norm and layout.dec_final_norm):
        raise ValueError("nn.Transformer always has final norms; build the stack with final_norm=true")
    if not layout.attn_bias == layout.ffn_bias == layout.norm_bias:
        raise ValueError(
            "nn.Transformer has one bias flag for every Linear and LayerNorm; this stack has "
            f"attention bias={layout.attn_bias}, feed-forward bias={layout.ffn_bias}, norm "
            f"bias={layout.norm_bias}"
        )
    weight = next(stack.parameters())
    transformer = nn.Transformer(
        d_model=layout.d_model,
        nhead=layout.heads,
        num_encoder_layers=layout.enc_layers,
        num_decoder_layers=layout.dec_layers,
        dim_feedforward=layout.d_ff,
        dropout=layout.dropout,
        activation=layout.activation,
        layer_norm_eps=layout.eps,
        batch_first=True,
        norm_first=layout.norm_first,
        bias=layout.attn_bias,
        device=weight.device,
        dtype=weight.dtype,
    )
    transformer.load_state_dict(state_to_torch(stack.state_dict()), strict=True)
    return transformer


def read_stack(stack: nn.Module) -> TransformerLayout:
    """The :class:`TransformerLayout` of a plugformer stack, or a ValueError naming the misfit."""
    if not isinstance(stack, Seq2SeqStack):
        raise ValueError(
            f"to_torch needs a Seq2SeqStack or an encdec model, got {type(stack).__name__} "
            "(nn.Transformer is an encoder-decoder)"
        )
    enc, dec = stack.encoder, stack.decoder
    for name, part in (("encoder", enc), ("decoder", dec)):
        pe = part.pe
        if pe.uses_embed or pe.uses_rotate or pe.uses_bias:
            raise ValueError(
                f"the {name}'s positional encoding {type(pe).__name__} has no place in "
                "nn.Transformer, which takes position-encoded inputs; build with pe=none"
            )
    blocks = [*enc.layers, *dec.layers]
    for i, block in enumerate(blocks):
        if type(block) not in (PostLNBlock, PreLNBlock):
            raise ValueError(f"block {type(block).__name__} (layer {i}) does not fit; nn.Transformer has post_ln and pre_ln")
    for block in enc.layers:
        if block.cross_attn is not None:
            raise ValueError("an encoder block with cross-attention does not fit nn.Transformer")
    for block in dec.layers:
        if block.cross_attn is None:
            raise ValueError("decoder blocks need cross-attention to fit nn.Transformer (a decoder-only stack does not)")
    attentions = [b.self_attn for b in blocks] + [b.cross_attn for b in dec.layers]
    d_model = uniform("d_model", (mha.out_proj.out_features for mha in attentions))
    for mha in attentions:
        _check_attention(mha, d_model)
    ffns = [b.ffn for b in blocks]
    for ffn in ffns:
        if type(ffn) is not FeedForwardNetwork:
            raise ValueError(f"feed-forward {type(ffn).__name__} does not fit; nn.Transformer has relu and gelu")
    norms = [n for b in blocks for n in (b.self_attn_norm, b.cross_attn_norm, b.ffn_norm) if n is not None]
    final = [n for n in (enc.norm, dec.norm) if not isinstance(n, nn.Identity)]
    for norm in norms + final:
        _check_norm(norm, d_model)
    return TransformerLayout(
        d_model=d_model,
        heads=uniform("heads", (mha.heads for mha in attentions)),
        enc_layers=len(enc.layers),
        dec_layers=len(dec.layers),
        d_ff=uniform("d_ff", (ffn.up_proj.out_features for ffn in ffns)),
        activation=uniform("activation", (_ffn_activation(ffn) for ffn in ffns)),
        norm_first=uniform("block", (type(b) is PreLNBlock for b in blocks)),
        eps=uniform("norm eps", (norm.eps for norm in norms + final)),
        attn_bias=uniform("attention bias", (
            lin.bias is not None for mha in attentions for lin in (mha.q_proj, mha.out_proj)
        )),
        ffn_bias=uniform("feed-forward bias", (ffn.up_proj.bias is not None for ffn in ffns)),
        norm_bias=uniform("norm bias", (norm.bias is not None for norm in norms + final)),
        dropout=uniform("dropout", (
            p for b in blocks for p in (b.dropout.p, b.ffn.dropout.p)
        )),
        enc_final_norm=not isinstance(enc.norm, nn.Identity),
        dec_final_norm=not isinstance(dec.norm, nn.Identity),
    )


def _check_attention(mha: nn.Module, d_model: int) -> None:
    if not isinstance(mha, MultiHeadAttention):
        raise ValueError(f"attention {type(mha).__name__} does not fit; nn.Transformer needs MultiHeadAttention")
    kernel = mha.kernel
    if type(kernel) not in (DenseAttention, FusedAttention):
        raise ValueError(
            f"attention kernel {type(kernel).__name__} does not fit: nn.Transformer computes exact "
            "softmax attention; use dense or fused"
        )
    if kernel.scale is not None and not math.isclose(kernel.scale, mha.head_dim**-0.5):
        raise ValueError(f"attention scale {kernel.scale} does not fit; nn.Transformer uses head_dim ** -0.5")
    if mha.kv_heads != mha.heads:
        raise ValueError(f"grouped-query attention (kv_heads={mha.kv_heads}, heads={mha.heads}) does not fit nn.Transformer")
    if mha.heads * mha.head_dim != d_model:
        raise ValueError(f"heads * head_dim ({mha.heads} * {mha.head_dim}) must equal d_model ({d_model})")
    if mha.k_proj.in_features != d_model:
        raise ValueError(f"cross-attention from a memory of width {mha.k_proj.in_features} does not fit")
    if not (isinstance(mha.q_norm, nn.Identity) and isinstance(mha.k_norm, nn.Identity)):
        raise ValueError("attention with q/k norms (QK-norm) does not fit nn.Transformer")
    biases = {lin.bias is not None for lin in (mha.q_proj, mha.k_proj, mha.v_proj, mha.out_proj)}
    if len(biases) > 1:
        raise ValueError("attention projections must all have biases or all have none")


def _check_norm(norm: nn.Module, d_model: int) -> None:
    if not isinstance(norm, nn.LayerNorm) or not norm.elementwise_affine:
        raise ValueError(f"norm {type(norm).__name__} does not fit; nn.Transformer uses LayerNorm with a gain")
    if tuple(norm.normalized_shape) != (d_model,):
        raise ValueError(f"LayerNorm over {tuple(norm.normalized_shape)} does not fit (d_model {d_model})")


def _ffn_activation(ffn: FeedForwardNetwork) -> Activation:
    act = ffn.activation
    if type(act) is nn.ReLU:
        return "relu"
    if type(act) is nn.GELU and act.approximate == "none":
        return "gelu"
    raise ValueError(f"feed-forward activation {act!r} does not fit; nn.Transformer has relu and exact gelu")
