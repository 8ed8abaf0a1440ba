"""plugformer/tasks/lookup.py, and the built-in tasks reaching the registry through the hook."""

from __future__ import annotations

import pytest

from plugformer.registry.errors import SpecError
from plugformer.registry.registry import default_registry
from plugformer.tasks import Task, make_task
from plugformer.tasks.synthetic import MQARTask, ReverseTask


def test_builtin_tasks_register_through_the_plugin_hook():
    registry = default_registry()
    assert {"copy", "reverse", "sort", "mqar"} <= set(registry.names("task"))
    described = registry.describe("task", "reverse")
    assert described.summary.startswith("Reverse a random sequence")
    assert "plugformer.tasks.synthetic" in described.source
    assert "eval_size: held-out examples per length." in described.doc
    assert [arg.name for arg in registry.get("task", "reverse").args] == [
        "length", "vocab", "eval_lengths", "eval_size"]


def test_make_task_from_a_spec_with_overrides():
    task = make_task("reverse(length=5, vocab=9)", task_args={"vocab": 11}, eval_lengths=[7])
    assert isinstance(task, ReverseTask)
    assert (task.length, task.vocab, task.eval_lengths) == (5, 11, (7,))
    assert isinstance(make_task("mqar(pairs=4)"), MQARTask)


def test_make_task_passes_a_task_through_and_names_unknown_ones():
    task = make_task("copy")
    assert make_task(task) is task and isinstance(task, Task)
    with pytest.raises(SpecError, match="revers"):
        make_task("reverze")


def test_old_import_paths_still_reach_the_same_objects():
    from plugformer.compare import EvalResult, Task as CompareTask, make_task as compare_make_task
    from plugformer.compare.result import EvalResult as ResultEvalResult
    from plugformer.compare.variants import make_task as variants_make_task
    from plugformer.tasks import EvalResult as TasksEvalResult

    assert CompareTask is Task
    assert compare_make_task is variants_make_task is make_task
    assert EvalResult is ResultEvalResult is TasksEvalResult
