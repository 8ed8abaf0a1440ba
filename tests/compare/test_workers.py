"""A comparison shared by workers through a database (compare/db.py, workers.py): each run is
claimed once, a killed worker's run is redone by another and counted once, and the results equal
a one-process comparison's, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from plugformer.compare import cli as compare_cli
from plugformer.compare.search import Candidate, successive_halving
from plugformer.compare.store import RunPlan, RunRecord, RunStore

sa = pytest.importorskip("sqlalchemy")
pytest.importorskip("matplotlib")

from plugformer.compare.db import MAX_ATTEMPTS, STALE_BEATS, RunQueue, engine_url, sqlite_url  # noqa: E402,E501
from tests.compare.final_results import final

SPEC = "transformer_tiny(d_model=32, heads=2, layers=1, ffn=relu(d_ff=64), attn={dense, fused})"
TASK = "copy(length=6, vocab=8, eval_size=32)"
ARGV = [SPEC, "--task", TASK, "--steps", "24", "--batch", "8", "--timing-repeats", "1",
        "--seeds", "2", "--curve-points", "2", "--threads", "1"]
ROOT = Path(__file__).resolve().parents[2]
_STARTED = re.compile(r"run ([0-9a-f]{16}) \(.*\) started, attempt (\d+)")




#: Successive halving over 2 variants x 2 rates: rungs of 4 and 2 runs, then 2 runs of the
#: survivors' second seed, each batch shared by the workers once the one before is done.
BUDGET = ["--lr", "1e-3,1e-2", "--budget", "120"]


def _one_process(tmp_path_factory, *extra: str) -> dict:
    """results.json of the same comparison in this process, without workers or a database."""
    out = tmp_path_factory.mktemp("one-process")
    parser = argparse.ArgumentParser()
    compare_cli.add_compare_arguments(parser)
    status = compare_cli.run_compare_command(parser.parse_args([*ARGV, *extra, "--out", str(out)]))
    assert status == 0
    return final(out)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    return _one_process(tmp_path_factory)


def _launch(*extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "plugformer", "compare", *ARGV, *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rows(url: str) -> list:
    engine = sa.create_engine(engine_url(url))
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT key, variant, status, attempts, worker "
                                    "FROM plugformer_runs ORDER BY id")).all()
    engine.dispose()
    return rows


def _check_once(out: Path, url: str, log: str, one_process: dict, *, redone: set = frozenset(),
                runs: int = 4):
    """Every run done, claimed once (twice for ``redone``), on disk once; the results equal the
    one-process comparison's."""
    rows = _rows(url)
    assert len(rows) == runs and all(row.status == "done" for row in rows)
    assert {row.key: row.attempts for row in rows} == {row.key: 1 + (row.key in redone) for row in rows}
    starts = Counter(key for key, _ in _STARTED.findall(log))
    assert starts == {row.key: 1 + (row.key in redone) for row in rows}, log
    records = RunStore(out).read()
    assert sorted(r.key for r in records) == sorted(row.key for row in rows)
    assert final(out) == one_process


@pytest.mark.slow
def test_two_workers_on_sqlite_run_each_run_once_and_equal_one_process(tmp_path, one_process):
    out = tmp_path / "out"
    process = _launch("--workers", "2", "--out", str(out))
    stdout, log = process.communicate(timeout=300)
    assert process.returncode == 0, log
    assert "report.html" in stdout and (out / "report.html").exists()
    _check_once(out, sqlite_url(out), log, one_process)
    (out / "report.html").unlink()
    assert compare_cli.run_report_command(argparse.Namespace(directory=str(out), target=None)) == 0
    assert (out / "report.html").exists()  # plugformer report reads the exported runs.jsonl


@pytest.mark.slow
def test_two_workers_share_a_budget_search_rung_by_rung(tmp_path, tmp_path_factory):
    one_process = _one_process(tmp_path_factory, *BUDGET)
    out = tmp_path / "out"
    process = _launch(*BUDGET, "--workers", "2", "--out", str(out))
    stdout, log = process.communicate(timeout=300)
    assert process.returncode == 0, log
    _check_once(out, sqlite_url(out), log, one_process, runs=8)
    steps = [row.steps for row in RunStore(out).read()]
    assert steps == [10] * 4 + [20] * 4  # the rungs in the order one process plans them
    assert one_process["search"]["rungs"] == [{"candidates": 4, "steps": 10},
                                              {"candidates": 2, "steps": 20}]


@pytest.mark.slow
def test_a_killed_workers_run_is_redone_by_another_and_counted_once(tmp_path, one_process):
    out = tmp_path / "out"
    out.mkdir()
    url = sqlite_url(out)
    victim = _launch("--workers", "1", "--storage", url, "--heartbeat", "0.2")
    deadline, held = time.monotonic() + 120, None
    while held is None and time.monotonic() < deadline and victim.poll() is None:
        try:
            held = next((row for row in _rows(url) if row.status == "running"), None)
        except sa.exc.OperationalError:  # the tables are not there yet
            pass
        time.sleep(0.02)
    assert held is not None, "the worker never held a run"
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL and held.worker.endswith(f":{victim.pid}")
    assert next(row for row in _rows(url) if row.key == held.key).status == "running"
    _, killed_log = victim.communicate()

    process = _launch("--workers", "1", "--storage", url, "--out", str(out))
    stdout, log = process.communicate(timeout=300)
    assert process.returncode == 0, log
    assert re.search(rf"taking over run {held.key} .* from {re.escape(held.worker)}", log), log
    _check_once(out, url, killed_log + log, one_process, redone={held.key})
    redone = next(row for row in _rows(url) if row.key == held.key)
    assert redone.worker.endswith(f":{process.pid}")


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """The URL of a PostgreSQL server started on a temporary folder, stopped afterwards:
    pgserver's binaries, else the system's initdb / pg_ctl (not as root)."""
    folder = tmp_path_factory.mktemp("pgdata")
    try:
        import pgserver
    except ImportError:
        pgserver = None
    if pgserver is not None:
        server = pgserver.get_server(folder, cleanup_mode="stop")
        yield server.get_uri()
        server.cleanup()
        return
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb")]
    if not bins or bins[0] is None:
        pytest.skip("no PostgreSQL: neither pgserver (pip install 'plugformer[test]') nor initdb")
    if os.geteuid() == 0:
        pytest.skip("PostgreSQL refuses to run as root and pgserver (which handles that) is "
                    "not installed: pip install 'plugformer[test]'")
    bin_dir = Path(bins[0]).parent
    data = folder / "data"
    subprocess.run([bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust"],
                   check=True, capture_output=True)
    subprocess.run([bin_dir / "pg_ctl", "-D", data, "-w", "-l", folder / "log", "-o",
                    f"-h '' -k {folder}", "start"], check=True, capture_output=True)
    yield f"postgresql://postgres@/postgres?host={folder}"
    subprocess.run([bin_dir / "pg_ctl", "-D", data, "-w", "stop"], capture_output=True)


@pytest.mark.slow
def test_a_worker_joins_on_postgresql_and_the_result_equals_one_process(tmp_path, postgres,
                                                                         one_process):
    pytest.importorskip("psycopg2")
    out = tmp_path / "out"
    process = _launch("--workers", "1", "--storage", postgres, "--out", str(out))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if _rows(postgres):
                break
        except sa.exc.ProgrammingError:  # the tables are not there yet
            pass
        time.sleep(0.05)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    joined = subprocess.run([sys.executable, "-m", "plugformer", "compare", "--join", postgres,
                             "--threads", "1"], env=env, capture_output=True, text=True, timeout=300)
    stdout, log = process.communicate(timeout=300)
    assert process.returncode == 0 and joined.returncode == 0, log + joined.stderr
    _check_once(out, postgres, log + joined.stderr, one_process)
    assert not (out / "runs.db").exists()


def _plans(n: int) -> list[tuple[str, RunPlan]]:
    return [(f"v{i}", RunPlan(spec=f"s{i}", task="t", seed=0, lr=1e-3, steps=5)) for i in range(n)]


def test_a_run_is_claimed_by_one_worker_and_planning_twice_adds_nothing(tmp_path):
    url = sqlite_url(tmp_path)
    first = RunQueue.create(url, {"specs": ["a"]}, name="c")
    second = RunQueue.create(url, {"specs": ["a"]}, name="c")
    first.add(_plans(3))
    second.add(_plans(3))
    assert len(first.rows()) == 3
    claims = [first.claim(), second.claim(), second.claim(), first.claim()]
    assert claims[3] is None and len({c.id for c in claims[:3]}) == 3
    assert all(c.attempts == 1 for c in claims[:3])


def test_a_silent_run_is_taken_over_and_the_late_finish_is_dropped(tmp_path):
    url = sqlite_url(tmp_path)
    dead = RunQueue.create(url, {"specs": ["a"]}, name="c", heartbeat=0.01)
    alive = RunQueue.join(url)
    assert alive.heartbeat == 0.01  # the comparison's, not the joiner's default
    dead.add(_plans(1))
    lost = dead.claim()
    assert alive.claim() is None  # seen once: not stale yet
    time.sleep(STALE_BEATS * 0.01 + 0.05)
    taken = alive.claim()
    assert taken is not None and taken.id == lost.id and taken.attempts == 2
    record = RunRecord(variant="v0", spec="s0", task="t", seed=0, lr=1e-3, steps=5)
    assert not dead.beat(lost) and not dead.finish(lost, record)
    assert alive.finish(taken, record)
    assert list(alive.records()) == [(lost.plan.key, "v0")]


def test_a_run_that_kills_every_worker_is_recorded_as_failed(tmp_path):
    queue = RunQueue.create(sqlite_url(tmp_path), {"specs": ["a"]}, name="c", heartbeat=0.01)
    queue.add(_plans(1))
    assert queue.claim().attempts == 1
    for attempt in range(2, MAX_ATTEMPTS + 2):
        assert queue.claim() is None  # seen running: not stale yet
        time.sleep(STALE_BEATS * 0.01 + 0.05)
        taken = queue.claim()
        assert (taken.attempts if taken else None) == (attempt if attempt <= MAX_ATTEMPTS else None)
    (record,) = queue.records().values()
    assert record.status == "failed" and f"on each of {MAX_ATTEMPTS} attempts" in record.error


def test_the_same_name_with_other_settings_is_refused(tmp_path):
    url = sqlite_url(tmp_path)
    RunQueue.create(url, {"specs": ["a"]}, name="c")
    with pytest.raises(ValueError, match=r"'c' .* has other settings: join it with --join"):
        RunQueue.create(url, {"specs": ["b"]}, name="c")
    RunQueue.create(url, {"specs": ["b"]}, name="d")
    with pytest.raises(ValueError, match=r"name one with --study; comparisons there: c, d"):
        RunQueue.join(url)


def test_a_search_plans_each_rung_at_once_and_decides_as_run_by_run():
    quality = {Candidate(f"v{i}", 1e-3): q for i, q in enumerate([0.2, 0.9, 0.5, 0.7])}

    def run(candidate, seed, steps):
        value = quality[candidate] * min(1.0, steps / 100) + 0.001 * seed
        return RunRecord(variant=candidate.variant, spec=candidate.variant, task="t", seed=seed,
                         lr=candidate.lr, steps=steps, steps_done=steps,
                         metrics={"val_exact_match@4": value})

    batches = []

    def run_many(jobs):
        batches.append(jobs)
        return [run(*job) for job in jobs]

    one = successive_halving(list(quality), budget=400, seeds=[0, 1], run=run,
                             metric="val_exact_match@4")
    many = successive_halving(list(quality), budget=400, seeds=[0, 1], run=run,
                              metric="val_exact_match@4", run_many=run_many)
    assert many == one
    assert [len(b) for b in batches] == [4, 2, 2]  # two rungs, then the survivors' second seed


def test_plain_compare_needs_no_database_packages():
    code = ("import sys, plugformer, plugformer.compare, plugformer.compare.cli; "
            "print(sorted(m for m in ('sqlalchemy', 'optuna', 'psycopg2') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    assert done.stdout.strip() == "[]"


def test_workers_go_round_robin_over_the_gpus_and_share_the_cores(monkeypatch):
    import torch

    from plugformer.compare.workers import worker_device, worker_threads

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert [worker_device("cuda", i) for i in range(5)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]
    assert [worker_device("cuda:1", i) for i in range(2)] == ["cuda:1", "cuda:1"]
    assert worker_device("cpu", 4) == "cpu"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match="no GPU is visible here; use --device cpu"):
        worker_device("cuda", 0)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert [worker_threads(None, n) for n in (1, 4, 5, 32)] == [16, 4, 3, 1]
    assert worker_threads(2, 4) == 2
    with pytest.raises(ValueError, match="--threads must be at least 1, got 0"):
        worker_threads(0, 1)
