"""Interfaces and generic machinery; imports no plugin."""

from plugformer.core.attention import KVCache, LayerCache, MultiHeadAttention, Positions
from plugformer.core.context import BuildContext
from plugformer.core.interfaces import (
    AttentionKernel,
    Block,
    BlockParts,
    FeedForward,
    Norm,
    PositionalEncoding,
)
from plugformer.core.stack import Decoder, Encoder, Seq2SeqStack

__all__ = [
    "AttentionKernel", "Block", "BlockParts", "BuildContext", "Decoder", "Encoder", "FeedForward",
    "KVCache", "LayerCache", "MultiHeadAttention", "Norm", "PositionalEncoding", "Positions",
    "Seq2SeqStack",
]
