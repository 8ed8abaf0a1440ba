"""Tokenizers of the ``text`` task: ``bytes`` (no dependency) and ``bpe`` (byte-level BPE).

Both reserve one special id, end-of-text (``eot_id``), written between documents. Every id but
``eot_id`` stands for a byte string (`Tokenizer.token_bytes`), so decoding joins those bytes and
reads them as UTF-8 with replacement characters: a byte model's invalid UTF-8 never raises.

* `ByteTokenizer`: ids 0..255 are the bytes, 256 is end-of-text (vocabulary 257).
* `BPETokenizer`: a byte-level BPE (GPT-2's byte-to-character map, Radford et al. 2019) trained
  locally with Hugging Face ``tokenizers`` (``pip install plugformer[text]``); its ids come
  first and end-of-text is the last id, so ``vocab`` counts every id.

A tokenizer serialises to a dict of strings (`Tokenizer.to_dict`, `tokenizer_from_dict`): its
settings and, for ``bpe``, the trained tokenizer's JSON (vocabulary and merges).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from functools import lru_cache
from typing import Any, Iterable, Iterator, Optional, Protocol, Union

import numpy as np

__all__ = [
    "Tokenizer", "ByteTokenizer", "BPETokenizer", "TokenizerCall", "make_tokenizer",
    "tokenizer_from_dict", "byte_to_unicode", "DEFAULT_BPE_VOCAB",
]

DEFAULT_BPE_VOCAB = 4096


class TokenizerCall(Protocol):
    """A tokenizer written as a spec call, ``bpe(vocab=4096)``: its name and arguments."""

    name: str

    @property
    def kwargs(self) -> dict[str, Any]: ...


class Tokenizer(ABC):
    """Text to token ids and back; every id but `eot_id` stands for a byte string."""

    name: str = "tokenizer"

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, end-of-text included."""

    @property
    def eot_id(self) -> int:
        """The end-of-text id written between documents (the last id)."""
        return self.vocab_size - 1

    @property
    @abstractmethod
    def token_bytes(self) -> list[bytes]:
        """The bytes of every id, ``b""`` for end-of-text; ``len == vocab_size``."""

    @abstractmethod
    def encode(self, text: Union[str, bytes]) -> np.ndarray:
        """Token ids of ``text`` (str, or bytes read as UTF-8), (N,) int64; no end-of-text."""

    @abstractmethod
    def describe(self) -> str:
        """The tokenizer as a spec value: ``bytes``, ``bpe(vocab=4096)``."""

    @abstractmethod
    def to_dict(self) -> dict[str, str]:
        """Everything needed to rebuild this tokenizer, as strings (see `tokenizer_from_dict`)."""

    @property
    def dtype(self) -> np.dtype:
        """The smallest unsigned integer type that holds every id."""
        return np.dtype(np.uint8 if self.vocab_size <= 2**8 else
                        np.uint16 if self.vocab_size <= 2**16 else np.uint32)

    def byte_lengths(self) -> np.ndarray:
        """Bytes each id stands for, (vocab_size,) int64; end-of-text counts as one byte (the
        document boundary), so that every tokenizer of one text counts the same bytes."""
        lengths = np.array([len(b) for b in self.token_bytes], dtype=np.int64)
        lengths[self.eot_id] = 1
        return lengths

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of ``ids`` joined; end-of-text is dropped. Raises ValueError on an unknown id."""
        table = self.token_bytes
        out = []
        for i in np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1).tolist():
            if not 0 <= i < len(table):
                raise ValueError(f"{self.name}: token id {i} is outside the vocabulary "
                                 f"[0, {len(table)})")
            out.append(table[i])
        return b"".join(out)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; bytes that are not valid UTF-8 become U+FFFD, never an error."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


class ByteTokenizer(Tokenizer):
    """Bytes as tokens: ids 0..255 are the byte values, 256 is end-of-text."""

    name = "bytes"

    @property
    def vocab_size(self) -> int:
        return 257

    @property
    def token_bytes(self) -> list[bytes]:
        return _BYTE_TABLE

    def encode(self, text: Union[str, bytes]) -> np.ndarray:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return np.frombuffer(data, dtype=np.uint8).astype(np.int64)

    def describe(self) -> str:
        return "bytes"

    def to_dict(self) -> dict[str, str]:
        return {"name": "bytes"}


_BYTE_TABLE = [bytes([b]) for b in range(256)] + [b""]


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character, the alphabet of byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(printable, chars)}


def _hf() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise ImportError("the bpe tokenizer needs Hugging Face tokenizers: pip install "
                          "'plugformer[text]' (or pip install 'tokenizers>=0.15'), or use "
                          "tokenizer=bytes") from None
    return tokenizers


class BPETokenizer(Tokenizer):
    """Byte-level BPE trained locally with Hugging Face ``tokenizers`` (GPT-2's scheme).

    Construct with `BPETokenizer.train` or `BPETokenizer.from_json`; text is read as UTF-8.

    Args:
        model: a trained ``tokenizers.Tokenizer`` with the byte-level pre-tokenizer.
        vocab: the requested vocabulary (end-of-text included); the trained one may be smaller
            when the text has too few distinct pairs to merge.
    """

    name = "bpe"

    def __init__(self, model: Any, *, vocab: int = DEFAULT_BPE_VOCAB) -> None:
        self.model = model
        self.vocab = int(vocab)
        to_byte = {char: byte for byte, char in byte_to_unicode().items()}
        table: list[bytes] = [b""] * (model.get_vocab_size() + 1)
        for token, index in model.get_vocab().items():
            table[index] = bytes(to_byte[char] for char in token)
        self._table = table

    @staticmethod
    def check_vocab(vocab: int) -> int:
        """``vocab`` if a byte-level BPE can have it; ValueError otherwise."""
        if not 257 <= int(vocab) <= 2**32 - 1:
            raise ValueError(f"bpe vocab must be at least 257 (256 byte tokens and end-of-text), "
                             f"got {vocab}")
        return int(vocab)

    @classmethod
    def train(cls, texts: Iterable[str], *, vocab: int = DEFAULT_BPE_VOCAB) -> "BPETokenizer":
        """Train on ``texts`` (an iterable of strings, read once): ``vocab - 1`` BPE ids."""
        vocab = cls.check_vocab(vocab)
        hf = _hf()
        model = hf.Tokenizer(hf.models.BPE())
        model.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
        model.decoder = hf.decoders.ByteLevel()
        trainer = hf.trainers.BpeTrainer(
            vocab_size=vocab - 1, show_progress=False, special_tokens=[],
            initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
        model.train_from_iterator(_strings(texts), trainer=trainer)
        return cls(model, vocab=vocab)

    @classmethod
    def from_json(cls, text: str, *, vocab: int = DEFAULT_BPE_VOCAB) -> "BPETokenizer":
        """A tokenizer from the JSON that ``to_dict()["model"]`` holds."""
        return cls(_hf().Tokenizer.from_str(text), vocab=vocab)

    @property
    def vocab_size(self) -> int:
        return len(self._table)

    @property
    def token_bytes(self) -> list[bytes]:
        return self._table

    def encode(self, text: Union[str, bytes]) -> np.ndarray:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", errors="replace")
        return np.asarray(self.model.encode(text).ids, dtype=np.int64)

    def describe(self) -> str:
        return f"bpe(vocab={self.vocab})"

    def to_dict(self) -> dict[str, str]:
        return {"name": "bpe", "vocab": str(self.vocab), "model": self.model.to_str()}


def _strings(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"BPE trains on str, got {type(text).__name__}")
        yield text


def tokenizer_from_dict(data: dict[str, str]) -> Tokenizer:
    """The tokenizer that `Tokenizer.to_dict` wrote. Raises ValueError on an unknown name."""
    name = data.get("name")
    if name == "bytes":
        return ByteTokenizer()
    if name == "bpe":
        return BPETokenizer.from_json(data["model"], vocab=int(data["vocab"]))
    raise ValueError(f"unknown tokenizer {name!r} in a saved tokenizer; known: bytes, bpe")


def tokenizer_settings(value: Union[str, TokenizerCall, Tokenizer]) -> tuple[str, dict[str, Any]]:
    """``(name, arguments)`` of a tokenizer as a spec writes it: ``'bytes'``, ``bpe``,
    ``bpe(vocab=4096)``, or a `Tokenizer` already made (``name`` and ``{}``).

    Raises:
        ValueError: an unknown tokenizer name, unknown arguments, or a wrong vocab.
    """
    if isinstance(value, Tokenizer):
        return value.name, {}
    if isinstance(value, str):
        name, kwargs = value, {}
    elif isinstance(getattr(value, "name", None), str) and isinstance(getattr(value, "kwargs", None), dict):
        name, kwargs = value.name, dict(value.kwargs)
    else:
        raise ValueError(f"tokenizer must be bytes or bpe(vocab=N), got {value!r}")
    accepted = {"bytes": set(), "bpe": {"vocab"}}
    if name not in accepted:
        raise ValueError(f"unknown tokenizer {name!r}; use bytes or bpe(vocab=N)")
    unknown = set(kwargs) - accepted[name]
    if unknown:
        takes = ", ".join(sorted(accepted[name])) or "no arguments"
        raise ValueError(f"tokenizer {name} takes {takes}, got {', '.join(sorted(unknown))}")
    if name == "bpe":
        vocab = kwargs.get("vocab", DEFAULT_BPE_VOCAB)
        if isinstance(vocab, bool) or not isinstance(vocab, int):
            raise ValueError(f"bpe vocab must be an integer, got {vocab!r}")
        kwargs = {"vocab": BPETokenizer.check_vocab(vocab)}
    return name, kwargs


def make_tokenizer(value: Union[str, TokenizerCall, Tokenizer],
                   train_texts: Optional[Iterable[str]] = None) -> Tokenizer:
    """A tokenizer from a spec value; ``bpe`` trains on ``train_texts`` (required for it)."""
    if isinstance(value, Tokenizer):
        return value
    name, kwargs = tokenizer_settings(value)
    if name == "bytes":
        return ByteTokenizer()
    if train_texts is None:
        raise ValueError("a bpe tokenizer needs texts to train on")
    return BPETokenizer.train(train_texts, **kwargs)


def settings_json(value: Union[str, TokenizerCall, Tokenizer]) -> str:
    """The tokenizer's settings as canonical JSON, part of a cache key."""
    if isinstance(value, Tokenizer):
        return json.dumps(value.to_dict(), sort_keys=True)
    name, kwargs = tokenizer_settings(value)
    return json.dumps({"name": name, **kwargs}, sort_keys=True)
