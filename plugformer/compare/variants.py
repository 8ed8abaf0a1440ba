"""What a comparison compares: the task, and the variants with their labels.

`build_variants` expands the specs, builds every model with the task's vocabulary and lengths,
checks the task can serve it, and works out how each variant differs from the others. Anything
wrong is raised here, before anything trains. `make_task` (a name or spec to a `Task`) lives in
:mod:`plugformer.tasks.lookup` and is re-exported here for the imports that name this module.
"""

from __future__ import annotations

from typing import Iterable, Optional, Union

import attrs
import torch
from torch import nn

from plugformer.compare.result import VariantResult
from plugformer.registry.builder import build
from plugformer.registry.errors import SpecError
from plugformer.registry.registry import Registry
from plugformer.registry.spec import Spec, expand, format_spec
from plugformer.tasks.base import Task
from plugformer.tasks.lookup import make_task

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
