"""Process groups and data-parallel wrapping for `plugformer train`.

Started plainly, training runs in one process with no process group. Started under ``torchrun``
(which sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``), each
process is one rank of a process group: NCCL when the ranks hold CUDA devices, gloo on CPU.

Two strategies replicate or shard the model across ranks:

* ``ddp``: `DistributedDataParallel`, a full replica per rank, gradients all-reduced.
* ``fsdp``: FSDP2 (`torch.distributed.fsdp.fully_shard`), one unit per transformer block (every
  outermost `plugformer.core.interfaces.Block`) and the model itself as the root unit, which
  holds the embeddings and the output projection (tied or not) with the final norm.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta
from typing import Iterator, Optional, Union

import attrs
import torch
import torch.distributed as dist
from torch import nn

from plugformer.core.interfaces import Block

__all__ = [
    "STRATEGIES", "FSDP_USEFUL_PARAMS", "Dist", "PeerFailed", "setup", "find_blocks", "wrap",
    "unwrap", "gradient_sync", "autocast", "agree", "all_reduce_sum", "is_peer_loss",
]

STRATEGIES = ("ddp", "fsdp")

#: Below this many parameters a whole replica fits on any accelerator, so sharding saves little
#: memory and costs communication: ``--strategy fsdp`` warns.
FSDP_USEFUL_PARAMS = 10_000_000


class PeerFailed(RuntimeError):
    """Another rank failed; it reports its own error, this rank stops without repeating it."""


@attrs.frozen
class Dist:
    """Where this process stands in the run.

    Attributes:
        rank: this process's rank, 0 when alone.
        world: number of ranks, 1 when alone.
        local_rank: rank on this machine (picks the CUDA device).
        device: where this rank computes.
        owns_group: whether `setup` created the process group (and `close` destroys it).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints, logs and writes single files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether a process group joins this process to others."""
        return dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if `setup` made it (after a clean run only: a failed
        rank exits instead, since tearing a group down with a dead peer can block)."""
        if self.owns_group and self.distributed:
            dist.destroy_process_group()


def _env_int(name: str) -> Optional[int]:
    text = os.environ.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from None


def _pick_device(device: Union[str, torch.device, None], local_rank: int) -> torch.device:
    if device is None:
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def setup(device: Union[str, torch.device, None] = None, *, timeout_s: Optional[float] = None) -> Dist:
    """Join the process group that ``torchrun`` describes in the environment, or run alone.

    An existing process group (made by the caller) is used as it is. ``device`` None picks
    ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU; the backend follows the device
    (NCCL for CUDA, gloo otherwise). ``timeout_s`` bounds how long a collective waits for a
    silent peer (torch's default when None).
    """
    world = _env_int("WORLD_SIZE")
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK") or 0
    if dist.is_available() and dist.is_initialized():
        chosen = _pick_device(device, local_rank)
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank,
                    device=chosen, owns_group=False)
    if world is None:
        return Dist(device=_pick_device(device, 0))
    if rank is None or not 0 <= rank < world:
        raise ValueError(f"WORLD_SIZE={world} needs RANK in [0, {world}), got RANK={rank}; "
                         "start multi-process runs with torchrun")
    chosen = _pick_device(device, local_rank)
    backend = "nccl" if chosen.type == "cuda" else "gloo"
    options = {} if timeout_s is None else {"timeout": timedelta(seconds=timeout_s)}
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
        options["device_id"] = chosen
    dist.init_process_group(backend=backend, rank=rank, world_size=world, **options)
    return Dist(rank=rank, world=world, local_rank=local_rank, device=chosen, owns_group=True)


def find_blocks(model: nn.Module) -> list[nn.Module]:
    """Every outermost `Block` of ``model`` in module order (encoder layers, then decoder
    layers): found by type, so any registered block plugin counts, and a block nested in
    another is left to its parent's unit."""
    blocks: list[nn.Module] = []

    def walk(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, Block):
                blocks.append(child)
            else:
                walk(child)

    walk(model)
    return blocks


def wrap(model: nn.Module, strategy: str, where: Dist, *, find_unused_parameters: bool = False) -> nn.Module:
    """``model`` made data-parallel across the ranks of ``where`` by ``strategy``.

    Alone (no process group) the model is returned as it is. Under ``fsdp`` the model is
    sharded in place (the returned module is ``model``); under ``ddp`` it is wrapped.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if not where.distributed:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [where.device.index] if where.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids,
                                       find_unused_parameters=find_unused_parameters)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(where.device.type, (where.world,))
    for block in find_blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plugformer model inside a DDP wrapper (FSDP2 shards in place: nothing to unwrap)."""
    return getattr(model, "module", model) if type(model).__name__ == "DistributedDataParallel" else model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Forward and backward inside this context reduce gradients across ranks only when
    ``enabled``; micro-batches before the last of a step accumulate locally."""
    if enabled:
        yield
        return
    if hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
        return
    yield


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The forward context of ``precision``: nothing for ``fp32``, bfloat16 autocast on
    ``device``'s type (CUDA or CPU) for ``bf16``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def all_reduce_sum(values: torch.Tensor, where: Dist) -> torch.Tensor:
    """``values`` summed over ranks (itself when alone)."""
    if where.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def agree(where: Dist, error: Optional[BaseException]) -> None:
    """Make every rank stop together when any rank failed before this point.

    Call it on every rank at the same point, with the exception this rank caught (or None).
    The lowest failing rank raises its own error (so its message is printed once), with the
    failing ranks in its ``failed_ranks`` attribute (all of them: every rank met the same
    problem); the others raise `PeerFailed`. One all-reduce; nothing happens when all ranks
    are fine.
    """
    if not where.distributed:
        if error is not None:
            error.failed_ranks = (0,)
            raise error
        return
    device = where.device if where.device.type == "cuda" else torch.device("cpu")
    failed = torch.zeros(where.world, dtype=torch.int32, device=device)
    failed[where.rank] = error is not None
    dist.all_reduce(failed, op=dist.ReduceOp.SUM)
    ranks = tuple(failed.nonzero().flatten().tolist())
    if not ranks:
        return
    if ranks[0] == where.rank:
        error.failed_ranks = ranks
        raise error
    raise PeerFailed(f"rank {ranks[0]} failed")


def is_peer_loss(error: BaseException) -> bool:
    """Whether ``error`` is a collective breaking because another rank went away."""
    if isinstance(error, PeerFailed):
        return True
    dist_error = getattr(torch.distributed, "DistError", None)
    if dist_error is not None and isinstance(error, dist_error):
        return True
    text = str(error).lower()
    return any(sign in text for sign in ("connection closed by peer", "connection reset by peer",
                                         "broken pipe", "nccl communicator was aborted"))
