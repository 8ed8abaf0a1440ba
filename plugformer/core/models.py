"""Token-level models around the stacks: embeddings in, logits out.

``EncoderDecoderModel`` (``encdec``) maps source and target ids to next-token logits;
``LanguageModel`` (``lm``) is decoder-only and causal. Both carry their canonical spec in
``model.spec`` (set by the builder).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plugformer.core import generation, masks
from plugformer.core.tracing import eager
from plugformer.core.attention import LayerCache
from plugformer.core.stack import Decoder, Seq2SeqStack


class TokenEmbedding(nn.Module):
    """Token ids (B, L) -> embeddings (B, L, D), optionally scaled by sqrt(D) (Vaswani et al.).

    Initialised N(0, 1/D) when scaled (unit variance after scaling), N(0, 0.02^2) otherwise.
    """

    def __init__(self, vocab: int, d_model: int, *, scale: bool, device=None, dtype=None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab, d_model, device=device, dtype=dtype))
        self.scale = math.sqrt(d_model) if scale else 1.0
        if not self.weight.is_meta:  # a meta build (spec checking) has no values to initialise
            nn.init.normal_(self.weight, std=d_model**-0.5 if scale else 0.02)

    @property
    def num_embeddings(self) -> int:
        return self.weight.shape[0]

    def forward(self, ids: Tensor) -> Tensor:
        """ids: (B, L) -> (B, L, D). Out-of-range ids raise ``ValueError`` in eager mode (the
        check reads the ids on the host, so it is skipped under ``torch.compile`` / export)."""
        if eager() and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_embeddings):
            raise ValueError(
                f"token ids must lie in [0, {self.num_embeddings}); got values from {int(ids.min())} "
                f"to {int(ids.max())}"
            )
        return F.embedding(ids, self.weight) * self.scale


def auxiliary_loss(model: nn.Module) -> Optional[Tensor]:
    """Sum of the ``aux_loss`` tensors that parts left after the last forward (MoE load
    balancing), or None when no part has one. Training adds it to the task loss."""
    losses = [m.aux_loss for m in model.modules() if isinstance(getattr(m, "aux_loss", None), Tensor)]
    return torch.stack(losses).sum() if losses else None


class GenerativeModel(nn.Module):
    """What both model kinds share: generation, through the kind's :meth:`start_decoding`, and
    the auxiliary loss."""

    @torch.no_grad()
    def generate(
        self,
        inputs: Tensor,
        max_new_tokens: int,
        *,
        eos_id: Optional[int] = None,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        beams: int = 1,
        length_penalty: float = 1.0,
        seed: Optional[int] = None,
        use_cache: bool = True,
        eos_token_id: Optional[int] = None,
        num_beams: Optional[int] = None,
        do_sample: Optional[bool] = None,
        **start: Any,
    ) -> Tensor:
        """The new tokens only, (B, T) with T <= ``max_new_tokens``, for inputs (B, L).

        ``lm``: ``inputs`` are prompts, left-padded with ``prompt_padding_mask`` (B, L) True at
        the pads. The prompt is not repeated in the result; Hugging Face's decoder-only
        ``generate`` returns prompt + new tokens (B, L + T) (``torch.cat([inputs, out], 1)``).
        ``encdec``: ``inputs`` are sources, right-padded with ``src_key_padding_mask``;
        ``bos_id`` (required) starts the decoder and is not in the result, where Hugging Face's
        encoder-decoder ``generate`` starts with its ``decoder_start_token_id``.
        :meth:`pad_inputs` pads rows of ids the way the model kind wants them.

        Greedy by default; ``temperature`` > 0 samples (with ``top_k`` / ``top_p``, seeded by
        ``seed``); ``beams`` > 1 runs beam search (``length_penalty`` divides scores by length **
        it). Each row stops at ``eos_id`` and is padded with ``pad_id`` (0 when unset) after it.
        ``use_cache=False`` recomputes every prefix. Hugging Face names are accepted as aliases:
        ``eos_token_id``, ``num_beams``, ``do_sample`` (:func:`generation.hf_aliases`).

        Raises:
            ValueError: a negative ``max_new_tokens``, ``beams`` < 1, sampling options with beam
                search, an alias that contradicts our name, or prompts padded on the right.
        """
        return generation.generate(
            self, inputs, max_new_tokens=max_new_tokens, pad_id=self.pad_id, top_k=top_k,
            top_p=top_p, seed=seed, length_penalty=length_penalty, use_cache=use_cache,
            **generation.hf_aliases(
                temperature=temperature, eos_id=eos_id, beams=beams,
                eos_token_id=eos_token_id, num_beams=num_beams, do_sample=do_sample,
            ),
            **start,
        )

    def aux_loss(self) -> Optional[Tensor]:
        """Auxiliary losses of the last forward (MoE load balancing), summed; None if none."""
        return auxiliary_loss(self)


class EncoderDecoderModel(GenerativeModel):
    """Source ids and target ids in, next-token logits out (Vaswani et al., 2017).

    Padding masks follow ``nn.Transformer`` (True = padding); when none is given and ``pad_id``
    is set, they are taken from the ids equal to ``pad_id``.
    """

    kind = "encdec"

    def __init__(
        self,
        *,
        src_embed: TokenEmbedding,
        tgt_embed: TokenEmbedding,
        stack: Seq2SeqStack,
        lm_head: nn.Linear,
        pad_id: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.src_embed = src_embed
        self.tgt_embed = tgt_embed
        self.stack = stack
        self.lm_head = lm_head
        self.pad_id = pad_id

    def forward(
        self,
        src: Tensor,
        tgt: Tensor,
        *,
        src_key_padding_mask: Optional[Tensor] = None,
        tgt_key_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """src: (B, S) ids, tgt: (B, T) ids (decoder input) -> logits (B, T, V)."""
        src_key_padding_mask = self.padding_mask(src, src_key_padding_mask)
        memory = self.encode(src, src_key_padding_mask=src_key_padding_mask)
        return self.decode(
            tgt,
            memory,
            src_key_padding_mask=src_key_padding_mask,
            tgt_key_padding_mask=tgt_key_padding_mask,
        )

    def encode(self, src: Tensor, *, src_key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """src: (B, S) ids -> memory (B, S, D)."""
        src_key_padding_mask = self.padding_mask(src, src_key_padding_mask)
        attend = masks.padding_to_attend(src_key_padding_mask)
        return self.stack.encoder(self.src_embed(src), mask=attend)

    def decode(
        self,
        tgt: Tensor,
        memory: Tensor,
        *,
        src_key_padding_mask: Optional[Tensor] = None,
        tgt_key_padding_mask: Optional[Tensor] = None,
        caches: Optional[Sequence[LayerCache]] = None,
    ) -> Tensor:
        """tgt: (B, T) ids (only new ones when ``caches`` hold the rest), memory: (B, S, D)
        -> logits (B, T, V). ``tgt_key_padding_mask`` covers all target positions so far."""
        tgt_key_padding_mask = self.padding_mask(tgt, tgt_key_padding_mask) if caches is None else tgt_key_padding_mask
        hidden = self.stack.decoder(
            self.tgt_embed(tgt),
            memory,
            self_mask=masks.padding_to_attend(tgt_key_padding_mask),
            memory_mask=masks.padding_to_attend(src_key_padding_mask),
            causal=True,
            caches=caches,
        )
        return self.lm_head(hidden)

    def start_decoding(
        self, src: Tensor, *, bos_id: int, src_key_padding_mask: Optional[Tensor] = None,
        use_cache: bool = True,
    ) -> generation.Session:
        """A decoding session over sources (B, S) (right-padded, ``src_key_padding_mask`` (B, S)
        True at the pads): encodes once, then decodes from ``bos_id``."""
        return generation.EncoderDecoderSession(
            self, src, bos_id=bos_id, src_key_padding_mask=src_key_padding_mask, use_cache=use_cache
        )

    def new_caches(self) -> list[LayerCache]:
        """One empty KV cache per decoder layer, for :meth:`decode` with ``caches``."""
        return self.stack.decoder.new_caches()

    def pad_inputs(self, rows: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """Sources of different lengths right-padded with ``pad_id`` (0 when unset): ids (B, S)
        and the padding mask (B, S), True at the pads, as :meth:`generate` takes them."""
        return pad_rows(rows, self.pad_id, left=False)

    def padding_mask(self, ids: Tensor, given: Optional[Tensor] = None) -> Optional[Tensor]:
        """The padding mask (B, L) of ids (B, L), True = padding: ``given`` when set, else the
        ids equal to ``pad_id``, or None when there are none (or ``pad_id`` is unset). Under
        ``torch.compile`` / export the mask is returned even when it holds no padding (the
        result is the same; the test for "none" would read the ids on the host)."""
        if given is not None or self.pad_id is None:
            return given
        padding = ids == self.pad_id
        return padding if not eager() or bool(padding.any()) else None


class LanguageModel(GenerativeModel):
    """Decoder-only causal language model: ids (B, L) in, next-token logits (B, L, V) out."""

    kind = "lm"

    def __init__(
        self,
        *,
        embed: TokenEmbedding,
        decoder: Decoder,
        lm_head: nn.Linear,
        pad_id: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.embed = embed
        self.decoder = decoder
        self.lm_head = lm_head
        self.pad_id = pad_id

    def forward(
        self,
        ids: Tensor,
        *,
        key_padding_mask: Optional[Tensor] = None,
        caches: Optional[Sequence[LayerCache]] = None,
        left_padding: Optional[Tensor] = None,
    ) -> Tensor:
        """ids: (B, L) -> logits (B, L, V).

        ``key_padding_mask`` (B, L_total), True = padding, covers cached tokens too;
        ``left_padding`` (B,) counts the pads before each row's first token (left-padded
        prompts), so positions count from the first real token.
        """
        hidden = self.decoder(
            self.embed(ids),
            self_mask=masks.padding_to_attend(key_padding_mask),
            causal=True,
            caches=caches,
            left_padding=left_padding,
        )
        return self.lm_head(hidden)

    def start_decoding(
        self, prompt: Tensor, *, prompt_padding_mask: Optional[Tensor] = None, use_cache: bool = True
    ) -> generation.Session:
        """A decoding session over prompts (B, L) (left-padded, ``prompt_padding_mask`` (B, L)
        True at the pads): prefill, then one token a step."""
        return generation.LanguageModelSession(
            self, prompt, prompt_padding_mask=prompt_padding_mask, use_cache=use_cache
        )

    def new_caches(self) -> list[LayerCache]:
        """One empty KV cache per layer, for :meth:`forward` with ``caches``."""
        return self.decoder.new_caches()

    def pad_inputs(self, rows: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """Prompts of different lengths left-padded with ``pad_id`` (0 when unset): ids (B, L)
        and the padding mask (B, L), True at the pads, as :meth:`generate` takes them."""
        return pad_rows(rows, self.pad_id, left=True)


def pad_rows(rows: Sequence[Sequence[int]], pad_id: Optional[int], *, left: bool) -> tuple[Tensor, Tensor]:
    """Token-id rows padded to the longest with ``pad_id`` (0 when None), on the left or right:
    ids (B, L) and padding mask (B, L), True at the pads. Raises ``ValueError`` for no rows."""
    if not rows:
        raise ValueError("need at least one row of token ids, got none")
    width = max(len(row) for row in rows)
    pad = 0 if pad_id is None else pad_id
    ids, padding = [], []
    for row in rows:
        fill = width - len(row)
        ids.append([pad] * fill + list(row) if left else list(row) + [pad] * fill)
        padding.append([True] * fill + [False] * len(row) if left else [False] * len(row) + [True] * fill)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(padding, dtype=torch.bool)
