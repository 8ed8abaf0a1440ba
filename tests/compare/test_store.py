"""runs.jsonl: appended as runs end, read back whole after a kill, keys stable across processes."""

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from plugformer.compare.store import (RunPlan, RunRecord, RunStore, environment, git_commit,
                                      run_key)

ROOT = Path(__file__).resolve().parents[2]
TASK = "copy(length=16, vocab=64)"


def _record(seed: int, lr: float = 1e-3, status: str = "ok") -> RunRecord:
    return RunRecord(variant="attn=dense", spec="encdec(attn=dense(), d_model=32)", task=TASK,
                     seed=seed, lr=lr, steps=100, status=status, primary="exact_match@16",
                     steps_done=100, metrics={"exact_match@16": 0.5 + seed / 10, "loss@16": 1.0},
                     losses=[3.0, 2.0, float("nan")], curve=[{"step": 50, "seconds": 1.5,
                     "flops": 1e9, "exact_match@16": 0.2}], times={"train_s": 3.0},
                     info={"device": "cpu", "backend": "math"})


def test_append_then_read_gives_equal_records(tmp_path):
    store = RunStore(tmp_path / "out")
    written = [_record(seed) for seed in range(3)]
    for record in written:
        store.append(record)
    read = store.read()
    assert [r.key for r in read] == [r.key for r in written]
    for got, want in zip(read, written):
        assert got.losses[:2] == want.losses[:2] and got.losses[2] != got.losses[2]  # NaN kept
        got.losses, want.losses = [], []
        assert got == want
    assert len(store.path.read_text().splitlines()) == 3


def test_a_truncated_last_line_is_dropped_then_cut_by_the_next_append(tmp_path, caplog):
    store = RunStore(tmp_path)
    for seed in range(3):
        store.append(_record(seed))
    data = store.path.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    store.path.write_bytes(data[: last_start + (len(data) - last_start) // 2])  # mid-line
    with caplog.at_level(logging.WARNING, logger="plugformer"):
        assert [r.seed for r in store.read()] == [0, 1]
    assert "torn last line" in caplog.text
    store.append(_record(7))
    assert [r.seed for r in store.read()] == [0, 1, 7]
    assert all(json.loads(line) for line in store.path.read_text().splitlines())


def test_a_sigkilled_writer_loses_no_finished_run(tmp_path):
    script = (
        "import os, signal, sys\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from plugformer.compare.store import RunRecord, RunStore\n"
        "store = RunStore(sys.argv[1])\n"
        "for seed in range(4):\n"
        "    store.append(RunRecord(variant='v', spec='s', task='t', seed=seed, lr=0.1, steps=1))\n"
        "handle = open(store.path, 'ab'); handle.write(b'{\"format\": \"plugformer.ru'); handle.flush()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path), str(ROOT)], check=False)
    assert done.returncode == -signal.SIGKILL
    assert [r.seed for r in RunStore(tmp_path).read()] == [0, 1, 2, 3]


def test_pending_lists_what_is_not_on_disk(tmp_path):
    store = RunStore(tmp_path)
    store.append(_record(0))
    store.append(_record(1, status="failed"))
    plan = [RunPlan(spec=_record(0).spec, task=TASK, seed=s, lr=lr, steps=100)
            for s in range(3) for lr in (1e-3, 3e-3)]
    assert store.pending(plan) == [p for p in plan if not (p.seed in (0, 1) and p.lr == 1e-3)]
    assert store.pending(plan, retry_failed=True) == [p for p in plan if not (p.seed == 0 and p.lr == 1e-3)]
    assert RunStore(tmp_path / "none").pending(plan) == plan


def test_a_key_written_twice_keeps_the_last_record(tmp_path):
    store = RunStore(tmp_path)
    store.append(_record(0, status="failed"))
    store.append(_record(0))
    assert [r.status for r in store.finished().values()] == ["ok"]


def test_keys_are_stable_across_processes_and_spellings():
    kwargs = dict(spec="lm(attn=bra(topk=2))", task=TASK, seed=3, lr=0.001, steps=300)
    here = run_key(**kwargs)
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "from plugformer.compare.store import run_key\n"
              f"print(run_key(spec={kwargs['spec']!r}, task={TASK!r}, seed=3, lr=1e-3, steps=300))")
    for hashseed in ("0", "12345"):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             check=True, env={**os.environ, "PYTHONHASHSEED": hashseed})
        assert out.stdout.strip() == here
    assert run_key(**{**kwargs, "seed": 4}) != here
    assert run_key(**{**kwargs, "lr": 0.0011}) != here
    assert run_key(**{**kwargs, "steps": 301}) != here
    assert run_key(**{**kwargs, "task": "copy(length=32, vocab=64)"}) != here
    assert RunPlan(**kwargs).key == here


def test_a_line_of_another_format_is_skipped_with_its_number(tmp_path, caplog):
    store = RunStore(tmp_path)
    store.append(_record(0))
    with open(store.path, "a") as handle:
        handle.write(json.dumps({"format": "something/2"}) + "\n")
    store.append(_record(1))
    with caplog.at_level(logging.WARNING, logger="plugformer"):
        assert [r.seed for r in store.read()] == [0, 1]
    assert "line 2" in caplog.text and "plugformer.run/1" in caplog.text


def test_from_dict_names_what_is_missing():
    with pytest.raises(ValueError, match="run record incomplete"):
        RunRecord.from_dict({"format": "plugformer.run/1", "variant": "v"})


def test_environment_and_git_commit(tmp_path):
    env = environment(tmp_path)
    assert env["git_commit"] is None  # tmp_path is no repository
    assert set(env) >= {"plugformer", "torch", "python", "git_commit"}
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:
        assert git_commit(ROOT).split("+")[0] == head.stdout.strip()
