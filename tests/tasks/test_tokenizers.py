"""The tokenizers of the text task (plugformer/tasks/tokenizers.py).

References: Python's own UTF-8 codec for ``bytes``, Hugging Face ``tokenizers``' decoder and
alphabet for ``bpe``, and the raw text for round trips.
"""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings, strategies as st

from plugformer.tasks.corpus import stdlib_files
from plugformer.tasks.tokenizers import (
    BPETokenizer, ByteTokenizer, byte_to_unicode, make_tokenizer, tokenizer_from_dict,
    tokenizer_settings,
)

tokenizers = pytest.importorskip("tokenizers")

SAMPLE = ("def naïve(café):\n    return '日本語 😀' * 3  # ünïcödé\n" * 40
          + "".join(f"word{i} and more words {i * i}\n" for i in range(300)))


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train([SAMPLE], vocab=400)


def test_bytes_encode_is_utf8_and_decode_never_raises():
    tok = ByteTokenizer()
    text = "héllo 😀"
    assert tok.encode(text).tolist() == list(text.encode("utf-8"))
    assert tok.encode(text.encode("utf-8")).tolist() == list(text.encode("utf-8"))
    assert tok.vocab_size == 257 and tok.eot_id == 256
    broken = [0xFF, ord("a"), 0xE6, 0x97, tok.eot_id, 0xC3]
    assert tok.decode(broken) == bytes([0xFF, ord("a"), 0xE6, 0x97, 0xC3]).decode("utf-8", "replace")
    assert "\ufffd" in tok.decode(broken)
    with pytest.raises(ValueError, match="token id 257 is outside the vocabulary"):
        tok.decode([257])


@settings(max_examples=60, deadline=None)
@given(st.text())
def test_bytes_round_trip(text):
    tok = ByteTokenizer()
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=0, max_size=200))
def test_bpe_round_trips_random_unicode(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_learns_merges_and_ids_fit_the_vocabulary(bpe):
    ids = bpe.encode(SAMPLE)
    assert bpe.vocab_size == 400 and bpe.eot_id == 399
    assert len(ids) < len(SAMPLE.encode("utf-8")) / 2  # merges pay off on repetitive text
    assert 0 <= ids.min() and ids.max() < bpe.eot_id
    assert bpe.dtype.name == "uint16" and ByteTokenizer().dtype.name == "uint16"


def test_byte_map_is_the_alphabet_of_hugging_face_byte_level():
    mapping = byte_to_unicode()
    assert sorted(mapping) == list(range(256))
    assert set(mapping.values()) == set(tokenizers.pre_tokenizers.ByteLevel.alphabet())


def test_token_bytes_agree_with_hugging_face_decoder(bpe):
    checked = merged = 0
    for index in range(bpe.eot_id):
        raw = bpe.token_bytes[index]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue  # part of a character: Hugging Face shows a replacement character
        assert bpe.model.decode([index]) == text
        checked += 1
        merged += len(raw) > 1
    assert checked > 128 and merged > 100
    lengths = bpe.byte_lengths()
    assert lengths[bpe.eot_id] == 1
    assert int(lengths[bpe.encode(SAMPLE)].sum()) == len(SAMPLE.encode("utf-8"))


def test_bpe_decode_of_a_cut_character_uses_replacement(bpe):
    ids = bpe.encode("😀").tolist()
    assert bpe.decode(ids[:-1] + [bpe.eot_id]).count("\ufffd") >= 1


def test_to_dict_round_trip(bpe):
    for tok in (ByteTokenizer(), bpe):
        data = tok.to_dict()
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in data.items())
        again = tokenizer_from_dict(data)
        assert type(again) is type(tok) and again.describe() == tok.describe()
        assert again.encode(SAMPLE).tolist() == tok.encode(SAMPLE).tolist()
        assert again.token_bytes == tok.token_bytes
    with pytest.raises(ValueError, match="unknown tokenizer 'wordpiece'"):
        tokenizer_from_dict({"name": "wordpiece"})


class _Call:
    def __init__(self, name, **kwargs):
        self.name, self.kwargs = name, kwargs


def test_settings_accept_names_and_calls_and_name_what_is_wrong():
    assert tokenizer_settings("bytes") == ("bytes", {})
    assert tokenizer_settings("bpe") == ("bpe", {"vocab": 4096})
    assert tokenizer_settings(_Call("bpe", vocab=512)) == ("bpe", {"vocab": 512})
    with pytest.raises(ValueError, match="unknown tokenizer 'wordpiece'; use bytes or bpe"):
        tokenizer_settings("wordpiece")
    with pytest.raises(ValueError, match="at least 257 .* got 100"):
        tokenizer_settings(_Call("bpe", vocab=100))
    with pytest.raises(ValueError, match="tokenizer bpe takes vocab, got merges"):
        tokenizer_settings(_Call("bpe", merges=3))
    with pytest.raises(ValueError, match="tokenizer bytes takes no arguments, got vocab"):
        tokenizer_settings(_Call("bytes", vocab=3))


def test_bpe_without_tokenizers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ImportError, match=r"pip install 'plugformer\[text\]'"):
        make_tokenizer("bpe", ["some text"])


@pytest.mark.slow
def test_bpe_round_trips_the_whole_builtin_corpus():
    texts = [f.path.read_text(encoding="utf-8") for f in stdlib_files()]
    tok = BPETokenizer.train(texts, vocab=2048)
    for text in texts:
        assert tok.decode(tok.encode(text)) == text
