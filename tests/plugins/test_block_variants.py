"""``parallel`` and ``sandwich`` blocks: against their formulas written with the same parts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import plugformer
from plugformer import build
from plugformer.core.attention import MultiHeadAttention
from plugformer.core.context import BuildContext
from plugformer.core.interfaces import BlockParts
from plugformer.plugins import block_variants as variants_plugin
from plugformer.plugins.block_variants import ParallelBlock, SandwichBlock, parallel, sandwich
from plugformer.plugins.dense import DenseAttention
from plugformer.plugins.feedforward import FeedForwardNetwork


@pytest.fixture(autouse=True, scope="module")
def registered():
    """Registers the plugin while it is not a built-in yet (see BUILTIN_PLUGINS)."""
    loaded = {p.name for p in plugformer.registry.plugins}
    added = [
        plugformer.registry.register_plugin(m) for m in (variants_plugin,) if m.__name__ not in loaded
    ]
    yield
    for name in added:
        plugformer.registry.unregister_plugin(name)


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
def test_lm_trains(block, train_losses):
    torch.manual_seed(4)
    model = build(f"gpt_tiny(block={block}, layers=1, vocab=64)")
    ids = torch.randint(0, 64, (4, 12))
    losses = train_losses(model, ids, 8)
    assert losses[-1] < losses[0] - 0.3


def test_describe():
    described = plugformer.registry.describe("block", "parallel")
    assert described.summary.startswith("Parallel block")
    assert described.args == ()
