"""What a task is, for `compare` and `train`: examples drawn from a seed, batches for a model
kind, and a fixed held-out set per length (:mod:`plugformer.tasks.metrics` scores predictions).

A task produces *examples*: a source sequence and the answer sequence that a model must predict
from it (`Example`). `Task.batch` and `Task.eval_batches` turn examples into the tensors a
model kind consumes:

* ``encdec``: `Seq2SeqBatch` — ``src`` is the source, ``tgt_in`` is ``[bos] + answer`` and
  ``tgt_out`` is ``answer + [eos]`` (without eos for tasks that set ``eos_in_target = False``).
* ``lm``: `LMBatch` — ``ids`` and next-token ``targets``, with ``IGNORE_INDEX`` (-100, what
  ``F.cross_entropy`` ignores) wherever there is no loss. Each task that serves ``lm`` says how.

Train and eval never overlap: every example goes to a split by a hash of its source tokens
(`split_of`: eval when the hash falls in one bucket of `SPLIT_BUCKETS`). Training batches
redraw eval-split examples and the held-out set redraws training-split ones, so whatever the
seeds, no held-out example is ever trained on. Since the answer is a function of the source,
disjoint sources mean disjoint examples.

A validation set (`Task.validation_batches`), for choosing settings such as the learning rate,
is carved from the training side: training-split examples drawn from a seed of their own, so the
reported eval split is never used to choose anything.

Shape legend: B batch, S source length, T target length, L sequence length (``lm``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Iterable, Optional, Union

import attrs
import torch
from torch import Tensor, nn

__all__ = [
    "IGNORE_INDEX", "SPLIT_BUCKETS", "Example", "LMBatch", "Seq2SeqBatch", "Batch", "Task",
    "split_of",
]

#: Target value that carries no loss (the default ``ignore_index`` of ``F.cross_entropy``).
IGNORE_INDEX = -100
#: The hash of a source picks one of this many buckets; bucket 0 is the held-out (eval) split.
SPLIT_BUCKETS = 8
_HASH_MODULUS = 1_000_003
_MAX_REDRAWS = 100
#: Offset of the validation set's seed, beyond any ``(seed, step)`` seed a training batch uses.
_VALIDATION_SEED = 2**62


@attrs.frozen
class Example:
    """A batch of examples before they are laid out for a model kind.

    Attributes:
        source: what the model reads, (B, S) token ids.
        answer: what it must produce, (B, T) token ids.
    """

    source: Tensor
    answer: Tensor


@attrs.frozen
class Seq2SeqBatch:
    """Tensors for an encoder-decoder (``kind == "encdec"``).

    Attributes:
        src: encoder input, (B, S).
        tgt_in: decoder input, shifted right and starting with bos, (B, T).
        tgt_out: the tokens to predict at each decoder position, (B, T); ``IGNORE_INDEX`` = no loss.
        src_key_padding_mask, tgt_key_padding_mask: True = padding, (B, S) / (B, T), or None when
            the batch has no padding (every batch a built-in task makes).
    """

    src: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    src_key_padding_mask: Optional[Tensor] = None
    tgt_key_padding_mask: Optional[Tensor] = None

    kind: ClassVar[str] = "encdec"

    @property
    def targets(self) -> Tensor:
        """The tokens to predict, aligned with the logits, (B, T)."""
        return self.tgt_out

    def logits(self, model: nn.Module) -> Tensor:
        """Run ``model`` on this batch: next-token logits, (B, T, V)."""
        return model(self.src, self.tgt_in, src_key_padding_mask=self.src_key_padding_mask,
                     tgt_key_padding_mask=self.tgt_key_padding_mask)

    def to(self, device: Union[str, torch.device]) -> "Seq2SeqBatch":
        """This batch on ``device``."""
        return attrs.evolve(self, **{k: _to(v, device) for k, v in attrs.asdict(self, recurse=False).items()})


@attrs.frozen
class LMBatch:
    """Tensors for a decoder-only language model (``kind == "lm"``).

    Attributes:
        ids: the input tokens, (B, L).
        targets: the next token to predict at each position, (B, L); ``IGNORE_INDEX`` = no loss.
        key_padding_mask: True = padding, (B, L), or None when the batch has no padding.
    """

    ids: Tensor
    targets: Tensor
    key_padding_mask: Optional[Tensor] = None

    kind: ClassVar[str] = "lm"

    def logits(self, model: nn.Module) -> Tensor:
        """Run ``model`` on this batch: next-token logits, (B, L, V)."""
        return model(self.ids, key_padding_mask=self.key_padding_mask)

    def to(self, device: Union[str, torch.device]) -> "LMBatch":
        """This batch on ``device``."""
        return attrs.evolve(self, **{k: _to(v, device) for k, v in attrs.asdict(self, recurse=False).items()})


Batch = Union[Seq2SeqBatch, LMBatch]


def _to(value: Optional[Tensor], device: Union[str, torch.device]) -> Optional[Tensor]:
    return None if value is None else value.to(device)


_hash_weights = torch.empty(0, dtype=torch.long)


def split_of(source: Tensor) -> Tensor:
    """The split bucket of each source sequence, (B, S) -> (B,) in ``[0, SPLIT_BUCKETS)``.

    A fixed random linear hash of the tokens modulo a prime: it depends on the tokens only
    (never on a seed), so the split of an example is the same in every run. Bucket 0 is eval.
    """
    global _hash_weights
    length = source.shape[-1]
    if _hash_weights.numel() < length:
        generator = torch.Generator().manual_seed(0x5EED)
        _hash_weights = torch.randint(1, 2**24, (max(length, 2 * _hash_weights.numel()),),
                                      generator=generator)
    if length >= 2**19 or (source.numel() and int(source.max()) >= 2**20):
        raise ValueError(f"split_of handles token ids < 2**20 and lengths < 2**19, got a "
                         f"sequence of length {length}")
    weights = _hash_weights[:length].to(source.device)
    hashed = (source.long() * weights).sum(-1) + length  # < 2**63: no overflow
    return hashed.remainder(_HASH_MODULUS).remainder(SPLIT_BUCKETS)


class Task(ABC):
    """A synthetic task: examples from a seed, laid out for the model kinds it serves.

    Subclasses set ``name``, ``kinds`` and ``primary_metric`` (an `EvalResult` attribute:
    ``"exact_match"``, ``"accuracy"``, or ``"bits_per_byte"`` for text, where lower is better),
    implement `vocab_size`, `max_len_at` and `sample` (random examples of one
    length), and override `lm_batch` to serve ``lm`` models.

    Args:
        length: the length trained on (its meaning is the task's: tokens, or key-value pairs).
        eval_lengths: further lengths evaluated after training (length generalisation); the
            training length is always evaluated too. Default: none.
        eval_size: held-out examples per eval length. Default: 512.
        eval_seed: seed of the held-out set; fixed, so every run scores the same examples.
    """

    name: ClassVar[str] = "task"
    kinds: ClassVar[tuple[str, ...]] = ("encdec",)
    primary_metric: ClassVar[str] = "exact_match"
    #: Whether the encdec target ends with eos (the model must say where the answer stops).
    eos_in_target: ClassVar[bool] = True
    pad_id: ClassVar[int] = 0
    bos_id: ClassVar[int] = 1
    eos_id: ClassVar[int] = 2
    #: Token ids below this are special (pad, bos, eos); content starts here.
    first_token: ClassVar[int] = 3

    def __init__(self, *, length: int, eval_lengths: Iterable[int] = (), eval_size: int = 512,
                 eval_seed: int = 2024) -> None:
        eval_lengths = tuple(int(n) for n in eval_lengths)
        for value in (length, *eval_lengths):
            if value < 1:
                raise ValueError(f"{self.name}: lengths must be >= 1, got {value}")
        if eval_size < 1:
            raise ValueError(f"{self.name}: eval_size must be >= 1, got {eval_size}")
        self.length = int(length)
        self.eval_lengths = eval_lengths
        self.eval_size = int(eval_size)
        self.eval_seed = int(eval_seed)
        self._eval_cache: dict[tuple[int, str], Example] = {}

    # ------------------------------------------------------------------ what subclasses define

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids, specials included: the model's ``vocab``."""

    @abstractmethod
    def max_len_at(self, length: int) -> int:
        """The longest sequence a model sees at ``length`` (source or target, either kind)."""

    @abstractmethod
    def sample(self, length: int, count: int, generator: torch.Generator) -> Example:
        """``count`` random examples of ``length``, drawn from ``generator`` only."""

    def lm_batch(self, example: Example) -> LMBatch:
        """The ``lm`` layout of ``example``; only tasks that list ``"lm"`` in ``kinds`` have one."""
        raise NotImplementedError(f"task {self.name!r} has no language-model form")

    # ------------------------------------------------------------------ provided

    @property
    def lengths(self) -> tuple[int, ...]:
        """Every length evaluated: the training length first, then the eval lengths."""
        return tuple(dict.fromkeys((self.length, *self.eval_lengths)))

    @property
    def max_len(self) -> int:
        """The longest sequence a model sees, eval lengths included."""
        return max(self.max_len_at(length) for length in self.lengths)

    def describe(self) -> str:
        """A one-line description, e.g. ``copy(length=16, vocab=64)``."""
        return f"{self.name}(length={self.length})"

    def batch(self, step: int, batch_size: int, *, kind: str, seed: int = 0,
              generator: Optional[torch.Generator] = None) -> Batch:
        """Training batch number ``step``, a function of ``(seed, step)`` alone.

        Every variant of a comparison therefore sees the same data in the same order. Pass a
        ``generator`` to draw from it instead. Examples of the held-out split are redrawn.
        """
        if generator is None:
            generator = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % 2**63)
        example = self._draw(self.length, batch_size, generator, held_out=False)
        return self.layout(example, kind)

    def eval_batches(self, length: int, kind: str, *, batch_size: int = 256) -> list[Batch]:
        """The fixed held-out set at ``length`` in batches of at most ``batch_size``."""
        key = (int(length), kind)
        if key not in self._eval_cache:
            generator = torch.Generator().manual_seed(self.eval_seed * 7919 + int(length))
            self._eval_cache[key] = self._draw(int(length), self.eval_size, generator, held_out=True)
        example = self._eval_cache[key]
        return [
            self.layout(Example(example.source[i:i + batch_size], example.answer[i:i + batch_size]), kind)
            for i in range(0, self.eval_size, batch_size)
        ]

    def validation_batches(self, length: int, kind: str, *, batch_size: int = 256) -> list[Batch]:
        """A fixed validation set at ``length``: ``eval_size`` examples of the *training* split,
        drawn from a seed of their own (not the eval set's, not a training batch's), in batches
        of at most ``batch_size``.

        For choosing settings (a learning rate, which candidate a search keeps) without looking
        at the reported eval split, which stays untouched. Since these are training-split
        examples, a training batch may contain one of them by chance (never for a long sequence
        over a large vocabulary; say so when the input space is tiny).
        """
        key = (int(length), f"validation:{kind}")
        if key not in self._eval_cache:
            generator = torch.Generator().manual_seed(self.eval_seed * 7919 + int(length) + _VALIDATION_SEED)
            self._eval_cache[key] = self._draw(int(length), self.eval_size, generator, held_out=False)
        example = self._eval_cache[key]
        return [
            self.layout(Example(example.source[i:i + batch_size], example.answer[i:i + batch_size]), kind)
            for i in range(0, self.eval_size, batch_size)
        ]

    def layout(self, example: Example, kind: str) -> Batch:
        """``example`` as the tensors of model ``kind``."""
        if kind not in self.kinds:
            raise ValueError(f"task {self.name!r} serves {' and '.join(self.kinds)} models, "
                             f"not {kind!r}")
        if kind == "lm":
            return self.lm_batch(example)
        return self.seq2seq_batch(example)

    def seq2seq_batch(self, example: Example) -> Seq2SeqBatch:
        """The ``encdec`` layout: ``tgt_in = [bos] + answer``, ``tgt_out = answer [+ eos]``."""
        answer = example.answer
        rows = answer.shape[0]
        bos = torch.full((rows, 1), self.bos_id, dtype=answer.dtype)
        if self.eos_in_target:
            eos = torch.full((rows, 1), self.eos_id, dtype=answer.dtype)
            return Seq2SeqBatch(src=example.source, tgt_in=torch.cat([bos, answer], 1),
                                tgt_out=torch.cat([answer, eos], 1))
        return Seq2SeqBatch(src=example.source, tgt_in=torch.cat([bos, answer[:, :-1]], 1),
                            tgt_out=answer)

    def _draw(self, length: int, count: int, generator: torch.Generator, *, held_out: bool) -> Example:
        """``count`` examples of one split, redrawing those of the other split."""
        sources: list[Tensor] = []
        answers: list[Tensor] = []
        have = 0
        for _ in range(_MAX_REDRAWS):
            need = count - have
            draw = need * SPLIT_BUCKETS + 8 if held_out else need + need // 4 + 8
            example = self.sample(length, draw, generator)
            keep = ((split_of(example.source) == 0) == held_out).nonzero().flatten()[:need]
            sources.append(example.source[keep])
            answers.append(example.answer[keep])
            have += keep.numel()
            if have == count:
                return Example(torch.cat(sources), torch.cat(answers))
        split = "held-out" if held_out else "training"
        raise ValueError(f"task {self.name!r} has too few {split} examples at length {length}: "
                         f"{have} of {count} after {_MAX_REDRAWS} draws; use a larger length or "
                         f"vocabulary")
