"""Train a model past one machine: one process, or data-parallel (DDP or FSDP2) under torchrun.

::

    from plugformer.train import train
    result = train("gpt_tiny", task="mqar(pairs=8)", steps=2000, batch=64, out="runs/mqar")

    # the same script or command on 4 processes of one machine, sharded per block:
    #   torchrun --nproc-per-node 4 -m plugformer.train gpt_tiny --task "mqar(pairs=8)" \
    #       --steps 2000 --batch 64 --out runs/mqar --strategy fsdp

``batch`` is the global batch, so the same arguments give the same loss curve on any number
of ranks. See :mod:`plugformer.train.step` for the step (shared with ``compare``),
:mod:`plugformer.train.loop` for the loop, :mod:`plugformer.train.data` for the
split of the data and :mod:`plugformer.train.checkpoint` for checkpoints and the final file.
"""

from plugformer.train.checkpoint import ResumeError
from plugformer.train.data import BatchPlan
from plugformer.train.distributed import PeerFailed, find_blocks
from plugformer.train.evaluate import evaluate
from plugformer.train.loop import TrainError, TrainResult, train

__all__ = ["BatchPlan", "PeerFailed", "ResumeError", "TrainError", "TrainResult", "evaluate",
           "find_blocks", "train"]
