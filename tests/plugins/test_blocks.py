"""``post_ln`` and ``pre_ln`` blocks against their formulas, written with the blocks' own parts."""

import pytest
import torch

from plugformer.core.attention import MultiHeadAttention
from plugformer.core.interfaces import BlockParts
from plugformer.plugins.blocks import PostLNBlock, PreLNBlock
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
