"""Weights in and out: ``torch.nn.Transformer`` (:func:`from_torch`, :func:`to_torch`) and
Hugging Face ``transformers`` (:func:`to_hf`, :func:`from_hf`; needs ``plugformer[hf]``)."""

from plugformer.interop.hf import InteropError, from_hf, hf_config, to_hf
from plugformer.interop.torch_transformer import TransformerLayout, from_torch, to_torch

__all__ = ["InteropError", "TransformerLayout", "from_hf", "from_torch", "hf_config", "to_hf", "to_torch"]
