"""BiFormer's local-context enhancement (LCE) of bi-level routing attention.

Zhu et al., "BiFormer: Vision Transformer with Bi-Level Routing Attention" (CVPR 2023), section
3.2: a depthwise convolution over the values, added to the attention output. Here 1-d, over
token positions, and causal when the attention is.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plugformer.core.attention import repeat_kv


class LocalContext(nn.Module):
    """BiFormer's local-context enhancement: a depthwise 1-d conv over V, added to the output.

    One filter per query-head channel (weight (H * Dh, 1, kernel), channel h * Dh + d): grouped
    key/value heads are repeated to the H query heads first, so the layout does not depend on
    Hkv. Causal attention uses a window that ends at the token; keys a padding mask blocks are
    zeroed first, so padding never reaches real tokens through the conv.

    Args:
        heads: query heads H.
        head_dim: width of a head Dh.
        kernel_size: odd window length.
    """

    def __init__(
        self,
        *,
        heads: int,
        head_dim: int,
        kernel_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        channels = heads * head_dim
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(channels, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The initialisation of ``nn.Conv1d``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(self.weight.shape[-1])
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(
        self, v: Tensor, *, heads: int, lq: int, causal: bool, key_valid: Optional[Tensor] = None
    ) -> Tensor:
        """v: (B, Hkv, Lk, Dh) -> (B, H, Lq, Dh), the conv at the last Lq positions; causal, it
        reads the last Lq + kernel_size - 1 values only (a cached step does not read the cache)."""
        b, _, lk, dh = v.shape
        if heads * dh != self.weight.shape[0]:
            raise ValueError(f"bra lce: built for {self.weight.shape[0]} channels, got {heads} heads of {dh}")
        if lq != lk and not causal:
            raise ValueError(
                f"bra lce: the local context needs queries and keys at the same positions "
                f"(self-attention), got Lq={lq}, Lk={lk}; use lce=0 for cross-attention"
            )
        width = self.weight.shape[-1]
        if causal and lk > lq + width - 1:  # a cached step: only the last Lq + width - 1 values reach it
            start = lk - lq - width + 1
            v, lk = v[:, :, start:], lk - start
            key_valid = None if key_valid is None else key_valid[:, start:]
        if key_valid is not None:
            v = v * key_valid[:, None, :, None].to(v.dtype)
        x = repeat_kv(v, heads).transpose(-1, -2).reshape(b, heads * dh, lk)  # (B, H*Dh, Lk)
        x = F.pad(x, (width - 1, 0) if causal else (width // 2, width // 2))
        y = F.conv1d(x, self.weight, self.bias, groups=heads * dh)[..., lk - lq :]  # (B, H*Dh, Lq)
        return y.view(b, heads, dh, lq).transpose(-1, -2)
