"""The ``text`` task: language modelling on real text, from files or the built-in corpus.

``text(path='corpus.txt', tokenizer=bytes, context=256)`` trains an ``lm`` model on random
windows of a text corpus; ``text(corpus='stdlib')`` uses the source of the running Python's
standard library (its exact content, and so every number measured on it, depends on the Python
version). Tokens come from `plugformer.tasks.corpus` (memory-mapped, split by position, built
once) and `plugformer.tasks.tokenizers` (``bytes``, or ``bpe(vocab=N)`` trained locally).

Scores: every `EvalResult` of this task carries loss per token, perplexity and bits per byte
(the loss summed over the predicted tokens, in bits, divided by the bytes those tokens stand for:
the batches carry ``target_bytes``). Bits per byte compare across tokenizers; loss per token does
not, so bits per byte (lower is better) is the task's primary metric, at the training context and
at each eval length. `TextTask.scores` recomputes them from a result's mean loss alone.

Shape legend: B windows, L tokens per window.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Iterable, Literal, Optional, Union

import attrs
import numpy as np
import torch
from torch import Tensor

from plugformer.tasks.base import Example, LMBatch, Task
from plugformer.tasks.metrics import EvalResult, batch_metrics, bits_per_byte, perplexity
from plugformer.hooks import hookimpl
from plugformer.tasks.corpus import CorpusFile, cache_root, find_files, load_tokens, spec_string, stdlib_files
from plugformer.tasks.tokenizers import Tokenizer, TokenizerCall

__all__ = ["TextTask", "TextBatch", "TextScores", "text", "text_metrics", "bits_per_byte"]

#: Most tokens in one held-out batch (rows x length): bounds the (B, L, V) logits of eval.
#: Seed of the validation windows (training range), apart from every training batch's seed.
VALIDATION_SEED = 0x7A11D

EVAL_BATCH_TOKENS = 16384


@attrs.frozen
class TextBatch(LMBatch):
    """An `LMBatch` that also says how many bytes each target token stands for.

    Attributes:
        target_bytes: bytes of the token at each target position, (B, L); end-of-text counts 1.
    """

    target_bytes: Optional[Tensor] = None


@attrs.frozen
class TextScores:
    """Held-out scores of a language model at one context length.

    Attributes:
        length: tokens per window.
        loss: mean cross-entropy per predicted token, in nats.
        perplexity: ``exp(loss)``.
        bits_per_byte: the summed loss in bits over the bytes of the predicted tokens.
        tokens, bytes: predicted tokens and the bytes they stand for.
    """

    length: int
    loss: float
    perplexity: float
    bits_per_byte: float
    tokens: int
    bytes: int


def text_metrics(logits: Tensor, batch: TextBatch) -> dict[str, float]:
    """`batch_metrics` of ``logits`` (B, L, V) plus ``bytes``: the bytes of the target tokens."""
    return batch_metrics(logits, batch.targets, batch.target_bytes)


class TextTask(Task):
    """Next-token prediction on windows of a text corpus (a ``shakespeare_char``-style recipe).

    Training batches are windows of ``context + 1`` tokens at uniform random starts in the
    training stream, a function of ``(seed, step)`` alone, so every rank of a distributed run
    draws the same global batch. Held-out windows are ``eval_size`` evenly spaced windows of the
    validation stream, the same in every run.

    Args:
        files: the corpus files, or None for the standard library.
        cache: the folder of the token streams.
        tokenizer: ``'bytes'``, ``bpe(vocab=N)`` (a spec call or its name) or a `Tokenizer`.
        context: tokens per training window.
        eval_lengths: further window lengths evaluated after training.
        eval_size: held-out windows per length.
        split: ``'position'`` (the end of every file is held out) or ``'files'`` (whole files).
        val_fraction: share of the bytes held out.
        source: how the corpus is written in `describe` (``corpus='stdlib'``, ``path='a.txt'``).

    Raises:
        ValueError: the split leaves too few tokens for a window of some length.
    """

    name = "text"
    kinds: ClassVar[tuple[str, ...]] = ("lm",)
    primary_metric: ClassVar[str] = "bits_per_byte"
    first_token: ClassVar[int] = 0

    def __init__(self, *, files: Optional[list[CorpusFile]] = None, cache: Optional[Path] = None,
                 tokenizer: Union[str, TokenizerCall, Tokenizer] = "bytes", context: int = 256,
                 eval_lengths: Iterable[int] = (), eval_size: int = 128, split: str = "position",
                 val_fraction: float = 0.05, source: str = "corpus='stdlib'") -> None:
        super().__init__(length=context, eval_lengths=eval_lengths, eval_size=eval_size)
        if files is None:
            files, cache = stdlib_files(), cache_root() / "text"
        self.source = source
        self.split = split
        self.val_fraction = float(val_fraction)
        self.data = load_tokens(files, Path(cache), tokenizer=tokenizer, split=split,
                                val_fraction=val_fraction)
        self.tokenizer = self.data.tokenizer
        self.pad_id = self.bos_id = self.eos_id = self.tokenizer.eot_id
        self._byte_lengths = torch.from_numpy(self.tokenizer.byte_lengths())
        for stream, lengths in ((self.data.train, (self.length,)), (self.data.val, self.lengths)):
            part = "training" if stream is self.data.train else "validation"
            if stream.size < max(lengths) + 1:
                raise ValueError(
                    f"the {part} split holds {stream.size} tokens, too few for a window of "
                    f"{max(lengths)} tokens and its next token; use a smaller context or "
                    f"eval_lengths, a larger corpus, or another split / val_fraction")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def max_len_at(self, length: int) -> int:
        return length

    def describe(self) -> str:
        parts = [self.source, f"tokenizer={self.tokenizer.describe()}", f"context={self.length}"]
        if self.eval_lengths:
            parts.append(f"eval_lengths=[{', '.join(map(str, self.eval_lengths))}]")
        if self.eval_size != 128:
            parts.append(f"eval_size={self.eval_size}")
        if self.split != "position":
            parts.append(f"split='{self.split}'")
        if self.val_fraction != 0.05:
            parts.append(f"val_fraction={self.val_fraction!r}")
        return f"text({', '.join(parts)})"

    # ------------------------------------------------------------------ windows

    def sample(self, length: int, count: int, generator: torch.Generator) -> Example:
        """``count`` training windows of ``length`` tokens and their next tokens."""
        starts = torch.randint(self.data.train.size - length, (count,), generator=generator)
        windows = self._windows(self.data.train, starts, length)  # (B, L + 1)
        return Example(windows[:, :-1], windows[:, 1:])

    def lm_batch(self, example: Example) -> LMBatch:
        return LMBatch(ids=example.source, targets=example.answer)

    def batch(self, step: int, batch_size: int, *, kind: str, seed: int = 0,
              generator: Optional[torch.Generator] = None) -> LMBatch:
        """Training batch number ``step``, a function of ``(seed, step)`` alone (see `Task.batch`)."""
        if generator is None:
            generator = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % 2**63)
        return self.layout(self.sample(self.length, batch_size, generator), kind)

    def eval_starts(self, length: int) -> Tensor:
        """Starts of the held-out windows at ``length`` in the validation stream, (N,)."""
        last = self.data.val.size - length - 1
        count = min(self.eval_size, last + 1)
        return torch.linspace(0, last, count, dtype=torch.float64).round().long().unique()

    def eval_batches(self, length: int, kind: str, *, batch_size: int = 256) -> list[TextBatch]:
        """The held-out windows at ``length``, at most ``EVAL_BATCH_TOKENS`` tokens a batch."""
        if kind not in self.kinds:
            raise ValueError(f"task 'text' serves lm models, not {kind!r}")
        key = (int(length), "text")
        if key not in self._eval_cache:
            windows = self._windows(self.data.val, self.eval_starts(length), length)
            self._eval_cache[key] = Example(windows[:, :-1], windows[:, 1:])
        return self._batches(self._eval_cache[key], length, batch_size)

    def validation_batches(self, length: int, kind: str, *, batch_size: int = 256) -> list[TextBatch]:
        """``eval_size`` windows of the *training* range at ``length``, drawn from a seed of their
        own: for choosing settings (a learning rate) without reading the held-out range, which
        stays for the reported scores."""
        if kind not in self.kinds:
            raise ValueError(f"task 'text' serves lm models, not {kind!r}")
        key = (int(length), "text:validation")
        if key not in self._eval_cache:
            generator = torch.Generator().manual_seed(VALIDATION_SEED + int(length))
            self._eval_cache[key] = self.sample(int(length), self.eval_size, generator)
        return self._batches(self._eval_cache[key], length, batch_size)

    def _batches(self, example: Example, length: int, batch_size: int) -> list[TextBatch]:
        """``example`` in batches of at most ``EVAL_BATCH_TOKENS`` tokens."""
        rows = max(1, min(batch_size, EVAL_BATCH_TOKENS // length))
        return [self._text_batch(example.source[i:i + rows], example.answer[i:i + rows])
                for i in range(0, example.source.shape[0], rows)]

    def _text_batch(self, ids: Tensor, targets: Tensor) -> TextBatch:
        return TextBatch(ids=ids, targets=targets, target_bytes=self._byte_lengths[targets])

    @staticmethod
    def _windows(stream: np.ndarray, starts: Tensor, length: int) -> Tensor:
        index = starts.numpy()[:, None] + np.arange(length + 1)  # (B, L + 1)
        return torch.from_numpy(np.asarray(stream[index], dtype=np.int64))

    # ------------------------------------------------------------------ scores

    def eval_totals(self, length: int) -> tuple[int, int]:
        """Predicted tokens and the bytes they stand for over the held-out set at ``length``."""
        batches = self.eval_batches(length, "lm")
        return (sum(b.targets.numel() for b in batches),
                sum(int(b.target_bytes.sum()) for b in batches))

    def scores(self, result: EvalResult) -> TextScores:
        """Perplexity and bits per byte of a held-out result of this task (`EvalResult.loss`
        is a mean over the fixed held-out tokens, so their count recovers the sum)."""
        tokens, num_bytes = self.eval_totals(result.length)
        return TextScores(length=result.length, loss=result.loss, perplexity=perplexity(result.loss),
                          bits_per_byte=bits_per_byte(result.loss * tokens, num_bytes),
                          tokens=tokens, bytes=num_bytes)


def text(*, path: Optional[str] = None, corpus: Optional[Literal["stdlib"]] = None,
         tokenizer: Union[str, TokenizerCall] = "bytes", context: int = 256,
         eval_lengths: list[int] = [], eval_size: int = 128,
         split: Literal["position", "files"] = "position", val_fraction: float = 0.05,
         cache_dir: Optional[str] = None) -> TextTask:
    """Language modelling on real text (lm); scored by loss, perplexity and bits per byte.

    Args:
        path: a text file, a directory of them, or a glob (``'data/*.txt'``).
        corpus: ``stdlib``: the source of the running Python's standard library.
        tokenizer: ``bytes`` (257 ids) or ``bpe(vocab=N)`` trained on the training split.
        context: tokens per training window.
        eval_lengths: longer windows evaluated after training.
        eval_size: held-out windows per length.
        split: ``position`` holds out the end of every file, ``files`` whole files.
        val_fraction: share of the bytes held out.
        cache_dir: where the token streams go. Default: beside the data; for ``stdlib``,
            ``$PLUGFORMER_CACHE`` or ``~/.cache/plugformer``.
    """
    if (path is None) == (corpus is None):
        raise ValueError("text needs one of path='corpus.txt' (a file, directory or glob) or "
                         "corpus='stdlib' (the built-in corpus)" +
                         (f", not both (got path={path!r})" if path is not None else ""))
    if path is not None:
        files, cache = find_files(path)
        source = f"path={spec_string(path)}"
    else:
        files, cache = stdlib_files(), cache_root() / "text"
        source = "corpus='stdlib'"
    if cache_dir is not None:
        cache = Path(cache_dir).expanduser()
        source += f", cache_dir={spec_string(cache_dir)}"
    return TextTask(files=files, cache=cache, tokenizer=tokenizer, context=context,
                    eval_lengths=eval_lengths, eval_size=eval_size, split=split,
                    val_fraction=val_fraction, source=source)


@hookimpl
def plugformer_register(registry) -> None:
    registry.add("task", "text", text)
