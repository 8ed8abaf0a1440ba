"""Mask building and conventions.

Inside the library a boolean mask means True = may attend (the convention of
``F.scaled_dot_product_attention``), broadcastable to (B, H, Lq, Lk). At the public model
boundary, padding masks follow ``nn.Transformer``: True = padding. The helpers here are the only
places that translate between the two.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from plugformer.core.tracing import eager


def causal_mask(lq: int, lk: int, *, device: torch.device | str | None = None) -> Tensor:
    """(Lq, Lk) boolean, True = may attend; aligned bottom-right (query i sits at Lk - Lq + i)."""
    q_pos = torch.arange(lk - lq, lk, device=device)
    k_pos = torch.arange(lk, device=device)
    return k_pos[None, :] <= q_pos[:, None]


def padding_to_attend(key_padding_mask: Optional[Tensor]) -> Optional[Tensor]:
    """``nn.Transformer``-style key padding mask (B, Lk), True = padding, to (B, 1, 1, Lk) True = attend.

    Float masks (0 = keep, -inf = pad) are accepted as ``nn.Transformer`` accepts them.
    """
    if key_padding_mask is None:
        return None
    if key_padding_mask.dim() != 2:
        raise ValueError(
            f"key padding mask must be (batch, length), got shape {tuple(key_padding_mask.shape)}"
        )
    return ~_as_blocked(key_padding_mask, "key padding mask")[:, None, None, :]


def attn_mask_to_attend(attn_mask: Optional[Tensor]) -> Optional[Tensor]:
    """``nn.Transformer``-style attention mask (L, S) or (B*H, L, S) to boolean True = attend.

    Boolean masks: True = do not attend. Float masks: added to scores; only 0 / -inf masks are
    representable as a boolean mask, anything else is refused with an explanation.
    """
    if attn_mask is None:
        return None
    return ~_as_blocked(attn_mask, "attention mask")


def merge(*masks: Optional[Tensor]) -> Optional[Tensor]:
    """Logical AND of boolean attend-masks, ignoring ``None``; ``None`` when all are ``None``."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = out & m
    return out


def is_all_true(mask: Optional[Tensor]) -> bool:
    """Whether a mask lets every query attend every key (so it can be dropped)."""
    return mask is None or bool(mask.all())


def _as_blocked(mask: Tensor, what: str) -> Tensor:
    if mask.dtype == torch.bool:
        return mask
    if not mask.is_floating_point():
        raise TypeError(f"{what} must be bool or float, got {mask.dtype}")
    blocked = torch.isneginf(mask)
    if eager() and not torch.all(blocked | (mask == 0)):
        raise ValueError(
            f"{what}: float masks must hold only 0 (attend) and -inf (blocked); "
            "for other additive biases use a positional encoding with score_bias"
        )
    return blocked


def with_causal(mask: Optional[Tensor], causal: bool, lq: int, lk: int, device) -> Optional[Tensor]:
    """A kernel's full attend-mask: ``mask`` and, if ``causal``, the bottom-right causal mask."""
    return merge(mask, causal_mask(lq, lk, device=device) if causal else None)


def masked_softmax(scores: Tensor, allowed: Optional[Tensor]) -> Tensor:
    """softmax over the last dim where ``allowed`` (True = may attend); all-blocked rows give 0."""
    if allowed is None:
        return scores.softmax(-1)
    row_has_key = allowed.any(-1, keepdim=True)
    scores = scores.masked_fill(~allowed, float("-inf")).masked_fill(~row_has_key, 0.0)
    return scores.softmax(-1) * row_has_key
