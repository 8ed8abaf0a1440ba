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
    ``queries`` of those keys; the answer to each query is its key's value. Keys and values come
    from disjoint ranges of ``keys`` and ``values`` symbols.

    Two layouts:

    * short (``length`` none): the queries follow the pairs at once, in random order, so a
      source is ``2 * pairs + queries`` tokens and a "length" counts key-value pairs
      (``eval_lengths=[16]`` evaluates with 16 pairs).
    * long (``length`` set; Zoology's ``multiquery_ar``): the pairs, then ``length - 2 * pairs``
      tokens of one filler symbol with the queries at random even offsets among them, so the
      number of facts stays fixed while the distance from fact to query grows with ``length``.
      Offset ``2 * g`` (``g`` in ``[0, slots)``, ``slots = (length - 2 * pairs) // 2``) is drawn
      with probability proportional to ``(g + 1) ** (power - 1)`` without replacement, as Zoology
      does (``power=1`` is uniform). Here a "length" counts tokens, so ``eval_lengths=[2048]``
      evaluates with the same pairs at 2,048 tokens. Zoology fills with random tokens of the
      whole vocabulary (``random_non_queries``); here the filler is one symbol of its own, so a
      query is exactly a key token after the pairs. Values may repeat within an example, as in
      the short layout (Zoology draws distinct values).

    * ``lm`` form: ``ids`` = the source; the target at each query position is its value, every
      other position carries no loss (``IGNORE_INDEX``), as in Zoology.
    * ``encdec`` form: the encoder reads the source; the decoder writes the answers in the order
      the queries appear (no eos: the number of answers is fixed).

    Scored by answer accuracy (``accuracy``), over the query positions only.

    Args:
        pairs: key-value pairs per training example.
        keys, values: sizes of the key and value alphabets; ``keys >= pairs`` at every length.
        queries: queries per example; none means one per pair (every key asked once).
        length: tokens per source in the long layout; none is the short layout.
        power: exponent of the power law of query offsets in the long layout. Default: 0.01
            (Zoology's ``train_power_a``), which favours queries close to the pairs.
        eval_lengths, eval_size, eval_seed: see `Task`.
    """

    name = "mqar"
    kinds: ClassVar[tuple[str, ...]] = ("lm", "encdec")
    primary_metric: ClassVar[str] = "accuracy"
    eos_in_target: ClassVar[bool] = False

    def __init__(self, *, pairs: int = 8, keys: int = 64, values: int = 64,
                 queries: Optional[int] = None, length: Optional[int] = None, power: float = 0.01,
                 eval_lengths: Iterable[int] = (), eval_size: int = 512,
                 eval_seed: int = 2024) -> None:
        super().__init__(length=pairs if length is None else length, eval_lengths=eval_lengths,
                         eval_size=eval_size, eval_seed=eval_seed)
        if values < 1:
            raise ValueError(f"mqar: values must be >= 1, got {values}")
        self.long = length is not None
        pair_counts = (int(pairs),) if self.long else self.lengths
        if pairs < 1:
            raise ValueError(f"mqar: pairs must be >= 1, got {pairs}")
        if keys < max(pair_counts):
            raise ValueError(f"mqar: keys={keys} cannot make {max(pair_counts)} distinct keys; "
                             f"use keys >= the largest number of pairs")
        if queries is not None and not 1 <= queries <= min(pair_counts):
            raise ValueError(f"mqar: queries must be between 1 and the smallest number of pairs "
                             f"({min(pair_counts)}), got {queries}")
        if not power > 0:
            raise ValueError(f"mqar: power must be > 0 (1 is uniform), got {power}")
        self.pairs = int(pairs)
        self.keys = int(keys)
        self.values = int(values)
        self.queries = None if queries is None else int(queries)
        self.power = float(power)
        if self.long:
            asked = self.queries_at(self.pairs)
            shortest = min(self.lengths)
            if (shortest - 2 * self.pairs) // 2 < asked:
                raise ValueError(f"mqar: length={shortest} leaves {(shortest - 2 * self.pairs) // 2} "
                                 f"query slots after {self.pairs} pairs for {asked} queries; use "
                                 f"length >= {2 * self.pairs + 2 * asked}")

    @property
    def vocab_size(self) -> int:
        return self.first_token + self.keys + self.values + int(self.long)

    @property
    def filler_id(self) -> int:
        """The filler symbol of the long layout (the last id of the vocabulary)."""
        return self.first_token + self.keys + self.values

    def queries_at(self, pairs: int) -> int:
        """Queries per example with ``pairs`` pairs."""
        return pairs if self.queries is None else self.queries

    def max_len_at(self, length: int) -> int:
        if self.long:
            return length
        return 2 * length + self.queries_at(length)

    def describe(self) -> str:
        extra = "" if self.queries is None else f", queries={self.queries}"
        if self.long:
            extra += f", length={self.length}, power={self.power:g}"
        if self.eval_lengths:
            extra += f", eval_lengths=[{', '.join(map(str, self.eval_lengths))}]"
        return f"mqar(pairs={self.pairs}, keys={self.keys}, values={self.values}{extra})"

    def sample(self, length: int, count: int, generator: torch.Generator) -> Example:
        pairs = self.pairs if self.long else length
        queries = self.queries_at(pairs)
        keys = torch.rand(count, self.keys, generator=generator).argsort(-1)[:, :pairs]  # (B, P)
        values = torch.randint(self.values, (count, pairs), generator=generator)  # (B, P)
        asked = torch.rand(count, pairs, generator=generator).argsort(-1)[:, :queries]  # (B, Q)
        key_ids = self.first_token + keys
        value_ids = self.first_token + self.keys + values
        context = torch.stack([key_ids, value_ids], dim=-1).flatten(1)  # (B, 2P): k1 v1 k2 v2 ...
        if not self.long:
            source = torch.cat([context, key_ids.gather(1, asked)], dim=1)  # (B, 2P + Q)
            return Example(source, value_ids.gather(1, asked))
        slots = (length - 2 * pairs) // 2
        weights = torch.arange(1, slots + 1, dtype=torch.float64) ** (self.power - 1)
        offsets = torch.multinomial(weights.expand(count, slots), queries, replacement=False,
                                    generator=generator)  # (B, Q), slot of the query asking asked[:, j]
        offsets, order = offsets.sort(-1)
        asked = asked.gather(1, order)  # (B, Q) in reading order
        source = torch.full((count, length), self.filler_id, dtype=torch.long)
        source[:, :2 * pairs] = context
        source.scatter_(1, 2 * pairs + 2 * offsets, key_ids.gather(1, asked))  # (B, L)
        return Example(source, value_ids.gather(1, asked))

    def lm_batch(self, example: Example) -> LMBatch:
        targets = torch.full_like(example.source, IGNORE_INDEX)
        if self.long:
            source = example.source
            is_query = (source >= self.first_token) & (source < self.first_token + self.keys)
            is_query[:, :2 * self.pairs] = False  # (B, L): the keys after the pairs
            targets[is_query] = example.answer.flatten()
            return LMBatch(ids=source, targets=targets)
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
         length: Optional[int] = None, power: float = 0.01, eval_lengths: list[int] = [],
         eval_size: int = 512) -> MQARTask:
    """Multi-query associative recall (Zoology, 2023), lm or seq2seq; scored by answer accuracy.

    Args:
        pairs: key-value pairs per training example.
        keys: size of the key alphabet (at least the largest number of pairs).
        values: size of the value alphabet.
        queries: keys asked per example; none asks every key once.
        length: tokens per example in Zoology's long layout (pairs, then the queries among
            filler up to ``length``); none puts the queries right after the pairs.
        power: power law of the query offsets in the long layout (Zoology's ``power_a``; 1 is
            uniform). Default: 0.01.
        eval_lengths: further lengths evaluated after training: numbers of pairs, or numbers of
            tokens when ``length`` is set.
        eval_size: held-out examples per length.

    Raises:
        ValueError: keys fewer than pairs, queries outside 1..pairs, power <= 0, or a length
            with fewer than ``queries`` slots after the pairs (``length < 2 * pairs + 2 * queries``).
    """
    return MQARTask(pairs=pairs, keys=keys, values=values, queries=queries, length=length,
                    power=power, eval_lengths=eval_lengths, eval_size=eval_size)


@hookimpl
def plugformer_register(registry) -> None:
    for factory in (copy, reverse, sort, mqar):
        registry.add("task", factory.__name__, factory)
