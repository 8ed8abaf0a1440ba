"""Mask building and conventions.

Inside the library a boolean mask means True = may attend (the convention of
``F.scaled_dot_product_attention``), broadcastable to (B, H, Lq, Lk). At the public model
boundary, padding masks follow ``nn.Transformer``: True = padding. The helpers here are the only
places that translate between the two.

Float masks are additive, as in ``F.scaled_dot_product_attention`` and ``nn.Transformer``: added
to the scores, -inf blocks. One that holds only 0 and -inf becomes a boolean mask, so that every
kernel runs it; any other stays a float mask, which kernels declaring
``supports_additive_mask`` (dense, fused) take. ``nn.Transformer``'s 3-D attention masks are
(B·H, Lq, Lk), batch and heads flattened: :func:`merge` splits them against a (B, ...) padding
mask, :func:`unflatten_heads` where the batch is known (in ``MultiHeadAttention``).
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

    Float masks are added to the scores as ``nn.Transformer`` adds them: 0 / -inf ones come back
    boolean, others as a float (B, 1, 1, Lk) additive mask.

    Raises:
        ValueError: the mask is not 2-D.
    """
    if key_padding_mask is None:
        return None
    if key_padding_mask.dim() != 2:
        raise ValueError(
            f"key padding mask must be (batch, length), got shape {tuple(key_padding_mask.shape)}"
        )
    return _to_library(key_padding_mask, "key padding mask")[:, None, None, :]


def attn_mask_to_attend(attn_mask: Optional[Tensor]) -> Optional[Tensor]:
    """``nn.Transformer``-style attention mask (L, S) or (B·H, L, S) to the library's form.

    Boolean masks: True = do not attend; they come back True = attend. Float masks are added to
    the scores: 0 / -inf ones come back boolean, others as they are (additive). A 3-D mask keeps
    its flattened (B·H) first dim; see :func:`merge` and :func:`unflatten_heads`.

    Raises:
        TypeError: neither bool nor float.
        ValueError: not 2-D or 3-D.
    """
    if attn_mask is None:
        return None
    if attn_mask.dim() not in (2, 3):
        raise ValueError(
            f"attention mask must be (Lq, Lk) or (batch * heads, Lq, Lk), got shape {tuple(attn_mask.shape)}"
        )
    return _to_library(attn_mask, "attention mask")


def unflatten_heads(mask: Optional[Tensor], batch: int, heads: int, lq: int, lk: int) -> Optional[Tensor]:
    """``nn.Transformer``'s flattened (B·H, Lq, Lk) mask as (B, H, Lq, Lk); any other mask as is.

    Raises:
        ValueError: a 3-D mask whose size is not (batch * heads, Lq, Lk).
    """
    if mask is None or mask.dim() != 3:
        return mask
    if tuple(mask.shape) != (batch * heads, lq, lk):
        raise ValueError(
            f"a 3-D attention mask is nn.Transformer's (batch * heads, Lq, Lk) = "
            f"({batch * heads}, {lq}, {lk}); got {tuple(mask.shape)}"
        )
    return mask.unflatten(0, (batch, heads))  # (B*H, Lq, Lk) -> (B, H, Lq, Lk)


def merge(*masks: Optional[Tensor]) -> Optional[Tensor]:
    """All of ``masks`` at once, ignoring ``None``; ``None`` when all are ``None``.

    Boolean masks combine by logical AND; with a float (additive) mask among them the result is
    additive: the floats summed, blocked positions -inf. A flattened (B·H, Lq, Lk) mask is split
    into (B, H, Lq, Lk) by the batch of a 4-D (B, ...) mask among them.

    Raises:
        ValueError: a flattened mask whose first dim is not a multiple of that batch.
    """
    present = [m for m in masks if m is not None]
    if not present:
        return None
    batches = [m.shape[0] for m in present if m.dim() == 4]
    if batches:
        present = [_split_batch(m, max(batches)) if m.dim() == 3 else m for m in present]
    floats = [m for m in present if m.is_floating_point()]
    if floats:
        return sum(_additive(m, floats[0].dtype) for m in present)
    out = present[0]
    for m in present[1:]:
        out = out & m
    return out


def allowed_of(mask: Tensor) -> Tensor:
    """The boolean True = may attend of a boolean or additive mask (additive: not -inf)."""
    return ~torch.isneginf(mask) if mask.is_floating_point() else mask


def is_all_true(mask: Optional[Tensor]) -> bool:
    """Whether a mask lets every query attend every key unchanged (so it can be dropped)."""
    if mask is None:
        return True
    return bool((mask == 0).all()) if mask.is_floating_point() else bool(mask.all())


def _split_batch(mask: Tensor, batch: int) -> Tensor:
    if mask.shape[0] % batch:
        raise ValueError(
            f"a 3-D attention mask is nn.Transformer's (batch * heads, Lq, Lk) with batch {batch}; "
            f"got {tuple(mask.shape)}"
        )
    return mask.unflatten(0, (batch, -1))  # (B*H, Lq, Lk) -> (B, H, Lq, Lk)


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.is_floating_point():
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def _to_library(mask: Tensor, what: str) -> Tensor:
    """nn.Transformer's bool True = blocked, or float additive -> True = attend, or additive."""
    if mask.dtype == torch.bool:
        return ~mask
    if not mask.is_floating_point():
        raise TypeError(f"{what} must be bool or float, got {mask.dtype}")
    blocked = torch.isneginf(mask)
    if not eager():
        return mask  # additive is exact for 0/-inf too; a value test would break the graph
    if torch.all(blocked | (mask == 0)):
        return ~blocked
    return mask


def with_causal(mask: Optional[Tensor], causal: bool, lq: int, lk: int, device) -> Optional[Tensor]:
    """A kernel's full attend-mask: ``mask`` and, if ``causal``, the bottom-right causal mask."""
    return merge(mask, causal_mask(lq, lk, device=device) if causal else None)


def masked_softmax(scores: Tensor, allowed: Optional[Tensor]) -> Tensor:
    """softmax over the last dim where ``allowed`` (True = may attend, or an additive float
    mask added first); all-blocked rows give 0."""
    if allowed is None:
        return scores.softmax(-1)
    if allowed.is_floating_point():
        scores, allowed = scores + allowed.to(scores.dtype), allowed_of(allowed)
    row_has_key = allowed.any(-1, keepdim=True)
    scores = scores.masked_fill(~allowed, float("-inf")).masked_fill(~row_has_key, 0.0)
    return scores.softmax(-1) * row_has_key
