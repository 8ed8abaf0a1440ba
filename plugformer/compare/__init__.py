"""Compare model variants on a synthetic task: parameters, FLOPs, time, memory and accuracy.

::

    import plugformer
    result = plugformer.compare("transformer_tiny(attn={dense, fused})", task="copy", steps=300,
                                lr=[1e-3, 3e-3], seeds=3, out="results/")
    print(result.table())        # mean ± 95% interval over seeds, rate chosen on validation, marks

The task interface (`Task`, the batches, ``IGNORE_INDEX``, `EvalResult`) and `make_task` live in
:mod:`plugformer.tasks`; they are re-exported here, where they were first defined.

``plugformer.compare`` is both this package and the function: the package is callable and calls
`compare`, so ``plugformer.compare(...)`` works however it was first imported.
"""

from __future__ import annotations

import inspect
import sys
import types
from typing import Any

from plugformer.compare.flops import count_flops
from plugformer.compare.result import Comparison, EvalResult, VariantResult
from plugformer.compare.runner import CompareError, Interrupted, Progress, compare
from plugformer.tasks import IGNORE_INDEX, Example, LMBatch, Seq2SeqBatch, Task, make_task

__all__ = [
    "IGNORE_INDEX", "CompareError", "Comparison", "EvalResult", "Example", "Interrupted", "LMBatch",
    "Progress",
    "Seq2SeqBatch", "Task", "VariantResult", "compare", "count_flops", "make_task",
]


class _CallableModule(types.ModuleType):
    """This package, callable as `compare`: importing ``plugformer.compare`` (the package) sets
    the attribute ``compare`` of ``plugformer``, which would otherwise hide the function."""

    def __call__(self, *args: Any, **kwargs: Any) -> Comparison:
        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
__signature__ = inspect.signature(compare)
