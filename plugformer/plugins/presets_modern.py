"""Presets of modern recipes: ``llama_tiny`` (decoder-only) and ``t5_tiny`` (encoder-decoder).

Small sizes for demos and tests; the recipes are the parts, not the scale:

* LLaMA (Touvron et al., 2023): pre-norm with RMSNorm, SwiGLU, rotary positions, grouped-query
  attention (LLaMA 2 70B / LLaMA 3), no biases, untied embeddings.
* T5 (Raffel et al., 2020): pre-norm with RMSNorm (T5's "layer norm" has no mean and no bias),
  the shared bucketed relative position bias and no position embedding, attention without the
  1/sqrt(d) scaling, ReLU FFN without biases, tied embeddings. Unlike T5, ``encdec`` scales the
  token embeddings by sqrt(d_model) and does not rescale the tied output projection.
"""

from __future__ import annotations

from plugformer.core.presets import preset
from plugformer.hooks import hookimpl
from plugformer.plugins.models import encdec, lm

llama_tiny = preset(
    lm,
    "llama_tiny",
    "A small LLaMA-style LM: pre-norm RMSNorm, SwiGLU, RoPE, GQA 4 heads / 2 kv heads, no biases.",
    d_model=64, heads=4, kv_heads=2, layers=2, vocab=256, max_len=256, dropout=0.0,
    pe="rope", ffn="swiglu(multiple_of=32)", norm="rmsnorm", block="pre_ln",
    bias=False, tie_embeddings=False,
)
t5_tiny = preset(
    encdec,
    "t5_tiny",
    "A small T5-style encoder-decoder: pre-norm RMSNorm, T5 relative bias, unscaled attention.",
    d_model=64, heads=4, layers=2, vocab=256, max_len=256, dropout=0.0,
    pe="t5_bias", attn="fused(scale=1.0)", ffn="relu(d_ff=256, bias=false)", norm="rmsnorm",
    block="pre_ln", bias=False, tie_embeddings=True,
)


@hookimpl
def plugformer_register(registry) -> None:
    for factory in (llama_tiny, t5_tiny):
        registry.add("model", factory.__name__, factory)
