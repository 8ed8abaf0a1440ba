"""Blocks against their formulas, written with the blocks' own parts: ``post_ln`` and ``pre_ln``,
``parallel`` and ``sandwich``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import plugformer
from plugformer import build
from plugformer.core.attention import MultiHeadAttention
from plugformer.core.context import BuildContext
from plugformer.core.interfaces import BlockParts
from plugformer.plugins.blocks import (
    ParallelBlock, PostLNBlock, PreLNBlock, SandwichBlock, parallel, sandwich,
)
from plugformer.plugins.dense import DenseAttention
from plugformer.plugins.feedforward import FeedForwardNetwork
from plugformer.plugins.norms import LayerNorm

D, H = 16, 2


def parts(*, cross: bool, dropout: float = 0.0) -> BlockParts:
    def attention():
        return MultiHeadAttention(d_model=D, heads=H, kv_heads=H, head_dim=D // H, kernel=DenseAttention())

    def norm():
        layer = LayerNorm(D)
        with torch.no_grad():  # not the identity at initialisation, so a misplaced norm shows
            layer.weight.normal_(1.0, 0.5)
            layer.bias.normal_(0.0, 0.5)
        return layer

    return BlockParts(
        self_attn=attention(),
        ffn=FeedForwardNetwork(d_model=D, d_ff=32, activation=torch.nn.ReLU()),
        norm=norm,
        cross_attn=attention() if cross else None,
        dropout=dropout,
    )


@pytest.fixture
def inputs():
    torch.manual_seed(0)
    return torch.randn(2, 5, D), torch.randn(2, 7, D)


@pytest.mark.parametrize("cross", [False, True])
def test_post_ln_is_norm_of_x_plus_sublayer(inputs, cross):
    torch.manual_seed(1)
    block = PostLNBlock(parts(cross=cross))
    x, memory = inputs
    memory = memory if cross else None
    expected = block.self_attn_norm(x + block.self_attn(x, causal=True))
    if cross:
        expected = block.cross_attn_norm(expected + block.cross_attn(expected, memory))
    expected = block.ffn_norm(expected + block.ffn(expected))
    assert torch.allclose(block(x, memory=memory, causal=True), expected, atol=1e-6)


@pytest.mark.parametrize("cross", [False, True])
def test_pre_ln_is_x_plus_sublayer_of_norm(inputs, cross):
    torch.manual_seed(1)
    block = PreLNBlock(parts(cross=cross))
    x, memory = inputs
    memory = memory if cross else None
    expected = x + block.self_attn(block.self_attn_norm(x), causal=True)
    if cross:
        expected = expected + block.cross_attn(block.cross_attn_norm(expected), memory)
    expected = expected + block.ffn(block.ffn_norm(expected))
    assert torch.allclose(block(x, memory=memory, causal=True), expected, atol=1e-6)


@pytest.mark.parametrize("block_type", [PostLNBlock, PreLNBlock])
def test_masks_reach_the_attention(inputs, block_type):
    torch.manual_seed(1)
    block = block_type(parts(cross=True))
    x, memory = inputs
    keep = torch.tensor([True] * 4 + [False] * 3)[None, None, None, :]
    out = block(x, memory=memory, memory_mask=keep)
    changed = memory.clone()
    changed[:, 4:] = torch.randn(2, 3, D)
    assert torch.allclose(block(x, memory=changed, memory_mask=keep), out, atol=1e-6)
    assert not torch.allclose(block(x, memory=changed), block(x, memory=memory), atol=1e-4)


@pytest.mark.parametrize("block_type", [PostLNBlock, PreLNBlock])
def test_memory_must_match_the_block(inputs, block_type):
    x, memory = inputs
    with pytest.raises(ValueError, match="no cross-attention"):
        block_type(parts(cross=False))(x, memory=memory)
    with pytest.raises(ValueError, match="needs memory"):
        block_type(parts(cross=True))(x)


@pytest.mark.parametrize("block_type", [PostLNBlock, PreLNBlock])
def test_residual_dropout_only_while_training(inputs, block_type):
    block = block_type(parts(cross=False, dropout=0.5))
    x, _ = inputs
    block.eval()
    assert torch.equal(block(x), block(x))
    block.train()
    assert not torch.equal(block(x), block(x))


def test_submodules_are_named_for_their_role():
    names = {name for name, _ in PostLNBlock(parts(cross=True)).named_children()}
    assert {"self_attn", "self_attn_norm", "cross_attn", "cross_attn_norm", "ffn", "ffn_norm"} <= names


def make_parts(cross: bool) -> BlockParts:
    def attention() -> MultiHeadAttention:
        return MultiHeadAttention(d_model=16, heads=2, kv_heads=2, head_dim=8, kernel=DenseAttention())

    def norm() -> nn.LayerNorm:
        layer_norm = nn.LayerNorm(16)
        with torch.no_grad():
            layer_norm.weight.normal_()
            layer_norm.bias.normal_()
        return layer_norm

    return BlockParts(
        self_attn=attention(),
        ffn=FeedForwardNetwork(d_model=16, d_ff=32, activation=nn.ReLU()),
        norm=norm,
        cross_attn=attention() if cross else None,
    )


def test_parallel_encoder_block_formula():
    torch.manual_seed(0)
    block = parallel(BuildContext(d_model=16, heads=2), make_parts(cross=False))
    x = torch.randn(2, 5, 16)
    h = block.norm(x)
    expected = x + block.self_attn(h) + block.ffn(h)
    torch.testing.assert_close(block(x), expected)
    assert block.cross_attn is None and block.cross_attn_norm is None


def test_parallel_decoder_block_formula():
    torch.manual_seed(1)
    block = parallel(BuildContext(d_model=16, heads=2), make_parts(cross=True))
    x, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    h = block.norm(x)
    u = x + block.self_attn(h, causal=True)
    u = u + block.cross_attn(block.cross_attn_norm(u), memory)
    expected = u + block.ffn(h)
    torch.testing.assert_close(block(x, memory=memory, causal=True), expected)


def test_parallel_block_has_one_shared_norm():
    block = parallel(BuildContext(d_model=16, heads=2), make_parts(cross=False))
    norms = [name for name, module in block.named_modules() if isinstance(module, nn.LayerNorm)]
    assert norms == ["norm"]


def test_sandwich_block_formula():
    torch.manual_seed(2)
    block = sandwich(BuildContext(d_model=16, heads=2), make_parts(cross=True))
    x, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    u = x + block.self_attn_post_norm(block.self_attn(block.self_attn_norm(x), causal=True))
    u = u + block.cross_attn_post_norm(block.cross_attn(block.cross_attn_norm(u), memory))
    expected = u + block.ffn_post_norm(block.ffn(block.ffn_norm(u)))
    torch.testing.assert_close(block(x, memory=memory, causal=True), expected)


def test_memory_checks():
    encoder_block = parallel(BuildContext(), make_parts(cross=False))
    decoder_block = parallel(BuildContext(), make_parts(cross=True))
    with pytest.raises(ValueError, match="no cross-attention"):
        encoder_block(torch.randn(1, 3, 16), memory=torch.randn(1, 3, 16))
    with pytest.raises(ValueError, match="needs memory"):
        decoder_block(torch.randn(1, 3, 16))


@pytest.mark.parametrize("block, cls", [("parallel", ParallelBlock), ("sandwich", SandwichBlock)])
def test_models_decode_with_a_cache_as_without(block, cls, cached_logits):
    torch.manual_seed(3)
    model = build(f"transformer_tiny(block={block})").eval()
    assert all(isinstance(layer, cls) for layer in model.stack.decoder.layers)
    src, tgt = torch.randint(0, 256, (2, 8)), torch.randint(0, 256, (2, 6))
    memory = model.encode(src)
    torch.testing.assert_close(cached_logits(model, tgt, memory=memory), model.decode(tgt, memory),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("block", ["parallel", "sandwich"])
def test_lm_learns_what_its_twin_without_attention_cannot(block, learned_losses, zeroed):
    """The block must route its attention branch into the output: predicting the previous
    token needs it; the twin whose self-attention outputs zeros cannot."""
    models = []
    for _ in range(2):
        torch.manual_seed(4)
        models.append(build(f"gpt_tiny(block={block}, layers=1, vocab=64)"))
    zeroed([layer.self_attn for layer in models[1].decoder.layers])
    working, broken = learned_losses(*models, "lookback", 60, vocab=64)
    assert working < broken - 1.0, (working, broken)


def test_describe():
    described = plugformer.registry.describe("block", "parallel")
    assert described.summary.startswith("Parallel block")
    assert described.args == ()
