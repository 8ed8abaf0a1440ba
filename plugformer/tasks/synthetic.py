"""The built-in synthetic tasks: ``copy``, ``reverse``, ``sort`` and ``mqar``.

Token ids: 0 pad, 1 bos, 2 eos, then the task's own symbols from 3 on. Every example is drawn
from a ``torch.Generator``; train and eval are disjoint by a hash of the source (see
:mod:`plugformer.tasks.base`). They register through ``plugformer_register``, the hook any
third-party task plugin implements.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Iterable, Optional

import torch
from torch import Tensor

from plugformer.hooks import hookimpl
from plugformer.tasks.base import IGNORE_INDEX, Example, LMBatch, Task

__all__ = ["CopyTask", "ReverseTask", "SortTask", "MQARTask", "copy", "reverse", "sort", "mqar"]


class SequenceTask(Task):
    """Sequence to sequence over ``vocab`` symbols: the answer is a function of the source.

    Scored by exact match (the whole answer and its eos right) and token accuracy. A length
    longer than the training length tests length generalisation.

    Args:
        length: tokens per training source.
        vocab: number of symbols (the model's vocabulary is ``vocab + 3`` with pad, bos, eos).
        eval_lengths, eval_size, eval_seed: see `Task`.
    """

    kinds: ClassVar[tuple[str, ...]] = ("encdec",)
    primary_metric: ClassVar[str] = "exact_match"

    def __init__(self, *, length: int = 16, vocab: int = 64, eval_lengths: Iterable[int] = (),
                 eval_size: int = 512, eval_seed: int = 2024) -> None:
        if vocab < 1:
            raise ValueError(f"{self.name}: vocab must be >= 1, got {vocab}")
        super().__init__(length=length, eval_lengths=eval_lengths, eval_size=eval_size,
                         eval_seed=eval_seed)
        self.vocab = int(vocab)

    @property
    def vocab_size(self) -> int:
        return self.first_token + self.vocab

    def max_len_at(self, length: int) -> int:
        return length + 1  # the decoder sees bos + answer, or answer + eos

    def describe(self) -> str:
        lengths = f", eval_lengths=[{', '.join(map(str, self.eval_lengths))}]" if self.eval_lengths else ""
        return f"{self.name}(length={self.length}, vocab={self.vocab}{lengths})"

    def sample(self, length: int, count: int, generator: torch.Generator) -> Example:
        source = self.first_token + torch.randint(self.vocab, (count, length), generator=generator)
        return Example(source, self.answer_of(source))

    def answer_of(self, source: Tensor) -> Tensor:
        """The answer to ``source``, (B, S) -> (B, S)."""
        raise NotImplementedError


class CopyTask(SequenceTask):
    """The answer is the source."""

    name = "copy"

    def answer_of(self, source: Tensor) -> Tensor:
        return source.clone()


class ReverseTask(SequenceTask):
    """The answer is the source backwards."""

    name = "reverse"

    def answer_of(self, source: Tensor) -> Tensor:
        return source.flip(-1)


class SortTask(SequenceTask):
    """The answer is the source sorted in ascending order (duplicates kept)."""

    name = "sort"

    def answer_of(self, source: Tensor) -> Tensor:
        return source.sort(-1).values


class MQARTask(Task):
    """Multi-query associative recall (Arora et al. 2023, "Zoology").

    A source holds ``pairs`` key-value pairs ``k1 v1 k2 v2 ...`` with distinct keys, then
    ``queries`` of those keys in random order; the answer to each query is its key's value.
    Keys and values come from disjoint ranges of ``keys`` and ``values`` symbols.

    * ``lm`` form: ``ids`` = pairs then queries; the target at each query position is its
      value, every other position carries no loss (``IGNORE_INDEX``), as in Zoology.
    * ``encdec`` form: the encoder reads pairs and queries; the decoder writes the answers
      (no eos: the number of answers is fixed).

    Scored by answer accuracy (``accuracy``). Here a "length" counts key-value pairs, so
    ``eval_lengths=[16]`` evaluates with 16 pairs.

    Args:
        pairs: key-value pairs per training example.
        keys, values: sizes of the key and value alphabets; ``keys >= pairs`` at every length.
        queries: queries per example; none means one per pair (every key asked once).
        eval_lengths, eval_size, eval_seed: see `Task`.
    """

    name = "mqar"
    kinds: ClassVar[tuple[str, ...]] = ("lm", "encdec")
    primary_metric: ClassVar[str] = "accuracy"
    eos_in_target: ClassVar[bool] = False

    def __init__(self, *, pairs: int = 8, keys: int = 64, values: int = 64,
                 queries: Optional[int] = None, eval_lengths: Iterable[int] = (),
                 eval_size: int = 512, eval_seed: int = 2024) -> None:
        super().__init__(length=pairs, eval_lengths=eval_lengths, eval_size=eval_size,
                         eval_seed=eval_seed)
        if values < 1:
            raise ValueError(f"mqar: values must be >= 1, got {values}")
        if keys < max(self.lengths):
            raise ValueError(f"mqar: keys={keys} cannot make {max(self.lengths)} distinct keys; "
                             f"use keys >= the largest number of pairs")
        if queries is not None and not 1 <= queries <= min(self.lengths):
            raise ValueError(f"mqar: queries must be between 1 and the smallest number of pairs "
                             f"({min(self.lengths)}), got {queries}")
        self.keys = int(keys)
        self.values = int(values)
        self.queries = None if queries is None else int(queries)

    @property
    def vocab_size(self) -> int:
        return self.first_token + self.keys + self.values

    def queries_at(self, pairs: int) -> int:
        """Queries per example with ``pairs`` pairs."""
        return pairs if self.queries is None else self.queries

    def max_len_at(self, length: int) -> int:
        return 2 * length + self.queries_at(length)

    def describe(self) -> str:
        extra = "" if self.queries is None else f", queries={self.queries}"
        if self.eval_lengths:
            extra += f", eval_lengths=[{', '.join(map(str, self.eval_lengths))}]"
        return f"mqar(pairs={self.length}, keys={self.keys}, values={self.values}{extra})"

    def sample(self, length: int, count: int, generator: torch.Generator) -> Example:
        pairs, queries = length, self.queries_at(length)
        keys = torch.rand(count, self.keys, generator=generator).argsort(-1)[:, :pairs]  # (B, P)
        values = torch.randint(self.values, (count, pairs), generator=generator)  # (B, P)
        asked = torch.rand(count, pairs, generator=generator).argsort(-1)[:, :queries]  # (B, Q)
        key_ids = self.first_token + keys
        value_ids = self.first_token + self.keys + values
        context = torch.stack([key_ids, value_ids], dim=-1).flatten(1)  # (B, 2P): k1 v1 k2 v2 ...
        source = torch.cat([context, key_ids.gather(1, asked)], dim=1)  # (B, 2P + Q)
        return Example(source, value_ids.gather(1, asked))

    def lm_batch(self, example: Example) -> LMBatch:
        targets = torch.full_like(example.source, IGNORE_INDEX)
        queries = example.answer.shape[1]
        targets[:, -queries:] = example.answer
        return LMBatch(ids=example.source, targets=targets)


def _sequence_factory(cls: type[SequenceTask], summary: str) -> Callable[..., SequenceTask]:
    """The registered factory of a `SequenceTask`: its signature is the spec's schema."""

    def factory(*, length: int = 16, vocab: int = 64, eval_lengths: list[int] = [],
                eval_size: int = 512) -> SequenceTask:
        return cls(length=length, vocab=vocab, eval_lengths=eval_lengths, eval_size=eval_size)

    factory.__name__ = factory.__qualname__ = cls.name
    factory.__doc__ = f"""{summary}

    Args:
        length: tokens per training sequence.
        vocab: number of symbols.
        eval_lengths: further lengths evaluated after training (length generalisation).
        eval_size: held-out examples per length.
    """
    return factory


copy = _sequence_factory(CopyTask, "Copy a random sequence (seq2seq); scored by exact match.")
reverse = _sequence_factory(ReverseTask, "Reverse a random sequence (seq2seq); scored by exact match.")
sort = _sequence_factory(SortTask, "Sort a random sequence (seq2seq); scored by exact match.")


def mqar(*, pairs: int = 8, keys: int = 64, values: int = 64, queries: Optional[int] = None,
         eval_lengths: list[int] = [], eval_size: int = 512) -> MQARTask:
    """Multi-query associative recall (Zoology, 2023), lm or seq2seq; scored by answer accuracy.

    Args:
        pairs: key-value pairs per training example.
        keys: size of the key alphabet (at least the largest number of pairs).
        values: size of the value alphabet.
        queries: keys asked per example; none asks every key once.
        eval_lengths: further numbers of pairs evaluated after training.
        eval_size: held-out examples per number of pairs.
    """
    return MQARTask(pairs=pairs, keys=keys, values=values, queries=queries,
                    eval_lengths=eval_lengths, eval_size=eval_size)


@hookimpl
def plugformer_register(registry) -> None:
    for factory in (copy, reverse, sort, mqar):
        registry.add("task", factory.__name__, factory)
