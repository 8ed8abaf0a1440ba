"""Models: ``encdec`` (encoder-decoder, token ids in, logits out) and ``lm`` (decoder-only).

Model factories are the place where parts are wired: each reads its model-level arguments,
makes the :class:`BuildContext` and calls the part factories per layer. The wiring functions
(:func:`encoder`, :func:`decoder`) are reused by ``interop.from_torch``.
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from plugformer.core.attention import MultiHeadAttention
from plugformer.core.context import BuildContext
from plugformer.core.interfaces import Block, BlockParts
from plugformer.core.models import EncoderDecoderModel, LanguageModel, TokenEmbedding
from plugformer.core.presets import preset
from plugformer.core.slots import (
    ArgumentError,
    Attention,
    BlockPart,
    FeedForwardPart,
    NormPart,
    PartFactory,
    Positional,
)
from plugformer.core.stack import Decoder, Encoder, Seq2SeqStack
from plugformer.hooks import hookimpl


def attention(
    ctx: BuildContext, kernel: PartFactory, *, bias: bool = True, qk_norm: Optional[PartFactory] = None
) -> MultiHeadAttention:
    """Multi-head projections around the kernel built by ``kernel`` for ``ctx``; with
    ``qk_norm``, queries and keys are normalised per head (over head_dim) before attention."""
    head_ctx = ctx.evolve(d_model=ctx.head_dim, heads=1, kv_heads=1)
    return MultiHeadAttention(
        d_model=ctx.d_model,
        heads=ctx.heads,
        kv_heads=ctx.kv_heads,
        head_dim=ctx.head_dim,
        kernel=kernel(ctx),
        bias=bias,
        q_norm=qk_norm(head_ctx) if qk_norm else None,
        k_norm=qk_norm(head_ctx) if qk_norm else None,
        **ctx.factory_kwargs,
    )


def blocks(
    ctx: BuildContext,
    n: int,
    *,
    self_attn: PartFactory,
    ffn: PartFactory,
    norm: PartFactory,
    block: PartFactory,
    cross_attn: Optional[PartFactory] = None,
    bias: bool = True,
    qk_norm: Optional[PartFactory] = None,
) -> list[Block]:
    """``n`` blocks; layer i is built with ``ctx.layer == i`` so per-layer parts can differ.

    Cross-attention gets no positional hooks (``bias=False`` in its context)."""
    layers = []
    for i in range(n):
        layer_ctx = ctx.evolve(layer=i, layers=n)
        cross_ctx = layer_ctx.evolve(causal=False, cross=True, score_bias=False)
        parts = BlockParts(
            self_attn=attention(layer_ctx, self_attn, bias=bias, qk_norm=qk_norm),
            cross_attn=None
            if cross_attn is None
            else attention(cross_ctx, cross_attn, bias=bias, qk_norm=qk_norm),
            ffn=ffn(layer_ctx),
            norm=lambda c=layer_ctx: norm(c),
            dropout=ctx.dropout,
        )
        layers.append(block(layer_ctx, parts))
    return layers


def encoder(
    ctx: BuildContext, n: int, *, attn, pe, ffn, norm, block, final_norm: bool, bias: bool = True,
    qk_norm: Optional[PartFactory] = None,
) -> Encoder:
    """A bidirectional encoder stack of ``n`` blocks."""
    ctx = ctx.evolve(causal=False, cross=False)
    positional = pe(ctx)
    layers = blocks(
        ctx.evolve(score_bias=positional.uses_bias), n, self_attn=attn, ffn=ffn, norm=norm, block=block,
        bias=bias, qk_norm=qk_norm,
    )
    return Encoder(
        layers=layers,
        norm=norm(ctx) if final_norm else None,
        positional=positional,
        dropout=ctx.dropout,
    )


def decoder(
    ctx: BuildContext, n: int, *, attn, cross_attn, pe, ffn, norm, block, final_norm: bool,
    bias: bool = True, qk_norm: Optional[PartFactory] = None,
) -> Decoder:
    """A causal decoder stack of ``n`` blocks; with ``cross_attn`` each attends to a memory."""
    ctx = ctx.evolve(causal=True, cross=False, decoder=True)
    positional = pe(ctx)
    layers = blocks(
        ctx.evolve(score_bias=positional.uses_bias), n, self_attn=attn, cross_attn=cross_attn, ffn=ffn,
        norm=norm, block=block, bias=bias, qk_norm=qk_norm,
    )
    return Decoder(
        layers=layers,
        norm=norm(ctx) if final_norm else None,
        positional=positional,
        dropout=ctx.dropout,
    )


def seq2seq_stack(
    ctx: BuildContext, enc_layers: int, dec_layers: int, *, attn, pe, ffn, norm, block,
    final_norm: bool | tuple[bool, bool], self_attn: Optional[PartFactory] = None,
    cross_attn: Optional[PartFactory] = None, bias: bool = True, qk_norm: Optional[PartFactory] = None,
) -> Seq2SeqStack:
    """An encoder of ``enc_layers`` and a decoder of ``dec_layers`` blocks (Vaswani et al., 2017).

    ``self_attn`` / ``cross_attn`` are the decoder's kernels (default ``attn``); ``final_norm``
    is one flag for both stacks or (encoder, decoder).
    """
    enc_final, dec_final = final_norm if isinstance(final_norm, tuple) else (final_norm, final_norm)
    common = dict(pe=pe, ffn=ffn, norm=norm, block=block, bias=bias, qk_norm=qk_norm)
    return Seq2SeqStack(
        encoder=encoder(ctx, enc_layers, attn=attn, final_norm=enc_final, **common),
        decoder=decoder(
            ctx, dec_layers, attn=self_attn or attn, cross_attn=cross_attn or attn,
            final_norm=dec_final, **common,
        ),
    )


def model_context(
    ctx: BuildContext, *, d_model: int, heads: int, kv_heads: Optional[int], max_len: int, dropout: float
) -> BuildContext:
    """The model-level context, after checking what can be checked before building anything."""
    if d_model < 1:
        raise ArgumentError("d_model", f"d_model must be >= 1, got {d_model}")
    if heads < 1:
        raise ArgumentError("heads", f"heads must be >= 1, got {heads}")
    if d_model % heads:
        divisors = [h for h in range(1, min(d_model, 64) + 1) if d_model % h == 0]
        raise ArgumentError(
            ("heads", "d_model"),
            f"d_model ({d_model}) must be divisible by heads ({heads}); heads that divide it: "
            f"{', '.join(map(str, divisors[-4:]))}",
        )
    kv_heads = heads if kv_heads is None else kv_heads
    if kv_heads < 1 or heads % kv_heads:
        raise ArgumentError(
            ("kv_heads", "heads"), f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})"
        )
    if max_len < 1:
        raise ArgumentError("max_len", f"max_len must be >= 1, got {max_len}")
    if not 0.0 <= dropout < 1.0:
        raise ArgumentError("dropout", f"dropout must be in [0, 1), got {dropout}")
    return ctx.evolve(d_model=d_model, heads=heads, kv_heads=kv_heads, max_len=max_len, dropout=dropout)


def _layers(name: str, value: Optional[int], default: int) -> int:
    n = default if value is None else value
    if n < 1:
        raise ArgumentError(name, f"{name} must be >= 1, got {n}")
    return n


def _vocab(name: str, value: Optional[int], default: int) -> int:
    n = default if value is None else value
    if n < 2:
        raise ArgumentError(name, f"{name} must be >= 2, got {n}")
    return n


def encdec(
    ctx: BuildContext,
    /,
    *,
    d_model: int = 512,
    heads: int = 8,
    kv_heads: Optional[int] = None,
    layers: int = 6,
    enc_layers: Optional[int] = None,
    dec_layers: Optional[int] = None,
    vocab: int = 32000,
    src_vocab: Optional[int] = None,
    tgt_vocab: Optional[int] = None,
    max_len: int = 1024,
    dropout: float = 0.1,
    pad_id: Optional[int] = None,
    attn: Attention = "fused",
    self_attn: Optional[Attention] = None,
    cross_attn: Optional[Attention] = None,
    pe: Positional = "sinusoidal",
    ffn: FeedForwardPart = "relu",
    norm: NormPart = "layernorm",
    block: BlockPart = "post_ln",
    final_norm: bool = True,
    tie_embeddings: bool = False,
    bias: bool = True,
    qk_norm: Optional[NormPart] = None,
) -> EncoderDecoderModel:
    """Encoder-decoder transformer: source and target ids in, next-token logits out.

    Args:
        d_model: width of the residual stream.
        heads: attention heads.
        kv_heads: key/value heads (grouped-query attention); none means heads.
        layers: encoder and decoder layers, unless enc_layers / dec_layers say otherwise.
        vocab: vocabulary of source and target, unless src_vocab / tgt_vocab say otherwise.
        max_len: longest sequence (learned positions size themselves by it).
        dropout: dropout on embeddings, residuals, attention weights and FFN hidden units.
        pad_id: token id of padding; when set, padding masks come from the ids.
        attn: attention kernel of every attention layer.
        self_attn: decoder self-attention kernel; none means attn.
        cross_attn: decoder cross-attention kernel; none means attn.
        pe: positional encoding of encoder and decoder (each has its own).
        ffn: feed-forward network.
        norm: norm used by blocks and the final norms.
        block: how sublayers, norms and residuals are wired.
        final_norm: a norm after each stack (nn.Transformer always has one).
        tie_embeddings: share target embedding and output projection (and the source embedding
            when the vocabularies are equal).
        bias: biases in the attention projections.
        qk_norm: a norm applied per head to queries and keys (QK-norm), e.g. rmsnorm; none = off.
    """
    ctx = model_context(ctx, d_model=d_model, heads=heads, kv_heads=kv_heads, max_len=max_len, dropout=dropout)
    src_vocab = _vocab("src_vocab", src_vocab, vocab)
    tgt_vocab = _vocab("tgt_vocab", tgt_vocab, vocab)
    stack = seq2seq_stack(
        ctx, _layers("enc_layers", enc_layers, layers), _layers("dec_layers", dec_layers, layers),
        attn=attn, self_attn=self_attn, cross_attn=cross_attn, pe=pe, ffn=ffn, norm=norm,
        block=block, final_norm=final_norm, bias=bias, qk_norm=qk_norm,
    )
    fk = ctx.factory_kwargs
    tgt_embed = TokenEmbedding(tgt_vocab, d_model, scale=True, **fk)
    src_embed = tgt_embed if tie_embeddings and src_vocab == tgt_vocab else TokenEmbedding(src_vocab, d_model, scale=True, **fk)
    lm_head = nn.Linear(d_model, tgt_vocab, bias=False, **fk)
    if tie_embeddings:
        lm_head.weight = tgt_embed.weight
    return EncoderDecoderModel(
        src_embed=src_embed, tgt_embed=tgt_embed, stack=stack, lm_head=lm_head, pad_id=pad_id
    )


def lm(
    ctx: BuildContext,
    /,
    *,
    d_model: int = 512,
    heads: int = 8,
    kv_heads: Optional[int] = None,
    layers: int = 6,
    vocab: int = 32000,
    max_len: int = 1024,
    dropout: float = 0.1,
    pad_id: Optional[int] = None,
    attn: Attention = "fused",
    pe: Positional = "learned",
    ffn: FeedForwardPart = "gelu",
    norm: NormPart = "layernorm",
    block: BlockPart = "pre_ln",
    final_norm: bool = True,
    tie_embeddings: bool = True,
    bias: bool = True,
    qk_norm: Optional[NormPart] = None,
) -> LanguageModel:
    """Decoder-only causal language model: token ids in, next-token logits out (GPT-style).

    Args:
        d_model: width of the residual stream.
        heads: attention heads.
        kv_heads: key/value heads (grouped-query attention); none means heads.
        layers: decoder layers.
        vocab: vocabulary size.
        max_len: longest sequence (learned positions size themselves by it).
        dropout: dropout on embeddings, residuals, attention weights and FFN hidden units.
        pad_id: token id of padding.
        attn: attention kernel (built causal).
        pe: positional encoding.
        ffn: feed-forward network.
        norm: norm used by blocks and the final norm.
        block: how sublayers, norms and residuals are wired.
        final_norm: a norm after the last block.
        tie_embeddings: share the token embedding and the output projection.
        bias: biases in the attention projections.
        qk_norm: a norm applied per head to queries and keys (QK-norm), e.g. rmsnorm; none = off.
    """
    ctx = model_context(ctx, d_model=d_model, heads=heads, kv_heads=kv_heads, max_len=max_len, dropout=dropout)
    vocab = _vocab("vocab", vocab, vocab)
    stack = decoder(
        ctx, _layers("layers", layers, layers), attn=attn, cross_attn=None, pe=pe, ffn=ffn,
        norm=norm, block=block, final_norm=final_norm, bias=bias, qk_norm=qk_norm,
    )
    # N(0, 1/d) scaled by sqrt(d), as in encdec: unit-scale inputs next to default-initialised
    # blocks, and a tied head whose logits start near unit scale. With GPT-2's N(0, 0.02^2) and
    # no scale, the embeddings drown under the blocks and MQAR stays on its loss plateau (17%).
    embed = TokenEmbedding(vocab, d_model, scale=True, **ctx.factory_kwargs)
    lm_head = nn.Linear(d_model, vocab, bias=False, **ctx.factory_kwargs)
    if tie_embeddings:
        lm_head.weight = embed.weight
    return LanguageModel(embed=embed, decoder=stack, lm_head=lm_head, pad_id=pad_id)




transformer_base = preset(
    encdec,
    "transformer_base",
    "The base Transformer of Vaswani et al. (2017): 6+6 post-LN layers, d_model 512, 8 heads, FFN 2048.",
    d_model=512, heads=8, layers=6, ffn="relu(d_ff=2048)", pe="sinusoidal", block="post_ln",
    dropout=0.1,
)
transformer_tiny = preset(
    encdec,
    "transformer_tiny",
    "A small encoder-decoder for demos and tests: 2+2 layers, d_model 64, 4 heads, FFN 256.",
    d_model=64, heads=4, layers=2, vocab=256, max_len=256, ffn="relu(d_ff=256)", dropout=0.0,
)
gpt_tiny = preset(
    lm,
    "gpt_tiny",
    "A small GPT-style causal LM for demos and tests: 2 pre-LN layers, d_model 64, 4 heads.",
    d_model=64, heads=4, layers=2, vocab=256, max_len=256, ffn="gelu(d_ff=256)", dropout=0.0,
)


@hookimpl
def plugformer_register(registry) -> None:
    for factory in (encdec, lm, transformer_base, transformer_tiny, gpt_tiny):
        registry.add("model", factory.__name__, factory)
