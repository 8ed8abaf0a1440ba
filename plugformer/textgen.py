"""Text in, text out: `generate_text` runs a language model's ``generate`` through a tokenizer.

``model.generate`` works on token ids; a model trained on the ``text`` task carries its tokenizer
(``plugformer.load`` restores it as ``model.tokenizer`` from a file that
``plugformer.save(model, path, tokenizer=...)`` or ``plugformer train`` wrote), and
`generate_text` encodes the prompt, generates, and decodes. Decoding reads the bytes as UTF-8
with replacement characters, so a byte model that emits invalid UTF-8 shows U+FFFD, never an
error. Generation stops at the tokenizer's end-of-text id (the end of a document).

This module sits above ``core`` and ``tasks`` (core does not import tasks).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from plugformer.tasks.tokenizers import Tokenizer

__all__ = ["generate_text", "tokenizer_of"]


def tokenizer_of(model: nn.Module, tokenizer: Optional[Tokenizer] = None) -> Tokenizer:
    """``tokenizer`` if given, else the one the model was loaded with (``model.tokenizer``).

    Raises:
        ValueError: neither is there.
    """
    found = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if found is None:
        raise ValueError(
            "the model has no tokenizer: pass tokenizer=... (e.g. the text task's "
            "task.tokenizer), or load a file saved with plugformer.save(model, path, "
            "tokenizer=...) or written by plugformer train on a text task")
    return found


def generate_text(
    model: nn.Module,
    text: str,
    *,
    tokenizer: Optional[Tokenizer] = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seed: Optional[int] = None,
    include_prompt: bool = False,
) -> str:
    """The text a language model writes after ``text``.

    An empty ``text`` starts a new document (the prompt is the end-of-text id). Generation
    stops at end-of-text or after ``max_new_tokens``; greedy by default, sampling when
    ``temperature`` > 0 (with ``top_k`` / ``top_p``, seeded by ``seed``: the same seed gives the
    same text). Prompt and generated tokens must fit the model's positions (``max_len`` for
    learned ones; ``rope`` and ``alibi`` extrapolate).

    Args:
        model: an ``lm`` model whose vocabulary is the tokenizer's.
        text: the prompt.
        tokenizer: how to encode and decode. Default: ``model.tokenizer``.
        include_prompt: return the prompt and the continuation, decoded together (a character
            whose bytes straddle the two comes out whole).

    Raises:
        ValueError: no tokenizer, a model that is not ``lm``, or a model whose vocabulary is
            smaller than the tokenizer's.
    """
    tokenizer = tokenizer_of(model, tokenizer)
    if getattr(model, "kind", None) != "lm":
        raise ValueError(f"text generation needs a language model (kind 'lm'), got kind "
                         f"{getattr(model, 'kind', None)!r}")
    vocab = model.embed.num_embeddings if hasattr(model, "embed") else None
    if vocab is not None and vocab < tokenizer.vocab_size:
        raise ValueError(f"the model has {vocab} token ids, fewer than the tokenizer's "
                         f"{tokenizer.vocab_size} ({tokenizer.describe()}): they were not made "
                         f"for each other")
    prompt = tokenizer.encode(text).tolist() or [tokenizer.eot_id]
    device = next(model.parameters()).device
    new = model.generate(torch.tensor([prompt], device=device), max_new_tokens,
                         eos_id=tokenizer.eot_id, temperature=temperature, top_k=top_k,
                         top_p=top_p, seed=seed)[0].tolist()
    if tokenizer.eot_id in new:
        new = new[:new.index(tokenizer.eot_id)]
    return tokenizer.decode((prompt if include_prompt else []) + new)
