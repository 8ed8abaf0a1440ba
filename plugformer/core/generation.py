"""Autoregressive generation with a KV cache: greedy, sampling (temperature, top-k, top-p) and
beam search, for encoder-decoder and decoder-only models.

One path serves both model kinds: :func:`generate` asks the model for a :class:`Session`
(``model.start_decoding(inputs, use_cache=..., **kind_options)``) and runs the strategy over it.
A session hides the model kind: ``start()`` gives the logits of the first new token,
``step(tokens)`` feeds the chosen tokens back and gives the next logits, ``reorder(index)``
follows beams. Sessions use only the models' public methods (``encode``, ``decode``,
``padding_mask``, ``new_caches``, ``forward``). With ``use_cache=False`` every step recomputes
the whole prefix: slower, and the reference the cache is tested against.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn


class Session:
    """Incremental decoding of one batch; subclasses know the model kind.

    Attributes:
        tokens: (B, L) the tokens fed to the decoder so far.
        caches: one :class:`plugformer.core.cache.LayerCache` per layer, or None without a cache.
    """

    tokens: Tensor
    caches: Optional[list] = None

    def start(self) -> Tensor:
        """Logits (B, V) for the first new token."""
        raise NotImplementedError

    def step(self, tokens: Tensor) -> Tensor:
        """Feed tokens (B,) and return the logits (B, V) of the next one."""
        raise NotImplementedError

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (beam search)."""
        raise NotImplementedError

    def reserve(self, new_tokens: int) -> None:
        """Make room in the caches for ``new_tokens`` more tokens at once (``generate`` knows how
        many it will ask for), so that decoding never grows them."""
        for cache in self.caches or ():
            cache.reserve(self.tokens.shape[1] + new_tokens)


class EncoderDecoderSession(Session):
    """Encode once, then decode one token at a time from ``bos_id``."""

    def __init__(self, model: nn.Module, src: Tensor, *, bos_id: int,
                 src_key_padding_mask: Optional[Tensor], use_cache: bool) -> None:
        self.model = model
        self.src_key_padding_mask = model.padding_mask(src, src_key_padding_mask)
        self.memory = model.encode(src, src_key_padding_mask=self.src_key_padding_mask)
        self.tokens = torch.full((src.shape[0], 1), bos_id, dtype=torch.long, device=src.device)
        self.caches = model.new_caches() if use_cache else None

    def _logits(self) -> Tensor:
        new = self.tokens[:, -1:] if self.caches is not None else self.tokens
        return self.model.decode(
            new, self.memory, src_key_padding_mask=self.src_key_padding_mask, caches=self.caches,
        )[:, -1]

    def start(self) -> Tensor:
        return self._logits()

    def step(self, tokens: Tensor) -> Tensor:
        self.tokens = torch.cat([self.tokens, tokens[:, None]], dim=1)
        return self._logits()

    def reorder(self, index: Tensor) -> None:
        self.tokens = self.tokens.index_select(0, index)
        self.memory = self.memory.index_select(0, index)
        if self.src_key_padding_mask is not None:
            self.src_key_padding_mask = self.src_key_padding_mask.index_select(0, index)
        for cache in self.caches or ():
            cache.reorder(index)


class LanguageModelSession(Session):
    """Prefill a (left-padded) prompt, then decode one token at a time."""

    def __init__(self, model: nn.Module, prompt: Tensor, *, prompt_padding_mask: Optional[Tensor],
                 use_cache: bool) -> None:
        if prompt_padding_mask is None:
            prompt_padding_mask = torch.zeros_like(prompt, dtype=torch.bool)
        _check_left_padded(prompt_padding_mask)
        self.model = model
        self.tokens = prompt
        self.padding = prompt_padding_mask
        self.padded = bool(prompt_padding_mask.any())  # new tokens are never padding
        self.left_padding = prompt_padding_mask.sum(1)
        self.caches = model.new_caches() if use_cache else None
        self.fed = 0

    def _logits(self) -> Tensor:
        new = self.tokens[:, self.fed:] if self.caches is not None else self.tokens
        self.fed = self.tokens.shape[1]
        padding = self.padding if self.padded else None
        return self.model(
            new, key_padding_mask=padding, caches=self.caches, left_padding=self.left_padding
        )[:, -1]

    def start(self) -> Tensor:
        return self._logits()

    def step(self, tokens: Tensor) -> Tensor:
        self.tokens = torch.cat([self.tokens, tokens[:, None]], dim=1)
        self.padding = torch.cat([self.padding, self.padding.new_zeros(len(tokens), 1)], dim=1)
        return self._logits()

    def reorder(self, index: Tensor) -> None:
        self.tokens = self.tokens.index_select(0, index)
        self.padding = self.padding.index_select(0, index)
        self.padded = bool(self.padding.any())
        self.left_padding = self.left_padding.index_select(0, index)
        for cache in self.caches or ():
            cache.reorder(index)


def _check_left_padded(padding: Tensor) -> None:
    if padding.shape[1] and bool((padding[:, 1:] & ~padding[:, :-1]).any()):
        raise ValueError(
            "prompts must be left-padded (padding before the first real token, none after); "
            "got padding after a real token"
        )


def pick(
    logits: Tensor,
    *,
    temperature: float = 0.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Next tokens (B,) from logits (B, V): argmax when ``temperature`` is 0, else sampled from
    softmax(logits / temperature) restricted to the ``top_k`` most likely tokens and to the
    smallest set whose probability reaches ``top_p`` (nucleus sampling, Holtzman et al. 2020)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        sorted_logits, order = logits.sort(-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # keeps the first token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    if generator is not None and not _same_device(generator.device, probs.device):
        # torch.multinomial refuses a generator on another device: draw where the generator
        # lives, so a caller's seeded stream is honoured on any device.
        return torch.multinomial(probs.to(generator.device), 1, generator=generator)[:, 0].to(probs.device)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def seeded_generator(seed: Optional[int], device: torch.device) -> Optional[torch.Generator]:
    """A ``torch.Generator`` on ``device`` (the device of the tensors it will sample from)
    seeded with ``seed``; None when ``seed`` is None."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


@torch.no_grad()
def sample(
    session: Session,
    *,
    max_new_tokens: int,
    eos_id: Optional[int] = None,
    pad_id: int = 0,
    temperature: float = 0.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seed: Optional[int] = None,
) -> Tensor:
    """Greedy or sampled decoding; rows stop at ``eos_id`` and are padded with ``pad_id``.

    ``seed`` seeds a generator on the device of the logits (known once the session has
    started), so seeded sampling works on any device.

    Returns the new tokens (B, T), T <= ``max_new_tokens`` (shorter when every row has ended).
    """
    logits = session.start()
    generator = seeded_generator(seed, logits.device)
    done = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    out = []
    for i in range(max_new_tokens):
        tokens = pick(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        tokens = tokens.masked_fill(done, pad_id)
        out.append(tokens)
        if eos_id is not None:
            done |= tokens == eos_id
        if bool(done.all()) or i == max_new_tokens - 1:
            break
        logits = session.step(tokens)
    return torch.stack(out, dim=1) if out else logits.new_zeros(logits.shape[0], 0, dtype=torch.long)


@torch.no_grad()
def beam_search(
    session: Session,
    *,
    batch: int,
    beams: int,
    max_new_tokens: int,
    eos_id: Optional[int] = None,
    pad_id: int = 0,
    length_penalty: float = 1.0,
) -> Tensor:
    """Beam search; the session must already hold ``batch * beams`` rows (each row repeated).

    Finished hypotheses keep their score; the best per batch row, by score / length **
    ``length_penalty``, is returned as new tokens (B, T), padded with ``pad_id`` after ``eos_id``.
    """
    logprobs = session.start().float().log_softmax(-1)  # (B*K, V)
    vocab = logprobs.shape[-1]
    device = logprobs.device
    scores = torch.zeros(batch, beams, device=device)
    scores[:, 1:] = float("-inf")  # all beams start equal: keep one until they diverge
    tokens = torch.empty(batch * beams, 0, dtype=torch.long, device=device)
    done = torch.zeros(batch * beams, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch * beams, device=device)
    for i in range(max_new_tokens):
        # a finished beam can only continue with pad, at no cost
        frozen = torch.full_like(logprobs, float("-inf"))
        frozen[:, pad_id] = 0.0
        logprobs = torch.where(done[:, None], frozen, logprobs)
        total = (scores.reshape(-1, 1) + logprobs).reshape(batch, beams * vocab)
        scores, flat = total.topk(beams, dim=-1)  # (B, K)
        origin = (flat // vocab + torch.arange(batch, device=device)[:, None] * beams).reshape(-1)
        chosen = (flat % vocab).reshape(-1)
        tokens = torch.cat([tokens.index_select(0, origin), chosen[:, None]], dim=1)
        done = done.index_select(0, origin)
        lengths = lengths.index_select(0, origin) + (~done).float()
        if eos_id is not None:
            done = done | (chosen == eos_id)
        if bool(done.all()) or i == max_new_tokens - 1:
            break
        session.reorder(origin)
        logprobs = session.step(chosen).float().log_softmax(-1)
    normalised = scores / lengths.clamp(min=1).reshape(batch, beams) ** length_penalty
    best = normalised.argmax(-1) + torch.arange(batch, device=device) * beams
    return tokens.index_select(0, best)


@torch.no_grad()
def generate(
    model: nn.Module,
    inputs: Tensor,
    *,
    max_new_tokens: int,
    beams: int = 1,
    eos_id: Optional[int] = None,
    pad_id: Optional[int] = None,
    temperature: float = 0.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seed: Optional[int] = None,
    length_penalty: float = 1.0,
    use_cache: bool = True,
    **start: Any,
) -> Tensor:
    """New tokens (B, T) for inputs (B, L), with the strategy the arguments ask for.

    ``model.start_decoding(inputs, use_cache=..., **start)`` makes the session; for beam search
    every row of ``inputs`` and of the tensors in ``start`` is repeated ``beams`` times. Raises
    ``ValueError`` for a negative ``max_new_tokens``, ``beams`` < 1, or sampling options
    together with beam search.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if beams < 1:
        raise ValueError(f"beams must be >= 1, got {beams}")
    if beams > 1 and (temperature or top_k or top_p):
        raise ValueError("beam search is deterministic: drop temperature/top_k/top_p or use beams=1")
    pad_id = 0 if pad_id is None else pad_id
    start = {k: repeat_rows(v, beams) if isinstance(v, Tensor) else v for k, v in start.items()}
    session = model.start_decoding(repeat_rows(inputs, beams), use_cache=use_cache, **start)
    reserve = getattr(session, "reserve", None)  # a session of another kind may not have it
    if reserve is not None:
        reserve(max_new_tokens)
    if beams > 1:
        return beam_search(
            session, batch=inputs.shape[0], beams=beams, max_new_tokens=max_new_tokens,
            eos_id=eos_id, pad_id=pad_id, length_penalty=length_penalty,
        )
    return sample(
        session, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
        temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
    )


def hf_aliases(
    *,
    temperature: float,
    eos_id: Optional[int],
    beams: int,
    eos_token_id: Optional[int] = None,
    num_beams: Optional[int] = None,
    do_sample: Optional[bool] = None,
) -> dict:
    """Our generation keywords from the Hugging Face names where ours differ.

    ``eos_token_id`` -> ``eos_id``, ``num_beams`` -> ``beams``; ``do_sample=True`` samples at
    ``temperature`` 1.0 when none is given (as HF), ``do_sample=False`` is greedy. Raises
    ``ValueError`` when an alias and our name are both given with different values, or when
    ``do_sample=False`` comes with a temperature above 0.
    """
    def merged(ours_name: str, ours, default, theirs_name: str, theirs):
        if theirs is None:
            return ours
        if ours != default and ours != theirs:
            raise ValueError(
                f"{ours_name}={ours!r} and its Hugging Face alias {theirs_name}={theirs!r} disagree: "
                f"give one of them"
            )
        return theirs

    if do_sample is True and temperature == 0:
        temperature = 1.0
    elif do_sample is False and temperature > 0:
        raise ValueError(
            f"do_sample=False asks for greedy decoding, but temperature={temperature} samples: "
            f"drop one of them"
        )
    return {
        "temperature": temperature,
        "eos_id": merged("eos_id", eos_id, None, "eos_token_id", eos_token_id),
        "beams": merged("beams", beams, 1, "num_beams", num_beams),
    }


def repeat_rows(x: Optional[Tensor], repeats: int) -> Optional[Tensor]:
    """Each row of ``x`` repeated ``repeats`` times in place (beams of one input are adjacent)."""
    return x if x is None or repeats == 1 else x.repeat_interleave(repeats, dim=0)
