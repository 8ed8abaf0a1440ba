"""Nothing lost (compare/runner.py, store.py, cli.py): runs on disk as they end, --resume after a
SIGKILL gives the uninterrupted result, Ctrl-C shows what finished, report.html from the runs."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from plugformer.compare import cli as compare_cli
from plugformer.compare import compare
from plugformer.compare.runner import Interrupted
from plugformer.compare.store import RunStore
from tests.compare.final_results import final

pytest.importorskip("matplotlib")

SPEC = "transformer_tiny(d_model=32, heads=2, layers=1, ffn=relu(d_ff=64), attn={dense, fused})"
TASK = "copy(length=6, vocab=8, eval_size=32)"
ARGV = [SPEC, "--task", TASK, "--steps", "40", "--batch", "8", "--timing-repeats", "1",
        "--seeds", "2", "--lr", "1e-3,1e-2", "--curve-points", "2", "--target", "0.5", "--threads", "1"]
ROOT = Path(__file__).resolve().parents[2]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="plugformer compare")
    compare_cli.add_compare_arguments(parser)
    return parser.parse_args(argv)




@pytest.mark.slow
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert compare_cli.run_compare_command(_args(*ARGV, "--out", str(whole))) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "plugformer", "compare", *ARGV, "--out", str(killed)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = RunStore(killed)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and len(store.read()) < 2:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the comparison finished before it could be killed"
    finished = store.read()
    assert 2 <= len(finished) < 8 and not (killed / "results.json").exists()

    status = compare_cli.run_compare_command(_args(*ARGV, "--out", str(killed), "--resume"))
    assert status == 0
    after = store.read()
    assert len(after) == 8 and [r.key for r in after[:len(finished)]] == [r.key for r in finished]
    assert len({r.key for r in after}) == 8, "a finished run was run again"
    assert final(killed) == final(whole)


def test_an_out_with_runs_needs_resume(tmp_path):
    compare(SPEC, TASK, steps=2, batch=8, timing_repeats=1, progress=False, curve_points=0,
            out=tmp_path)
    with pytest.raises(ValueError, match="already holds runs.*--resume"):
        compare(SPEC, TASK, steps=2, batch=8, timing_repeats=1, progress=False, out=tmp_path)
    resumed = compare(SPEC, TASK, steps=2, batch=8, timing_repeats=1, progress=False,
                      curve_points=0, out=tmp_path, resume=True)
    assert len(resumed.runs) == 2 and len(RunStore(tmp_path).read()) == 2


def test_ctrl_c_prints_what_finished_and_exits_130(tmp_path, monkeypatch, capsys):
    import plugformer.compare.runner as runner

    real, calls = runner.execute, []

    def execute_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "execute", execute_then_interrupt)
    status = compare_cli.run_compare_command(_args(
        SPEC, "--task", TASK, "--steps", "3", "--batch", "8", "--timing-repeats", "1",
        "--seeds", "2", "--out", str(tmp_path)))
    assert status == 130
    printed = capsys.readouterr().out
    assert "attn=dense" in printed and "attn=fused" in printed and "interrupted" in printed
    assert "--resume" in printed and len(RunStore(tmp_path).read()) == 2

    calls.clear()
    with pytest.raises(Interrupted) as stop:
        compare(SPEC, TASK, steps=3, batch=8, timing_repeats=1, progress=False, seeds=2)
    assert len(stop.value.comparison.runs) == 2
    assert isinstance(stop.value, KeyboardInterrupt)


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _check_report(path: Path, variants: list[str]) -> None:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    text = " ".join(page.text)
    for variant in variants:
        assert variant in text
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    assert len(images) >= 2 and all(a["src"].startswith("data:image/png;base64,") for a in images)
    for tag, attrs in page.tags:
        for name in ("src", "href"):
            assert not str(attrs.get(name, "")).startswith(("http:", "https:", "//")), (tag, attrs)
        assert tag not in ("link", "iframe", "object", "embed")
        assert not (tag == "script" and "src" in attrs)


def test_report_html_is_written_and_rebuilt(tmp_path, capsys):
    result = compare(SPEC, TASK, steps=4, batch=8, timing_repeats=1, progress=False, seeds=2,
                     lr=[1e-3, 1e-2], target=0.2, curve_points=2, out=tmp_path)
    report = tmp_path / "report.html"
    labels = [row.label for row in result.rows]
    _check_report(report, labels)
    report.unlink()
    assert compare_cli.run_report_command(argparse.Namespace(directory=str(tmp_path), target=None)) == 0
    assert str(report) in capsys.readouterr().out
    _check_report(report, labels)
    with pytest.raises(ValueError, match="no runs to report"):
        compare_cli.run_report_command(argparse.Namespace(directory=str(tmp_path / "none"), target=None))


def test_progress_goes_to_the_log_when_stderr_is_not_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger="plugformer")
    compare(SPEC, TASK, steps=2, batch=8, timing_repeats=1, curve_points=0)
    lines = [r.getMessage() for r in caplog.records if r.name == "plugformer"]
    assert any(line.startswith("run 1/2 attn=dense seed 0 lr 0.003: done") for line in lines), lines
    assert any(line.startswith("run 2/2 attn=fused seed 0 lr 0.003: step 2/2") for line in lines), lines


def test_a_terminal_gets_a_bar_per_run(monkeypatch):
    from rich.console import Console

    from plugformer.compare import progress as progress_module

    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    chosen = progress_module.reporter(True)
    assert isinstance(chosen, progress_module.Bars)
    assert progress_module.reporter(False).__enter__() is None
    with chosen as bars:
        compare(SPEC, TASK, steps=2, batch=8, timing_repeats=1, curve_points=0, seeds=2, progress=bars)
    titles = [task.description for task in bars.progress.tasks]
    assert len(titles) == 2 + 4  # one per variant while measuring, then one per run
    assert sum(t.endswith("seed 1 lr 0.003 [green]done") for t in titles) == 2
