"""The ``plugformer`` command: list, describe, plugins, errors, and adding a subcommand."""

from __future__ import annotations

import argparse
import sys
import types

import pytest
from torch import nn

import plugformer.cli as cli
import plugformer.registry.discovery as discovery
from plugformer.cli import main
from plugformer.hooks import hookimpl
from plugformer.registry.discovery import PluginError
from plugformer.registry.registry import Registry, default_registry


class Kernel(nn.Module):
    supports_causal = True


def bra(ctx, *, region: int = 64, topk: int = 4) -> Kernel:
    """Bi-level routing attention.

    Args:
        region: tokens per region.
    """
    return Kernel()


def dense(ctx) -> Kernel:
    """Exact attention."""
    return Kernel()


def layernorm(ctx, *, eps: float = 1e-5) -> nn.Module:
    """Layer normalisation."""
    return nn.LayerNorm(ctx.d_model, eps=eps)


def bra_norm(ctx) -> nn.Module:
    """A norm that happens to be called bra."""
    return nn.Identity()


@pytest.fixture
def reg() -> Registry:
    registry = Registry()
    registry.add("attention", "bra", bra)
    registry.add("attention", "dense", dense)
    registry.add("norm", "layernorm", layernorm)
    return registry


def test_list_prints_aligned_plain_table(reg, capsys):
    assert main(["list"], registry=reg) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "kind       name       summary",
        "attention  bra        Bi-level routing attention.",
        "attention  dense      Exact attention.",
        "norm       layernorm  Layer normalisation.",
    ]


def test_list_filters_by_kind_and_pattern(reg, capsys):
    assert main(["list", "attention", "--pattern", "*RA*"], registry=reg) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in out[1:]] == [["attention", "bra"]]
    assert main(["list", "-p", "*norm"], registry=reg) == 0
    assert "layernorm" in capsys.readouterr().out


def test_list_with_no_match_says_so(reg, capsys):
    assert main(["list", "task"], registry=reg) == 0
    assert capsys.readouterr().err.strip() == "no task parts are registered"
    assert main(["list", "-p", "zzz*"], registry=reg) == 0
    assert capsys.readouterr().err.strip() == "no parts match 'zzz*'"


def test_list_uses_rich_on_a_terminal(reg, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(["list", "attention"], registry=reg) == 0
    out = capsys.readouterr().out
    assert "Bi-level routing attention." in out and "┃" in out  # a rich box


def test_describe_kind_and_name(reg, capsys):
    assert main(["describe", "attention:bra"], registry=reg) == 0
    out = capsys.readouterr().out
    assert out.startswith("attention:bra - Bi-level routing attention.")
    assert "region: int = 64  tokens per region." in out
    assert "topk: int = 4" in out
    assert "supports_causal: yes" in out


def test_describe_bare_name_searches_every_kind(reg, capsys):
    assert main(["describe", "layernorm"], registry=reg) == 0
    assert "norm:layernorm - Layer normalisation." in capsys.readouterr().out


def test_describe_ambiguous_name_asks_which(reg, capsys):
    reg.add("norm", "bra", bra_norm)
    assert main(["describe", "bra"], registry=reg) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == (
        "plugformer: error: 'bra' names parts of several kinds (attention:bra, norm:bra); "
        "say which, e.g. attention:bra"
    )


def test_describe_unknown_names_suggest_and_exit_2_without_traceback(reg, capsys):
    assert main(["describe", "brra"], registry=reg) == 2
    err = capsys.readouterr().err
    assert err.strip() == "plugformer: error: unknown part 'brra'; did you mean 'attention:bra'?"
    assert main(["describe", "attention:brra"], registry=reg) == 2
    err = capsys.readouterr().err
    assert "unknown attention 'brra'; did you mean 'bra'? available: bra, dense" in err
    assert "Traceback" not in err
    assert main(["describe", "atention:bra"], registry=reg) == 2
    assert "did you mean 'attention'" in capsys.readouterr().err


def test_traceback_flag_reraises(reg):
    with pytest.raises(LookupError):
        main(["--traceback", "describe", "brra"], registry=reg)


def test_plugins_lists_loaded_disabled_and_failed(monkeypatch, capsys):
    good = types.ModuleType("pf_cli_good")

    @hookimpl
    def plugformer_register(registry):
        registry.add("attention", "dense", dense)

    good.plugformer_register = plugformer_register
    monkeypatch.setitem(sys.modules, "pf_cli_good", good)
    monkeypatch.setattr(
        discovery, "builtin_plugins", lambda: ("pf_cli_good", "plugformer.plugins.not_there")
    )
    monkeypatch.setenv("PLUGFORMER_DISABLE_PLUGINS", "example")
    monkeypatch.delenv("PLUGFORMER_STRICT", raising=False)
    reg = Registry()
    reg.load_plugins()

    assert main(["plugins"], registry=reg) == 0
    out = capsys.readouterr().out
    assert "1 plugin loaded" in out
    assert "pf_cli_good" in out and "plugformer" in out
    assert "1 plugin failed to load" in out
    assert "plugformer.plugins.not_there" in out
    assert "ModuleNotFoundError: No module named 'plugformer.plugins.not_there'" in out
    assert "Traceback" not in out

    assert main(["plugins", "--verbose"], registry=reg) == 0
    assert "Traceback" in capsys.readouterr().out


def test_usage_errors_and_help_return_exit_codes(reg, capsys):
    assert main([], registry=reg) == 2
    assert "COMMAND" in capsys.readouterr().err
    assert main(["--help"], registry=reg) == 0
    out = capsys.readouterr().out
    for name in ("list", "describe", "plugins"):
        assert name in out
    assert main(["frobnicate"], registry=reg) == 2


def test_a_new_subcommand_is_a_few_lines(reg, capsys, monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", dict(cli.COMMANDS))

    @cli.command("count")
    @cli.argument("kind")
    @cli.argument("--double", action="store_true")
    def count(args: argparse.Namespace) -> int:
        """Count the parts of a kind."""
        n = len(args.registry.list(args.kind))
        print(2 * n if args.double else n)
        return 0

    assert main(["count", "attention", "--double"], registry=reg) == 0
    assert capsys.readouterr().out == "4\n"
    assert main(["count", "nope"], registry=reg) == 2
    assert "unknown kind 'nope'" in capsys.readouterr().err
    main(["--help"], registry=reg)
    assert "Count the parts of a kind." in capsys.readouterr().out


def test_a_plugin_adds_a_command_through_the_hook(capsys):
    plugin = types.ModuleType("pf_cli_greeter")

    def greet(args: argparse.Namespace) -> int:
        """Greet someone, loudly if asked."""
        if not args.who:
            raise ValueError("greet: WHO is empty; give a name")
        print(f"hello {args.who}{'!' if args.loud else ''} ({len(args.registry.list('attention'))} kernels)")
        return 0

    @hookimpl
    def plugformer_register_commands(commands):
        commands.add("greet", greet, arguments=[(("who",), {}), (("--loud",), {"action": "store_true"})])

    plugin.plugformer_register_commands = plugformer_register_commands
    reg = Registry()
    reg.add("attention", "dense", dense)
    reg.register_plugin(plugin, name="greeter")

    assert main(["greet", "you", "--loud"], registry=reg) == 0
    assert capsys.readouterr().out == "hello you! (1 kernels)\n"
    assert main(["greet", ""], registry=reg) == 2
    assert "WHO is empty" in capsys.readouterr().err
    assert main(["--help"], registry=reg) == 0
    out = capsys.readouterr().out
    assert "Greet someone, loudly if asked." in out and "list" in out
    assert main(["greet"], registry=reg) == 2  # argparse: WHO missing

    reg.unregister_plugin("greeter")
    assert main(["greet", "you"], registry=reg) == 2


def test_a_plugin_command_cannot_take_a_name_in_use(capsys, monkeypatch):
    plugin = types.ModuleType("pf_cli_squatter")

    @hookimpl
    def plugformer_register_commands(commands):
        commands.add("mine", lambda args: 0, help="mine")
        commands.add("list", lambda args: 0, help="a second list")

    plugin.plugformer_register_commands = plugformer_register_commands
    reg = Registry()
    reg.register_plugin(plugin, name="squatter")
    monkeypatch.delenv("PLUGFORMER_STRICT", raising=False)
    assert main(["list"], registry=reg) == 0  # the CLI's own list still runs
    captured = capsys.readouterr()
    assert "plugin 'squatter' failed to add its commands: command 'list' is taken" in captured.err
    assert main(["mine"], registry=reg) == 2  # the failing plugin adds none of its commands
    monkeypatch.setenv("PLUGFORMER_STRICT", "1")
    with pytest.raises(PluginError, match="squatter"):
        main(["list"], registry=reg)


def test_routes_comes_from_the_bra_plugin_and_the_cli_does_not_import_it():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(cli.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not any(name and name.startswith("plugformer.plugins") for name in imported)
    assert "routes" not in cli.COMMANDS
    commands = cli.plugin_commands(default_registry())
    assert commands["routes"].handler.__module__ == "plugformer.plugins.bra.cli"
