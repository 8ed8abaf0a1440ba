"""Encoder, Decoder and Seq2SeqStack: blocks stacked, embedded in and embedded out.

``Seq2SeqStack.forward`` has the signature of ``nn.Transformer(batch_first=True).forward``, masks
in its convention (True = do not attend), so it can stand in for it; ``interop.from_torch`` builds
one from an ``nn.Transformer`` and the two agree to float tolerance.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from plugformer.core import masks
from plugformer.core.attention import LayerCache, Positions
from plugformer.core.interfaces import Block, PositionalEncoding


class _Stack(nn.Module):
    """Blocks in order, with the stack's positional encoding, input dropout and final norm."""

    def __init__(
        self,
        *,
        layers: Sequence[Block],
        norm: Optional[nn.Module] = None,
        positional: Optional[PositionalEncoding] = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.pe = positional if positional is not None else PositionalEncoding()
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(layers)
        self.norm = norm or nn.Identity()

    def _embed(
        self, x: Tensor, offset: int, left_padding: Optional[Tensor] = None
    ) -> tuple[Tensor, Optional[Positions]]:
        positions = torch.arange(offset, offset + x.shape[1], device=x.device)
        if left_padding is not None:  # each row's first real token sits at position 0
            positions = (positions[None, :] - left_padding[:, None]).clamp(min=0)  # (B, L)
        x = self.dropout(self.pe.embed(x, positions))
        uses_hooks = self.pe.uses_rotate or self.pe.uses_bias
        return x, Positions(self.pe, offset) if uses_hooks else None


class Encoder(_Stack):
    """A stack of encoder blocks (self-attention and feed-forward), bidirectional by default."""

    def forward(self, x: Tensor, *, mask: Optional[Tensor] = None, causal: bool = False) -> Tensor:
        """x: (B, L, D) embedded input; mask: boolean True = may attend, broadcastable to
        (B, H, L, L). Returns (B, L, D)."""
        x, positions = self._embed(x, 0)
        tokens = real_tokens(mask, x.shape[0], x.shape[1])
        for layer in self.layers:
            x = layer(x, self_mask=mask, causal=causal, positions=positions, **_token_mask_for(layer, tokens))
        return self.norm(x)


class Decoder(_Stack):
    """A stack of causal decoder blocks; with ``memory`` each block also attends to the encoder.

    Without cross-attention blocks (``lm``) it is a decoder-only stack.
    """

    def forward(
        self,
        x: Tensor,
        memory: Optional[Tensor] = None,
        *,
        self_mask: Optional[Tensor] = None,
        memory_mask: Optional[Tensor] = None,
        causal: bool = True,
        caches: Optional[Sequence[LayerCache]] = None,
        left_padding: Optional[Tensor] = None,
    ) -> Tensor:
        """Decode.

        Args:
            x: (B, T, D) embedded target (only the new tokens when ``caches`` hold earlier ones).
            memory: (B, S, D) encoder output, or None for a decoder-only stack.
            self_mask: boolean True = may attend, broadcastable to (B, H, T, T_total).
            memory_mask: boolean True = may attend, broadcastable to (B, H, T, S).
            causal: causal self-attention (bottom-right aligned).
            caches: one :class:`LayerCache` per layer for incremental decoding.
            left_padding: (B,) number of padding tokens before each row's first real token,
                so that absolute positions (``embed``) count from that token. Relative hooks
                (``rotate``, ``score_bias``) see only differences, which a shift leaves alone.

        Returns:
            (B, T, D).
        """
        offset = len(caches[0].self_attn) if caches else 0
        x, positions = self._embed(x, offset, left_padding)
        tokens = real_tokens(self_mask, x.shape[0], x.shape[1])
        for i, layer in enumerate(self.layers):
            x = layer(
                x,
                memory=memory,
                self_mask=self_mask,
                memory_mask=memory_mask,
                causal=causal,
                positions=positions,
                cache=caches[i] if caches else None,
                **_token_mask_for(layer, tokens),
            )
        return self.norm(x)

    def new_caches(self) -> list[LayerCache]:
        """Empty caches, one per layer, for incremental decoding."""
        return [LayerCache() for _ in self.layers]


class Seq2SeqStack(nn.Module):
    """Encoder and decoder, embedded in and out, with ``nn.Transformer(batch_first=True)``'s call."""

    def __init__(self, *, encoder: Encoder, decoder: Decoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(
        self,
        src: Tensor,
        tgt: Tensor,
        src_mask: Optional[Tensor] = None,
        tgt_mask: Optional[Tensor] = None,
        memory_mask: Optional[Tensor] = None,
        src_key_padding_mask: Optional[Tensor] = None,
        tgt_key_padding_mask: Optional[Tensor] = None,
        memory_key_padding_mask: Optional[Tensor] = None,
        src_is_causal: Optional[bool] = None,
        tgt_is_causal: Optional[bool] = None,
        memory_is_causal: bool = False,
    ) -> Tensor:
        """src: (B, S, D), tgt: (B, T, D) -> (B, T, D).

        Masks follow ``nn.Transformer``: boolean True = do not attend, or float 0 / -inf; key
        padding masks (B, S) / (B, T); attention masks (S, S), (T, T), (T, S). An explicit
        ``tgt_mask`` equal to the causal mask is recognised and run as causal attention.
        """
        _check_batch_first(src, tgt)
        src_attend = masks.merge(
            masks.attn_mask_to_attend(src_mask), masks.padding_to_attend(src_key_padding_mask)
        )
        memory = self.encoder(src, mask=src_attend, causal=bool(src_is_causal))
        tgt_attend = masks.attn_mask_to_attend(tgt_mask)
        causal = bool(tgt_is_causal)
        if tgt_attend is not None and tgt_attend.dim() == 2 and _is_causal(tgt_attend):
            tgt_attend, causal = None, True
        if memory_is_causal:
            raise ValueError("memory_is_causal=True is not supported; pass memory_mask instead")
        return self.decoder(
            tgt,
            memory,
            self_mask=masks.merge(tgt_attend, masks.padding_to_attend(tgt_key_padding_mask)),
            memory_mask=masks.merge(
                masks.attn_mask_to_attend(memory_mask),
                masks.padding_to_attend(memory_key_padding_mask),
            ),
            causal=causal,
        )


def real_tokens(self_mask: Optional[Tensor], batch: int, length: int) -> Optional[Tensor]:
    """Which of the last ``length`` tokens are real, (B, L) bool, True = real, from a self-attention
    attend-mask broadcastable to (B, H, L, L_total): a key that no query may attend is padding.
    None without a mask."""
    if self_mask is None:
        return None
    attended = self_mask.reshape((1,) * (4 - self_mask.dim()) + tuple(self_mask.shape))
    attended = attended.any(2).any(1)  # (B or 1, L_total)
    return attended[:, -length:].expand(batch, length)


def _token_mask_for(layer: nn.Module, tokens: Optional[Tensor]) -> dict:
    return {"token_mask": tokens} if getattr(layer, "uses_token_mask", False) else {}


def _is_causal(attend: Tensor) -> bool:
    lq, lk = attend.shape
    return bool(torch.equal(attend, masks.causal_mask(lq, lk, device=attend.device)))


def _check_batch_first(src: Tensor, tgt: Tensor) -> None:
    if src.dim() != 3 or tgt.dim() != 3:
        raise ValueError(
            f"src and tgt must be (batch, length, d_model); got {tuple(src.shape)} and {tuple(tgt.shape)}"
        )
    if src.shape[0] != tgt.shape[0]:
        raise ValueError(
            f"src and tgt must have the same batch size (batch_first=True); got {src.shape[0]} and "
            f"{tgt.shape[0]}"
        )
    if src.shape[-1] != tgt.shape[-1]:
        raise ValueError(f"src and tgt widths differ: {src.shape[-1]} vs {tgt.shape[-1]}")
