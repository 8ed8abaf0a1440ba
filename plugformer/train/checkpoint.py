"""Training checkpoints (`torch.distributed.checkpoint`) and the final model file.

A checkpoint is a folder ``DIR/checkpoints/step_00000012/``: model and optimiser state written
by DCP (each rank writes its own shards under FSDP; ``get_state_dict`` keys them by parameter
name, so a checkpoint loads into any world size and either strategy) and ``train_state.json``,
which rank 0 writes last. A folder without it is an interrupted write and is ignored.

``train_state.json`` holds the step counter and what makes a run the same run: the canonical
spec, the task, the global batch and the seed. The learning rate is a function of the step and
every random draw is seeded from ``(seed, step, rank)``, so the step counter restores the
scheduler and the random state exactly.

The final model is one ``plugformer.save`` file, gathered to rank 0 as a full state dict,
which ``plugformer.load`` opens in one CPU process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional

import attrs
import torch
from torch import nn

from plugformer.registry.registry import Registry
from plugformer.train.distributed import Dist, unwrap

__all__ = ["RunState", "ResumeError", "checkpoint_path", "latest", "save", "load", "export"]

FORMAT = "plugformer-train/1"
STATE_FILE = "train_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class ResumeError(ValueError):
    """A checkpoint that cannot continue this run: another model, task, batch or seed."""


@attrs.frozen
class RunState:
    """What ``train_state.json`` records.

    Attributes:
        step: optimiser steps done.
        spec: the model's canonical spec.
        task: the task's description (``copy(length=16, vocab=64)``).
        batch: the global batch.
        seed: seed of initialisation, data and dropout.
        steps: the planned total when the checkpoint was written (sets the LR schedule).
        world, strategy, grad_accum: how the run that wrote it was laid out (informative:
            resuming with others is allowed).
    """

    step: int
    spec: str
    task: str
    batch: int
    seed: int
    steps: int
    world: int = 1
    strategy: str = "ddp"
    grad_accum: int = 1

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **attrs.asdict(self)}, indent=2)

    @classmethod
    def from_json(cls, text: str, where: Path) -> "RunState":
        try:
            data: dict[str, Any] = json.loads(text)
        except json.JSONDecodeError as err:
            raise ResumeError(f"{where}: not valid JSON: {err}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ResumeError(f"{where}: not a plugformer training checkpoint (format "
                              f"{data.get('format') if isinstance(data, dict) else None!r}, "
                              f"expected {FORMAT!r})")
        names = {field.name for field in attrs.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as err:
            raise ResumeError(f"{where}: incomplete training state: {err}") from None

    def check_continues(self, other: "RunState", where: Path) -> None:
        """Raise `ResumeError` unless ``other`` (this run) continues the run saved here.

        The task is compared first: another task changes the vocabulary or lengths and with
        them the spec, and the task is then the better thing to name.
        """
        for name in ("task", "spec", "batch", "seed"):
            saved, given = getattr(self, name), getattr(other, name)
            if name == "spec" and saved != given:
                raise ResumeError(
                    f"cannot resume from {where}: it was trained with another model spec\n"
                    f"  checkpoint: {saved}\n  this run:   {given}\n"
                    "resume with the checkpoint's spec, or train into a new --out")
            if saved != given:
                raise ResumeError(
                    f"cannot resume from {where}: it was trained with {name} {saved}, this run "
                    f"asks for {name} {given}; the data would no longer follow the same stream. "
                    "Use the checkpoint's value, or train into a new --out")


@contextlib.contextmanager
def _alone_quietly(where: Dist) -> Iterator[None]:
    """DCP warns that it assumes one process whenever there is no process group; alone, that
    is the intent."""
    with warnings.catch_warnings():
        if not where.distributed:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def checkpoint_path(out: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` goes."""
    return Path(out) / "checkpoints" / f"step_{step:08d}"


def latest(out: Path) -> Optional[Path]:
    """The complete checkpoint with the highest step under ``out``, or None."""
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return None
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def read_state(path: Path) -> RunState:
    """The `RunState` of the checkpoint folder ``path``."""
    return RunState.from_json((Path(path) / STATE_FILE).read_text(), Path(path) / STATE_FILE)


def save(model: nn.Module, optimizer: torch.optim.Optimizer, state: RunState, out: Path,
         where: Dist) -> Path:
    """Write a checkpoint of ``state.step`` (collective: every rank calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    path = checkpoint_path(out, state.step)
    if where.is_main:  # an older checkpoint of this step is incomplete from here on
        (path / STATE_FILE).unlink(missing_ok=True)
    model_state, optim_state = get_state_dict(model, optimizer)
    with _alone_quietly(where):
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(path),
                 no_dist=not where.distributed)
    where.barrier()
    if where.is_main:
        partial = path / (STATE_FILE + ".partial")
        partial.write_text(state.to_json())
        os.replace(partial, path / STATE_FILE)
    where.barrier()
    return path


def load(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path, where: Dist) -> RunState:
    """Load model and optimiser state from the checkpoint ``path`` (collective), resharded to
    however ``model`` is laid out now. Returns its `RunState`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    state = read_state(path)
    model_state, optim_state = get_state_dict(model, optimizer)
    loaded = {"model": model_state, "optim": optim_state}
    with _alone_quietly(where):
        dcp.load(loaded, checkpoint_id=str(path), no_dist=not where.distributed)
    set_state_dict(model, optimizer, model_state_dict=loaded["model"],
                   optim_state_dict=loaded["optim"])
    return state


def export(model: nn.Module, path: Path, where: Dist, *, registry: Optional[Registry] = None,
           tokenizer: Optional[Any] = None) -> Optional[Path]:
    """Gather the full weights on rank 0 and write them with ``plugformer.save`` to ``path``.

    Collective. The weights go into a fresh CPU model built from ``model.spec`` (so the file
    holds a plain model whatever wrapped this one), with ``tokenizer`` when given (the text
    task's). Returns the path on rank 0, None elsewhere.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from plugformer.io import save as save_model
    from plugformer.registry.builder import build

    spec = unwrap(model).spec
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(model, options=options)
    if not where.is_main:
        return None
    with torch.random.fork_rng(devices=[]):
        fresh = build(spec, registry=registry, device="cpu")
    fresh.load_state_dict(full, strict=True)
    return save_model(fresh, path, registry=registry, tokenizer=tokenizer)
