"""`make_task`: a `Task` from a name or spec, looked up in the registry like any other part."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Union

from plugformer.registry.builder import resolve
from plugformer.registry.registry import Registry, default_registry
from plugformer.registry.spec import PerLayer, Spec, parse
from plugformer.tasks.base import Task

__all__ = ["make_task"]


def make_task(task: Union[str, Spec, Task], *, task_args: Optional[Mapping[str, Any]] = None,
              eval_lengths: Optional[Iterable[int]] = None,
              registry: Optional[Registry] = None) -> Task:
    """A `Task` from a name or spec (``"copy"``, ``"mqar(pairs=16)"``) looked up in the registry.

    ``task_args`` and ``eval_lengths`` override the spec's arguments. An unknown task name raises
    `SpecError` with the closest registered names (did-you-mean).
    """
    if isinstance(task, Task):
        if task_args or eval_lengths is not None:
            raise ValueError("task_args and eval_lengths apply to a task given by name; "
                             "pass them to the task's constructor instead")
        return task
    registry = registry or default_registry()
    spec = parse(task) if isinstance(task, str) else task
    overrides = dict(task_args or {})
    if eval_lengths is not None:
        overrides["eval_lengths"] = PerLayer([int(n) for n in eval_lengths])
    overrides = {k: PerLayer(v) if isinstance(v, (list, tuple)) else v for k, v in overrides.items()}
    if spec.name in registry.names("task"):
        # a list default (``eval_lengths: list[int] = []``) is written out as a spec list
        for arg in registry.get("task", spec.name).args:
            if isinstance(arg.default, (list, tuple)) and arg.name not in {**spec.kwargs, **overrides}:
                overrides[arg.name] = PerLayer(arg.default)
    if overrides:
        spec = spec.with_args(**overrides)
    resolved = resolve(spec, kind="task", registry=registry)
    kwargs = {k: list(v.items) if isinstance(v, PerLayer) else v for k, v in resolved.args}
    try:
        made = registry.get("task", resolved.name).factory(**kwargs)
    except ValueError as err:
        raise resolved.error(f"task {resolved.name!r}: {err}") from None
    if not isinstance(made, Task):
        raise TypeError(f"task factory {resolved.name!r} returned {type(made).__name__}, not a Task")
    return made
