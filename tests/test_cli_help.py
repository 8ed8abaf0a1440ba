"""``plugformer --help`` and each command's ``--help``: examples that parse (and, for the cheap
commands, run), every default shown, exit statuses, did-you-mean, optional shell completion.

The commands are those ``main`` collects: the CLI's own and those plugins add through the hook.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys

import pytest

import plugformer.cli as cli
from plugformer.cli import main
from plugformer.registry.registry import default_registry

from tests.testing import broken_parts

COMMANDS = cli.plugin_commands(default_registry())
#: Commands whose examples are quick enough to run here against the default registry.
RUN_EXAMPLES = {"list", "describe", "build"}


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps help at the terminal's width


def help_text(name: str, capsys) -> str:
    assert main([name, "--help"]) == 0
    return capsys.readouterr().out


def examples(epilog: str, name: str) -> list[str]:
    """The example command lines of ``plugformer NAME`` in an epilog, continuation lines joined."""
    lines = re.sub(r"\\\n\s*", "", epilog).splitlines()
    return [line.strip() for line in lines if line.strip().startswith(f"plugformer {name} ")]


def subparser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser(COMMANDS)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


def option_blocks(text: str) -> dict[str, str]:
    """Each entry of the help's argument lists, by its first word (``--steps``, ``SPEC``): the
    line at indent 2 and the deeper-indented lines under it, whitespace collapsed."""
    blocks: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if re.match(r"  \S", line):
            current = line.split()[0].rstrip(",")
            blocks[current] = line
        elif current and re.match(r"   +\S", line):
            blocks[current] += " " + line
        else:
            current = None
    return {key: " ".join(block.split()) for key, block in blocks.items()}


def same_value(text: str, default: object) -> bool:
    if text == str(default):
        return True
    try:
        return float(text) == float(default)  # help written as 3e-3 for 0.003
    except (TypeError, ValueError):
        return False


def test_the_commands_include_the_plugin_ones():
    assert {"list", "describe", "plugins", "build", "generate", "compare", "report", "train",
            "export", "import", "check", "routes"} <= set(COMMANDS)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_ends_with_examples_that_parse(name, capsys):
    out = help_text(name, capsys)
    epilog = COMMANDS[name].epilog
    assert epilog.strip() in out
    lines = examples(epilog, name)
    assert len(lines) >= 2, f"plugformer {name} --help shows {len(lines)} example(s) of itself: {epilog!r}"
    parser = cli.build_parser(COMMANDS)
    for line in lines:
        try:
            args = parser.parse_args(shlex.split(line, comments=True)[1:])
        except SystemExit:
            pytest.fail(f"the example {line!r} of plugformer {name} --help does not parse: "
                        f"{capsys.readouterr().err}")
        assert args.command == name


@pytest.mark.parametrize("name", sorted(RUN_EXAMPLES))
def test_examples_of_quick_commands_run(name, capsys):
    for line in examples(COMMANDS[name].epilog, name):
        assert main(shlex.split(line, comments=True)[1:]) == 0, (line, capsys.readouterr().err)
        assert capsys.readouterr().out.strip(), line


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_shows_every_default(name, capsys):
    out = help_text(name, capsys)
    blocks = option_blocks(out)
    for action in subparser(name)._actions:
        if action.default in (None, argparse.SUPPRESS) or isinstance(action.default, bool):
            continue  # nothing to show: no default, or a flag that is off unless given
        key = action.option_strings[0] if action.option_strings else (action.metavar or action.dest)
        block = blocks[key]
        shown = re.findall(r"default:?\s+([^\s,;)]+)", block)
        assert any(same_value(value, action.default) for value in shown), (
            f"plugformer {name} --help does not show the default {action.default!r} of {key}: {block!r}")
    assert "default: None" not in out


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = set(re.findall(r"^    (\S+)\s", out, flags=re.MULTILINE))
    assert set(COMMANDS) <= listed
    for command in COMMANDS.values():
        assert command.help[:40] in " ".join(out.split())
    assert "plugformer COMMAND --help" in out


def test_no_command_prints_the_usage_and_exits_2(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: plugformer") and "required: COMMAND" in err


def test_usage_errors_exit_2(capsys):
    assert main(["list", "--no-such-option"]) == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
    assert main(["generate", "model.safetensors"]) == 2  # --input is required
    assert "--input" in capsys.readouterr().err


def test_a_mistyped_choice_suggests_the_closest(capsys):
    assert main(["buidl", "gpt_tiny"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'buidl'" in err and "did you mean 'build'?" in err
    assert main(["train", "gpt_tiny", "--out", "x", "--strategy", "fdsp"]) == 2
    assert "did you mean 'fsdp'?" in capsys.readouterr().err
    assert main(["xyzzy"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'xyzzy'" in err and "did you mean" not in err


def test_a_bad_value_exits_2_and_a_failing_check_exits_1(capsys, tmp_path):
    assert main(["generate", str(tmp_path / "missing.safetensors"), "-i", "1,2"]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
    registry = default_registry()
    name = registry.register_plugin(broken_parts, name="cli_help_broken_parts")
    try:
        assert main(["check", "upcast", "--kind", "feedforward", "-c", "shapes_dtypes"], registry=registry) == 1
    finally:
        registry.unregister_plugin(name)
    assert "failed" in capsys.readouterr().out


def test_the_cli_runs_without_argcomplete(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "argcomplete", None)  # import argcomplete raises ImportError
    monkeypatch.setenv("_ARGCOMPLETE", "1")
    assert main(["list", "model"]) == 0
    assert "gpt_tiny" in capsys.readouterr().out


def complete(line: str, tmp_path) -> list[str]:
    """What ``argcomplete`` offers for ``line`` (cursor at its end), run as a shell would."""
    out = tmp_path / "completions"
    env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE_IFS": "\n", "_ARGCOMPLETE_STDOUT_FILENAME": str(out)}
    result = subprocess.run([sys.executable, "-m", "plugformer"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return out.read_text().split("\n")


def test_shell_completion_of_commands_and_part_names(tmp_path):
    pytest.importorskip("argcomplete")
    assert [n.strip() for n in complete("plugformer bu", tmp_path)] == ["build"]
    names = complete("plugformer describe positional:r", tmp_path)
    expected = sorted(p.label for p in default_registry().list("positional") if p.name.startswith("r"))
    assert expected and sorted(n.strip() for n in names) == expected
