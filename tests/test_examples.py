"""Every example in examples/ runs (with --fast settings) and exits cleanly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script, tmp_path):
    done = subprocess.run(
        [sys.executable, str(script), "--fast"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "an example should show what it did"


def test_example_plugin_tests_run_the_conformance_kit(tmp_path):
    """examples/plugin's tests: the kit through the pytest plugin, the part through its entry point."""
    from importlib.metadata import entry_points

    plugin_tests = Path(__file__).parent.parent / "examples" / "plugin" / "tests"
    installed = any(ep.value == "plugformer.testing.pytest_plugin" for ep in entry_points(group="pytest11"))
    load = [] if installed else ["-p", "plugformer.testing.pytest_plugin"]  # metadata not reinstalled yet
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *load, "-rs", str(plugin_tests)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "13 passed" in done.stdout, done.stdout[-3000:]
