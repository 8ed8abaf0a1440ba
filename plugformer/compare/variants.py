"""What a comparison compares: the task, and the variants with their labels.

`make_task` turns a name or spec into a `Task`; `build_variants` expands the specs, builds every
model with the task's vocabulary and lengths, checks the task can serve it, and works out how each
variant differs from the others. Anything wrong is raised here, before anything trains.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Union

import attrs
import torch
from torch import nn

from plugformer.compare.result import VariantResult
from plugformer.compare.task import Task
from plugformer.registry.builder import build, resolve
from plugformer.registry.errors import SpecError
from plugformer.registry.registry import Registry, default_registry
from plugformer.registry.spec import PerLayer, Spec, expand, format_spec, parse

__all__ = ["CompareError", "Variant", "build_variants", "make_task"]


class CompareError(SpecError):
    """A comparison that cannot start: a variant that does not build or that the task cannot serve.

    Raised before any variant trains. The message names the variant; when the cause is a spec
    error, the caret line points into the spec as written.
    """


@attrs.define
class Variant:
    """One variant under way: its row of results, and its model until it is done or failed."""

    row: VariantResult
    model: Optional[nn.Module]


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


def _variant_specs(specs: Union[str, Spec, Iterable[Union[str, Spec]]]) -> list[Spec]:
    """Every variant, choices expanded, in order; a spec that does not parse names its position."""
    given = [specs] if isinstance(specs, (str, Spec)) else list(specs)
    if not given:
        raise ValueError("compare() needs at least one spec")
    variants: list[Spec] = []
    for position, spec in enumerate(given, start=1):
        try:
            variants.extend(expand(spec))
        except SpecError as err:
            where = f"spec {position} of {len(given)}" if len(given) > 1 else "the spec"
            raise CompareError(f"{where}: {err.message}", err.text, err.span, err.hint) from err
    return variants


def _shown(written: Spec, resolved: Spec, key: str) -> str:
    """The value of ``key`` as the user wrote it, or the resolved part's name when defaulted."""
    if key in written.kwargs:
        return format_spec(written.kwargs[key])
    value = resolved.kwargs.get(key)
    return value.name if isinstance(value, Spec) else format_spec(value)


def _differences(written: list[Spec], resolved: list[Spec]) -> list[dict[str, str]]:
    """For each variant, the model-level arguments whose resolved values vary, as written."""
    if len(resolved) < 2:
        return [{} for _ in resolved]
    keys = list(dict.fromkeys(key for spec in resolved for key, _ in spec.args))
    varying = [key for key in keys
               if len({format_spec(spec.kwargs.get(key)) for spec in resolved}) > 1]
    names_vary = len({spec.name for spec in resolved}) > 1
    out = []
    for w, r in zip(written, resolved):
        differs = {"model": r.name} if names_vary else {}
        differs.update({key: _shown(w, r, key) for key in varying})
        out.append(differs)
    return out


def _label(written: Spec, differs: dict[str, str], index: int, duplicates: bool) -> str:
    if not differs:
        text = str(written)
    else:
        parts = [differs["model"]] if "model" in differs else []
        parts += [f"{k}={v}" for k, v in differs.items() if k != "model"]
        text = ", ".join(parts)
    return f"{text} #{index + 1}" if duplicates else text


def build_variants(specs: Union[str, Spec, Iterable[Union[str, Spec]]], task: Task, *, seed: int,
                   device: torch.device, registry: Optional[Registry] = None) -> list[Variant]:
    """Build every variant with the task's vocabulary and lengths, each from ``seed``.

    Raises `CompareError` naming the variant when one does not parse or build, or when the task
    cannot serve its kind of model.
    """
    specs = _variant_specs(specs)
    models, resolved = [], []
    for index, spec in enumerate(specs):
        where = f"variant {index + 1} of {len(specs)} ({spec})"
        torch.manual_seed(seed)
        try:
            model = build(spec, registry=registry, device=device, vocab=task.vocab_size,
                          max_len=task.max_len)
        except SpecError as err:
            raise CompareError(f"{where}: {err.message}", err.text, err.span, err.hint) from err
        except Exception as err:  # a factory's own bug: still stop before training, say which
            raise CompareError(f"{where} could not be built: {type(err).__name__}: {err}") from err
        kind = getattr(model, "kind", None)
        if kind not in task.kinds:
            raise CompareError(f"{where}: task {task.name!r} serves {' and '.join(task.kinds)} "
                               f"models, and this is {'an' if kind == 'lm' else 'a'} {kind!r} model")
        models.append(model)
        resolved.append(model.spec if isinstance(getattr(model, "spec", None), Spec) else spec)
    differs = _differences(specs, resolved)
    labels = [_label(s, d, i, False) for i, (s, d) in enumerate(zip(specs, differs))]
    duplicates = len(set(labels)) < len(labels)
    variants = []
    for index, (spec, model) in enumerate(zip(specs, models)):
        row = VariantResult(
            index=index, label=_label(spec, differs[index], index, duplicates),
            spec=str(resolved[index]), written=str(spec), kind=model.kind, differs=differs[index],
            params=sum(p.numel() for p in model.parameters()),
        )
        variants.append(Variant(row, model))
    return variants
