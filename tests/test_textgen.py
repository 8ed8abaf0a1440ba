"""plugformer/textgen.py, the tokenizer in plugformer.save / load, and ``generate --text``.

References: the ids ``model.generate`` returns, decoded by hand from the tokenizer's byte table
(``bytes.decode("utf-8", errors="replace")``), and a tokenizer's own ``to_dict``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open

from plugformer.cli import main
from plugformer.io import TOKENIZER_KEY, CheckpointError, load, save
from plugformer.registry.builder import build
from plugformer.tasks.corpus import CACHE_ENV
from plugformer.tasks.tokenizers import BPETokenizer, ByteTokenizer
from plugformer.textgen import generate_text
from plugformer.train import train


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))


def _byte_model(seed: int = 0):
    torch.manual_seed(seed)
    return build("gpt_tiny(vocab=257, max_len=128)").eval()


def test_the_tokenizer_travels_in_the_metadata_as_strings(tmp_path):
    model = _byte_model()
    path = save(model, tmp_path / "m.safetensors", tokenizer=ByteTokenizer())
    with safe_open(str(path), framework="pt") as handle:
        assert json.loads(handle.metadata()[TOKENIZER_KEY]) == {"name": "bytes"}
    assert isinstance(load(path).tokenizer, ByteTokenizer)
    plain = save(model, tmp_path / "plain.safetensors")
    assert getattr(load(plain), "tokenizer", None) is None


def test_a_bpe_tokenizer_reloads_with_its_merges(tmp_path):
    texts = ["def main(argv):\n    return argv[0] + argv[1]\n" * 40, "import os, sys\n" * 30]
    tokenizer = BPETokenizer.train(texts, vocab=300)
    torch.manual_seed(0)
    model = build(f"gpt_tiny(vocab={tokenizer.vocab_size}, max_len=64)")
    restored = load(save(model, tmp_path / "bpe.safetensors", tokenizer=tokenizer)).tokenizer
    assert restored.to_dict() == tokenizer.to_dict()
    sample = "def main(argv):\n    import sys\n"
    assert restored.encode(sample).tolist() == tokenizer.encode(sample).tolist()
    assert len(restored.encode(sample)) < len(sample.encode())  # merges, not bytes


def test_a_damaged_tokenizer_is_a_checkpoint_error(tmp_path):
    class Broken:
        def to_dict(self):
            return {"name": "morse"}

    path = save(_byte_model(), tmp_path / "m.safetensors", tokenizer=Broken())
    with pytest.raises(CheckpointError, match="stored tokenizer does not load.*morse"):
        load(path)


def test_generate_text_decodes_what_generate_returns():
    model, tokenizer = _byte_model(), ByteTokenizer()
    prompt = "def main("
    ids = torch.tensor([list(prompt.encode())])
    new = model.generate(ids, 40, eos_id=tokenizer.eot_id, temperature=1.0, seed=5)[0].tolist()
    if tokenizer.eot_id in new:
        new = new[:new.index(tokenizer.eot_id)]
    expected = bytes(new).decode("utf-8", errors="replace")
    text = generate_text(model, prompt, tokenizer=tokenizer, max_new_tokens=40, temperature=1.0, seed=5)
    assert text == expected
    assert "\ufffd" in text  # an untrained byte model writes invalid UTF-8: shown, not raised
    whole = generate_text(model, prompt, tokenizer=tokenizer, max_new_tokens=40, temperature=1.0,
                          seed=5, include_prompt=True)
    assert whole == (prompt.encode() + bytes(new)).decode("utf-8", errors="replace")


def test_generate_text_needs_a_tokenizer_and_a_language_model():
    with pytest.raises(ValueError, match="no tokenizer: pass tokenizer="):
        generate_text(_byte_model(), "x")
    with pytest.raises(ValueError, match="language model"):
        generate_text(build("transformer_tiny(vocab=257)"), "x", tokenizer=ByteTokenizer())
    with pytest.raises(ValueError, match="64 token ids, fewer than the tokenizer's 257"):
        generate_text(build("gpt_tiny(vocab=64)"), "x", tokenizer=ByteTokenizer())


def test_a_trained_text_model_reloads_and_generates_the_same_text(tmp_path, capsys):
    result = train("gpt_tiny(dropout=0.0)", out=tmp_path / "run",
                   task="text(corpus=stdlib, context=32, eval_size=4)", steps=3, batch=4,
                   progress=False)
    (score,) = result.evals
    assert score.bits_per_byte == pytest.approx(score.loss / math.log(2))  # a byte per token
    assert f"bits per byte {score.bits_per_byte:.4f}" in "".join(capsys.readouterr())
    first, second = load(result.model_path), load(result.model_path)
    assert isinstance(first.tokenizer, ByteTokenizer)  # train saved it
    options = dict(max_new_tokens=24, temperature=1.0, top_p=0.9, seed=11)
    text = generate_text(first, "def main(", **options)
    assert generate_text(second, "def main(", **options) == text
    assert generate_text(first, "def main(", **options) == text

    assert main(["generate", str(result.model_path), "--text", "def main(", "-n", "24",
                 "--temperature", "1.0", "--top-p", "0.9", "--seed", "11"]) == 0
    assert capsys.readouterr().out == "def main(" + text + "\n"


def test_generate_text_option_errors(tmp_path, capsys):
    plain = save(_byte_model(), tmp_path / "plain.safetensors")
    assert main(["generate", str(plain), "--text", "x"]) == 2
    assert "saved without a tokenizer" in capsys.readouterr().err
    assert main(["generate", str(plain)]) == 2
    assert "either --input (token ids) or --text (a prompt), got neither" in capsys.readouterr().err
    assert main(["generate", str(plain), "--text", "x", "-i", "1,2"]) == 2
    assert "not both" in capsys.readouterr().err
