"""Tasks: what a model is trained and scored on, for `compare` and `train`.

* :mod:`~plugformer.tasks.base`: the `Task` interface, `Example`, the batches `Seq2SeqBatch`
  and `LMBatch`, ``IGNORE_INDEX`` and the train/eval split.
* :mod:`~plugformer.tasks.metrics`: `batch_metrics` and `EvalResult`.
* :mod:`~plugformer.tasks.lookup`: `make_task`, a task from a name or spec in the registry.
* :mod:`~plugformer.tasks.synthetic`: the built-in tasks ``copy``, ``reverse``, ``sort`` and
  ``mqar``, registered through the ``plugformer_register`` hook like any plugin's.
"""

from plugformer.tasks.base import (IGNORE_INDEX, SPLIT_BUCKETS, Batch, Example, LMBatch,
                                   Seq2SeqBatch, Task, split_of)
from plugformer.tasks.lookup import make_task
from plugformer.tasks.metrics import EvalResult, batch_metrics, eval_result

__all__ = ["IGNORE_INDEX", "SPLIT_BUCKETS", "Batch", "EvalResult", "Example", "LMBatch",
           "Seq2SeqBatch", "Task", "batch_metrics", "eval_result", "make_task", "split_of"]
