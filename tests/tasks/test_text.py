"""The text task (plugformer/tasks/text.py, corpus.py): splits, windows, caching, scores.

References: the raw file bytes (streams are rebuilt from them in the test), brute-force window
search, ``F.cross_entropy`` and the bytes of the target tokens for bits per byte.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plugformer.compare import compare
from plugformer.compare.variants import make_task
from plugformer.registry.builder import build
from plugformer.tasks.corpus import CACHE_ENV, CACHE_FOLDER, stdlib_files
from plugformer.tasks.text import TextBatch, bits_per_byte, text, text_metrics
from plugformer.tasks.tokenizers import BPETokenizer

SIZES = [0, 1, 2, 3, 7, 19, 20, 21, 100, 999, 4096]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))


def _random_files(folder, sizes, seed=0):
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(sizes):
        (folder / f"f{i:02d}.bin").write_bytes(bytes(rng.randrange(256) for _ in range(size)))
    return folder


def _windows(stream: np.ndarray, length: int) -> set[tuple[int, ...]]:
    if stream.size < length:
        return set()
    return {tuple(w) for w in np.lib.stride_tricks.sliding_window_view(stream, length).tolist()}


@pytest.mark.parametrize("split", ["position", "files"])
def test_no_validation_byte_inside_a_training_window(tmp_path, split):
    folder = _random_files(tmp_path / "data", SIZES)
    task = text(path=str(folder), context=8, eval_lengths=[16], split=split)
    eot = task.tokenizer.eot_id
    expected = {"train": [], "val": []}
    held_files = 0
    for entry in task.data.files:
        raw = (folder / entry["name"]).read_bytes()
        (a, b), (c, d) = entry["train"], entry["val"]
        assert a == 0 and b == c and d == len(raw) == entry["bytes"]  # the parts tile the file
        if split == "position":
            assert len(raw) // 20 - 3 <= d - c <= len(raw) // 20  # the last 5%, whole characters
        else:
            assert (b - a == 0) != (d - c == 0) or len(raw) == 0  # a file is on one side only
            held_files += d - c > 0
        for part, (lo, hi) in (("train", (a, b)), ("val", (c, d))):
            start = sum(len(x) for x in expected[part])
            tokens = entry[f"{part}_tokens"]
            assert tokens == [start, start + hi - lo]
            if hi > lo:
                expected[part].append(list(raw[lo:hi]) + [eot])
    if split == "files":
        assert 1 <= held_files < sum(1 for s in SIZES if s)
    for part, stream in (("train", task.data.train), ("val", task.data.val)):
        assert stream.tolist() == [t for chunk in expected[part] for t in chunk]
    training = _windows(np.asarray(task.data.train), task.length + 1)
    for step in range(50):
        batch = task.batch(step, 16, kind="lm", seed=3)
        rows = torch.cat([batch.ids, batch.targets[:, -1:]], 1)
        assert torch.equal(batch.ids[:, 1:], batch.targets[:, :-1])
        assert all(tuple(row) in training for row in rows.tolist())
    for length in task.lengths:
        held_out = _windows(np.asarray(task.data.val), length + 1)
        for batch in task.eval_batches(length, "lm"):
            rows = torch.cat([batch.ids, batch.targets[:, -1:]], 1)
            assert all(tuple(row) in held_out for row in rows.tolist())


def test_the_end_of_each_file_is_held_out_by_content(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a" * 950 + "Q" * 50)
    (data / "b.txt").write_text("b" * 1900 + "Q" * 100)
    task = text(path=str(data), context=16)
    assert ord("Q") not in task.data.train.tolist()
    assert task.data.val.tolist().count(ord("Q")) == 150
    assert set(task.data.val.tolist()) == {ord("Q"), task.tokenizer.eot_id}


def test_bpe_is_trained_on_the_training_split_only(tmp_path):
    rng = random.Random(1)
    train_text = " ".join("".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 7)))
                          for _ in range(3500))[:19000].ljust(19000)
    held_out = "xqzj" * 250
    (tmp_path / "c.txt").write_text(train_text + held_out)
    task = text(path=str(tmp_path / "c.txt"), tokenizer="bpe", context=16)
    task_with = make_task(f"text(path='{tmp_path / 'c.txt'}', tokenizer=bpe(vocab=300), context=16)")
    on_all = BPETokenizer.train([train_text + held_out], vocab=300)
    assert any(b"xq" in t or b"zj" in t for t in on_all.token_bytes)  # the check can fail
    for tok in (task.tokenizer, task_with.tokenizer):
        assert not any(p in t for t in tok.token_bytes for p in (b"xq", b"qz", b"zj", b"jx"))
    assert task_with.vocab_size == 300 and task.vocab_size <= 4096


def test_token_streams_are_built_once_and_reused(tmp_path):
    (tmp_path / "d.txt").write_text("hello world, " * 300)
    first = text(path=str(tmp_path / "d.txt"), tokenizer="bpe", context=16)
    folder = first.data.folder
    assert folder.parent == tmp_path / CACHE_FOLDER
    stats = {name: os.stat(folder / name) for name in ("train.bin", "val.bin", "meta.json", "tokenizer.json")}
    again = text(path=str(tmp_path / "d.txt"), tokenizer="bpe", context=16)
    assert again.data.folder == folder
    for name, stat in stats.items():
        now = os.stat(folder / name)
        assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns), name
    assert isinstance(again.data.train, np.memmap)
    (tmp_path / "d.txt").write_text("hello there, " * 300)  # new content, new streams
    assert text(path=str(tmp_path / "d.txt"), tokenizer="bpe", context=16).data.folder != folder


def test_directories_and_globs(tmp_path):
    (tmp_path / "books" / "part").mkdir(parents=True)
    (tmp_path / "books" / "one.txt").write_text("first book " * 50)
    (tmp_path / "books" / "part" / "two.txt").write_text("second book " * 50)
    (tmp_path / "books" / ".hidden").write_text("never read")
    task = text(path=str(tmp_path / "books"), context=8)
    assert [f["name"] for f in task.data.files] == ["one.txt", "part/two.txt"]
    again = text(path=str(tmp_path / "books"), context=8)  # its own cache is not corpus
    assert [f["name"] for f in again.data.files] == ["one.txt", "part/two.txt"]
    globbed = text(path=str(tmp_path / "books" / "**" / "*.txt"), context=8)
    assert [f["name"] for f in globbed.data.files] == ["one.txt", "part/two.txt"]
    assert globbed.data.train.tolist() == task.data.train.tolist()


def test_wrong_arguments_say_what_would_be_right(tmp_path):
    (tmp_path / "tiny.txt").write_text("abc")
    with pytest.raises(ValueError, match="path='corpus.txt'.*corpus='stdlib'"):
        text()
    with pytest.raises(ValueError, match="validation split holds 0 tokens"):
        text(path=str(tmp_path / "tiny.txt"), context=2)
    with pytest.raises(ValueError, match="split='files' needs at least two files"):
        text(path=str(tmp_path / "tiny.txt"), split="files")
    with pytest.raises(FileNotFoundError, match="corpus='stdlib'"):
        text(path=str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="serves lm models"):
        text(corpus="stdlib", context=8).batch(0, 2, kind="encdec")


def test_batches_are_a_function_of_seed_and_step():
    task, other = text(corpus="stdlib", context=16), text(corpus="stdlib", context=16)
    a = task.batch(5, 8, kind="lm", seed=2)
    assert torch.equal(a.ids, other.batch(5, 8, kind="lm", seed=2).ids)
    assert not torch.equal(a.ids, task.batch(6, 8, kind="lm", seed=2).ids)
    generator = torch.Generator().manual_seed(2 * 1_000_003 + 5)
    assert torch.equal(a.ids, task.batch(0, 8, kind="lm", generator=generator).ids)


def test_validation_windows_come_from_the_training_range_with_their_bytes(tmp_path):
    """Choosing a learning rate reads training-range windows (never the held-out range), and
    they carry bytes, so a text comparison chooses on validation bits per byte."""
    _random_files(tmp_path / "data", [3000, 5000])
    task = text(path=str(tmp_path / "data"), context=16, eval_size=24)
    train, val = _windows(task.data.train, 17), _windows(task.data.val, 17)
    batches = task.validation_batches(16, "lm")
    assert sum(b.ids.shape[0] for b in batches) == 24
    for batch in batches:
        assert isinstance(batch, TextBatch) and torch.equal(batch.target_bytes, torch.ones_like(batch.targets))
        for ids, targets in zip(batch.ids.tolist(), batch.targets.tolist()):
            window = tuple(ids + targets[-1:])
            assert window in train and window not in val
    assert torch.equal(batches[0].ids, text(path=str(tmp_path / "data"), context=16, eval_size=24)
                       .validation_batches(16, "lm")[0].ids)


@pytest.mark.parametrize("tokenizer", ["bytes", "bpe(vocab=320)"])
def test_bits_per_byte_is_loss_times_tokens_over_bytes(tmp_path, tokenizer):
    source = "".join(f.path.read_text(encoding="utf-8") for f in stdlib_files()[:3])
    source += "naïve 日本語 😀\n" * 50
    (tmp_path / "e.txt").write_text(source, encoding="utf-8")
    task = make_task(f"text(path='{tmp_path / 'e.txt'}', tokenizer={tokenizer}, context=32, "
                     f"eval_lengths=[64], eval_size=16)")
    result = compare("gpt_tiny", task, steps=3, batch=4, timing_repeats=1).rows[0]
    torch.manual_seed(0)
    model = build("gpt_tiny", vocab=task.vocab_size, max_len=task.max_len).eval()
    raw = task.tokenizer.token_bytes
    held_out = source.encode("utf-8")[task.data.files[0]["val"][0]:]
    assert sum(len(raw[t]) for t in task.data.val.tolist()) == len(held_out)  # the table is right
    for length in task.lengths:
        loss_sum, tokens, num_bytes = 0.0, 0, 0
        batches = task.eval_batches(length, "lm")
        for batch in batches:
            targets = batch.targets.flatten().tolist()
            tokens += len(targets)
            num_bytes += sum(len(raw[t]) or 1 for t in targets)  # end-of-text: one byte
            with torch.no_grad():
                logits = batch.logits(model).flatten(0, 1)
                loss_sum += float(F.cross_entropy(logits, batch.targets.flatten(), reduction="sum"))
        if tokenizer == "bytes":
            assert num_bytes == tokens
        else:
            assert num_bytes > 1.5 * tokens
        scores = task.scores(result.eval_at(length))
        assert (scores.tokens, scores.bytes) == (tokens, num_bytes)
        expected = result.eval_at(length).loss * tokens / num_bytes / math.log(2)
        assert scores.bits_per_byte == pytest.approx(expected, rel=1e-9)
        assert scores.perplexity == pytest.approx(math.exp(result.eval_at(length).loss))
        assert result.eval_at(length).bits_per_byte == pytest.approx(expected, rel=1e-9)
        assert result.eval_at(length).perplexity == pytest.approx(scores.perplexity)
        summed = [text_metrics(batch.logits(model).detach(), batch) for batch in batches]
        assert isinstance(batches[0], TextBatch)
        assert sum(s["bytes"] for s in summed) == num_bytes
        assert bits_per_byte(sum(s["loss_sum"] for s in summed), num_bytes) == pytest.approx(
            loss_sum / num_bytes / math.log(2), rel=1e-5)


def test_stdlib_corpus_describes_itself_and_reloads():
    task = make_task("text(corpus=stdlib, context=32, eval_lengths=[64])")
    assert task.describe() == "text(corpus='stdlib', tokenizer=bytes, context=32, eval_lengths=[64])"
    sizes = [entry["bytes"] for entry in task.data.files]
    assert sum(sizes) == sum(f.path.stat().st_size for f in stdlib_files()) > 1_000_000
    assert task.data.folder.parent.parent == __import__("pathlib").Path(os.environ[CACHE_ENV])
    assert make_task(task.describe()).data.folder == task.data.folder


def test_byte_gpt_tiny_learns_the_stdlib():
    task = text(corpus="stdlib", context=64, eval_size=32)
    row = compare("gpt_tiny", task, steps=30, batch=8, lr=3e-3, timing_repeats=1).rows[0]
    assert row.ok, row.error
    first, last = row.losses[0], sum(row.losses[-5:]) / 5
    assert first > math.log(257) - 0.5  # starts near chance
    assert last < first - 1.5
    assert task.scores(row.eval_at(64)).bits_per_byte < math.log2(257) - 1.5
    assert task.primary_metric == "bits_per_byte"
    assert row.eval_at(64).bits_per_byte == pytest.approx(task.scores(row.eval_at(64)).bits_per_byte)


@pytest.mark.slow
def test_two_gloo_processes_follow_the_one_process_losses(tmp_path):
    """Both ranks build the (empty) cache at once under its lock, then draw the same global batch."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    from plugformer.train import train

    spec, task = "gpt_tiny", "text(corpus=stdlib, context=32, eval_size=8)"
    out = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "plugformer.train", spec, "--task", task, "--steps", "6", "--batch", "8",
               "--lr", "1e-2", "--no-progress", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected = train(spec, task=task, out=tmp_path / "one", steps=6, batch=8, lr=1e-2,
                     progress=False, evaluate_at_end=False).losses
    assert losses == pytest.approx(expected, abs=1e-5)
