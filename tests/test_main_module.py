"""``python -m plugformer`` runs the command; ``--version`` prints the library's version."""

import subprocess
import sys

import plugformer


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "plugformer", *args], capture_output=True, text=True, timeout=120)


def test_version():
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"plugformer {plugformer.__version__}"


def test_help_lists_the_commands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("list", "build", "generate", "export", "import"):
        assert command in result.stdout


def test_usage_error_exits_2():
    result = run("no-such-command")
    assert result.returncode == 2 and "invalid choice" in result.stderr
