"""``torch.nn.Transformer`` weights in and out: :func:`from_torch`, :func:`to_torch`."""

from plugformer.interop.torch_transformer import TransformerLayout, from_torch, to_torch

__all__ = ["TransformerLayout", "from_torch", "to_torch"]
