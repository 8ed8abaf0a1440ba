"""The model checks' encoder-decoder and generation halves.

The model is the kit's ``transformer_tiny`` (d_model 32, 2 layers, see :meth:`Subject.encdec`)
or ``gpt_tiny`` driven through :mod:`plugformer.core.generation`'s sessions and ``generate``.
Each function returns a failed :class:`CheckResult`, or None when the property holds; the
references are the same model on other inputs (the row alone, other padding contents, an
uncached session).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from plugformer.core import generation
from plugformer.registry.spec import Spec
from plugformer.testing.result import CheckResult, failed
from plugformer.testing.subject import VOCAB, Subject, max_difference

ATOL = 1e-5
CAUSAL_ATOL = 1e-6  # a future token moves nothing before it: only float noise of reordered sums
MOVES = 1e-4  # a changed token must move its own logits by more than this
SRC, TGT = 10, 12
ROWS = (11, 9, 6, 4)  # real lengths of the rows of a padded batch


def ids(batch: int, length: int, seed: int) -> Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def changed_from(x: Tensor, t: int) -> Tensor:
    """``x`` (B, L) with every token from position t on replaced by another."""
    out = x.clone()
    out[:, t:] = (x[:, t:] + 1 + torch.arange(x.shape[1] - t)) % VOCAB
    return out


def future_moves_past(name: str, label: str, run, x: Tensor) -> Optional[CheckResult]:
    """For every t, logits (B, L, V) of ``run(changed_from(x, t))`` before t equal ``run(x)``'s
    within CAUSAL_ATOL, and those from t on move by more than MOVES."""
    base = run(x)
    for t in range(1, x.shape[1]):
        out = run(changed_from(x, t))
        diff, where = max_difference(out[:, :t], base[:, :t])
        if diff > CAUSAL_ATOL:
            return failed(name, f"{label}: changing tokens {t}..{x.shape[1] - 1} moved the logits at position {where[1]} "
                          f"(batch row {where[0]}) by {diff:.3g}: position {where[1]} sees the future")
        if float((out[:, t:] - base[:, t:]).abs().max()) <= MOVES:
            return failed(name, f"{label}: changing tokens {t}..{x.shape[1] - 1} moves no logit from {t} on by more "
                          f"than {MOVES:g}: the output ignores its input")
    return None


def causality(s: Subject, name: str) -> Optional[CheckResult]:
    """The encoder-decoder's decoder: tokens from t on change, logits before t do not."""
    model, src = s.encdec(), ids(2, SRC, seed=4)
    with torch.no_grad():
        return future_moves_past(name, "encdec decoder", lambda tgt: model(src, tgt), ids(2, TGT, seed=5))


def cached_decoding(s: Subject, name: str) -> Optional[CheckResult]:
    """encdec: prefill 3 target tokens then one a step with caches equals one decoder pass; and
    generation sessions with and without caches agree at every step (lm prompts left-padded,
    encdec sources right-padded, and unpadded)."""
    model, src, tgt = s.encdec(), ids(2, SRC, seed=4), ids(2, 9, seed=5)
    with torch.no_grad():
        memory = model.encode(src)
        full = model.decode(tgt, memory)
        caches = model.new_caches()
        steps = [model.decode(tgt[:, :3], memory, caches=caches)]
        steps += [model.decode(tgt[:, t:t + 1], memory, caches=caches) for t in range(3, tgt.shape[1])]
    diff, where = max_difference(torch.cat(steps, dim=1), full)
    if diff > ATOL:
        return failed(name, f"encdec: cached decoding (prefill 3, then one token a step) differs from the full decoder "
                      f"pass by {diff:.3g} at position {where[1]} (batch row {where[0]})")
    return _sessions_agree(s, name)


def _step_logits(session: generation.Session, forced: Tensor) -> Tensor:
    """Logits (B, T, V) at every step when the tokens ``forced`` (B, T) are fed back."""
    out = [session.start()]
    out += [session.step(forced[:, t]) for t in range(forced.shape[1] - 1)]
    return torch.stack(out, dim=1)


def _sessions_agree(s: Subject, name: str) -> Optional[CheckResult]:
    lm, encdec = s.model(), s.encdec()
    prompt, src, forced = ids(3, 10, seed=6), ids(3, 11, seed=7), ids(3, 9, seed=8)
    for padded in (False, True):
        left = torch.zeros(3, 10, dtype=torch.bool)
        right = torch.zeros(3, 11, dtype=torch.bool)
        if padded:
            left[1, :4], left[2, :7] = True, True
            right[0, 7:], right[2, 4:] = True, True
        sessions = {
            "lm session" + (", prompts left-padded" if padded else ""): (lambda cache: generation.LanguageModelSession(
                lm, prompt, prompt_padding_mask=left, use_cache=cache), forced[:, :8]),
            "encdec session" + (", sources right-padded" if padded else ""): (lambda cache: generation.EncoderDecoderSession(
                encdec, src, bos_id=1, src_key_padding_mask=right, use_cache=cache), forced),
        }
        for label, (session, tokens) in sessions.items():
            with torch.no_grad():
                cached, uncached = (_step_logits(session(cache), tokens) for cache in (True, False))
            diff, where = max_difference(cached, uncached)
            if diff > ATOL:
                return failed(name, f"{label}: cached and uncached decoding differ by {diff:.3g} at step {where[1]} "
                              f"(batch row {where[0]})")
    return None


def padded(rows: list[Tensor], left: bool) -> tuple[Tensor, Tensor]:
    """Rows (L_i,) in one batch (B, max L_i) padded on one side with other tokens; True at the pads."""
    width = max(len(row) for row in rows)
    batch = ids(len(rows), width, seed=9)
    padding = torch.ones(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        batch[i, span] = row
        padding[i, span] = False
    return batch, padding


def _rows(seed: int) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=generator) for n in ROWS]


def _finite(name: str, label: str, out: Tensor) -> Optional[CheckResult]:
    if not torch.isfinite(out).all():
        return failed(name, f"{label}: {int((~torch.isfinite(out)).sum())} NaN/Inf logits (padded positions included)")
    return None


def lm_padding(s: Subject, name: str, model: nn.Module) -> Optional[CheckResult]:
    """Left pads without ``left_padding`` (positions count from index 0): real tokens' logits do
    not depend on the pads' contents; greedy generation from a left-padded batch equals each
    prompt alone."""
    x = ids(2, 12, seed=10)
    pad = torch.arange(12)[None, :] < torch.tensor([0, 5])[:, None]
    with torch.no_grad():
        logits = model(x, key_padding_mask=pad)
        other = model(torch.where(pad, ids(2, 12, seed=11), x), key_padding_mask=pad)
    found = _finite(name, "model, left pads without left_padding", logits)
    diff, where = max_difference(other[~pad], logits[~pad])
    if found is None and diff > ATOL:
        found = failed(name, f"model, 5 left pads without left_padding: changing the pads' tokens moves real logits by {diff:.3g}")
    return found or _greedy(name, "lm", model, left=True)


def _greedy(name: str, label: str, model: nn.Module, *, left: bool) -> Optional[CheckResult]:
    rows = _rows(seed=12)
    batch, padding = padded(rows, left)
    with torch.no_grad():
        if label == "lm":
            alone = [model.generate(row[None], 6)[0] for row in rows]
            out = model.generate(batch, 6, prompt_padding_mask=padding)
        else:
            alone = [model.generate(row[None], 6, bos_id=1)[0] for row in rows]
            out = model.generate(batch, 6, bos_id=1, src_key_padding_mask=padding)
    for i, want in enumerate(alone):
        if not torch.equal(out[i], want):
            return failed(name, f"{label}: greedy generation from a {'left' if left else 'right'}-padded batch gives row {i} "
                          f"{out[i].tolist()}, the prompt alone {want.tolist()}")
    return None


def encdec_padding(s: Subject, name: str) -> Optional[CheckResult]:
    """Sources padded right (and left, where the encoder embeds no absolute positions) give each
    row's logits alone; pads' contents (sources right, targets left) move no real logit; greedy
    generation from a padded batch equals each source alone."""
    plain = s.encdec()
    relative = plain if s.kind == "positional" else s.encdec(pe=Spec("rope"))
    sides = [(False, plain)] + ([(False, relative)] if relative is not plain else [])
    sides += [] if relative.stack.encoder.pe.uses_embed else [(True, relative)]
    tgt = ids(len(ROWS), 5, seed=13)
    for left, model in sides:
        side = "left" if left else "right"
        src, padding = padded(_rows(seed=14), left)
        with torch.no_grad():
            batch = model(src, tgt, src_key_padding_mask=padding)
            found = _finite(name, f"encdec, sources {side}-padded", batch)
            for i, row in enumerate(_rows(seed=14)):
                diff, where = max_difference(batch[i], model(row[None], tgt[i:i + 1])[0])
                if found is None and diff > ATOL:
                    found = failed(name, f"encdec, source {i} {side}-padded: logits differ from the source alone by "
                                   f"{diff:.3g} at target position {where[0]}")
        found = found or _greedy(name, "encdec", model, left=left)
        if found:
            return found
    return _encdec_pad_contents(name, plain)


def _encdec_pad_contents(name: str, model: nn.Module) -> Optional[CheckResult]:
    src, tgt = ids(2, SRC, seed=15), ids(2, TGT, seed=16)
    src_pad = torch.arange(SRC)[None, :] >= torch.tensor([SRC, 6])[:, None]
    tgt_pad = torch.arange(TGT)[None, :] < torch.tensor([0, 4])[:, None]
    masks = {"src_key_padding_mask": src_pad, "tgt_key_padding_mask": tgt_pad}
    with torch.no_grad():
        logits = model(src, tgt, **masks)
        other = model(torch.where(src_pad, ids(2, SRC, seed=17), src), torch.where(tgt_pad, ids(2, TGT, seed=18), tgt), **masks)
    found = _finite(name, "encdec, sources right- and targets left-padded", logits)
    diff, _ = max_difference(other[~tgt_pad], logits[~tgt_pad])
    if found is None and diff > ATOL:
        found = failed(name, f"encdec, sources right- and targets left-padded: changing the pads' tokens moves real "
                       f"logits by {diff:.3g}")
    return found
