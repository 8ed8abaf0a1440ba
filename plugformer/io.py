"""Save and load models: safetensors weights with the canonical spec in the metadata.

No pickle anywhere: the file is a safetensors header (JSON) and raw tensor bytes. ``load``
rebuilds the model from the spec (so the spec must still resolve to exactly what was saved) and
loads the weights strictly. A SHA-256 of the tensor bytes catches a tampered file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from plugformer.registry.errors import SpecError
from plugformer.registry.registry import Registry, UnknownPartError, default_registry
from plugformer.registry.spec import PerLayer, Spec, parse

FORMAT = "plugformer/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: not ours, damaged, or naming parts we lack."""


def save(model: nn.Module, path: str | Path, *, registry: Optional[Registry] = None) -> Path:
    """Write ``model``'s weights and spec to ``path`` (safetensors). Returns the path.

    ``registry``: the one the model was built from (default: the default registry); the file
    records which plugin supplied each part, so that loading can name a missing one.
    """
    from plugformer import __version__

    spec = getattr(model, "spec", None)
    if not isinstance(spec, Spec):
        raise ValueError("only models built by plugformer.build (which carry model.spec) can be saved")
    registry = registry or default_registry()
    path = Path(path)
    metadata = {
        "format": FORMAT,
        "plugformer.spec": str(spec),
        "plugformer.version": __version__,
        "plugformer.parts": json.dumps(_parts_of(spec, registry), sort_keys=True),
        "plugformer.sha256": _digest(model.state_dict()),
    }
    save_model(model, str(path), metadata=metadata)
    return path


def load(
    path: str | Path,
    *,
    device: torch.device | str | None = "cpu",
    dtype: Optional[torch.dtype] = None,
    registry: Optional[Registry] = None,
) -> nn.Module:
    """Rebuild the model saved at ``path`` from its spec and load its weights strictly.

    Raises:
        CheckpointError: not a plugformer checkpoint, truncated or tampered, a part that no
            installed plugin supplies, or a spec that now resolves differently.
    """
    from plugformer.registry.builder import build, resolve

    registry = registry or default_registry()
    path = Path(path)
    metadata = _read_metadata(path)
    text = metadata["plugformer.spec"]
    parts = json.loads(metadata.get("plugformer.parts", "{}"))
    try:
        spec = resolve(text, registry=registry, check=False)
    except SpecError as err:
        raise _missing_part(err, text, parts, path, registry) from None
    if str(spec) != text:
        raise CheckpointError(
            f"{path}: the saved spec no longer resolves to the same model (a default or a part "
            f"changed since plugformer {metadata.get('plugformer.version', '?')}):\n"
            f"  saved: {text}\n  now:   {spec}\n"
            "load it with the library version that saved it, or rebuild it from the new spec"
        )
    model = build(spec, registry=registry, device=device, dtype=dtype)
    try:
        load_model(model, str(path), strict=True, device=str(device or "cpu"))
    except (SafetensorError, RuntimeError) as err:
        raise CheckpointError(f"{path}: weights do not fit the spec's model: {err}") from None
    expected = metadata.get("plugformer.sha256")
    if expected and dtype is None and _digest(model.state_dict()) != expected:
        raise CheckpointError(f"{path}: tensor data does not match its checksum (the file was altered)")
    return model


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The checkpoint's metadata: spec, library version, parts used and their plugins."""
    metadata = dict(_read_metadata(Path(path)))
    metadata["plugformer.parts"] = json.loads(metadata.get("plugformer.parts", "{}"))
    return metadata


def _read_metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path}: not a readable safetensors file (truncated or damaged?): {err}"
        ) from None
    if metadata.get("format") != FORMAT or "plugformer.spec" not in metadata:
        raise CheckpointError(
            f"{path}: a safetensors file, but not a plugformer checkpoint (no spec in its "
            "metadata); save models with plugformer.save"
        )
    return metadata


def _digest(state: dict[str, torch.Tensor]) -> str:
    sha = hashlib.sha256()
    seen: set[int] = set()
    for key in sorted(state):
        tensor = state[key]
        if tensor.data_ptr() in seen:  # tied weights are stored once
            continue
        seen.add(tensor.data_ptr())
        sha.update(key.encode())
        sha.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def _parts_of(spec: Spec, registry: Registry) -> dict[str, str]:
    """:func:`_parts_used`, with a hint when the model came from another registry."""
    try:
        return _parts_used(spec, registry)
    except UnknownPartError as err:
        raise ValueError(
            f"cannot save: {err}. Was the model built from another registry? "
            "Pass it: plugformer.save(model, path, registry=...)"
        ) from None


def _parts_used(spec: Spec, registry: Registry) -> dict[str, str]:
    """``kind:name`` -> plugin that supplied it, for every part in the spec tree."""
    from plugformer.registry.builder import slot_kind

    used: dict[str, str] = {}

    def walk(node: Spec, kind: str) -> None:
        part = registry.get(kind, node.name)
        used[part.label] = part.plugin or part.source
        for arg in part.args:
            slot, _ = slot_kind(arg.type)
            value = node.kwargs.get(arg.name)
            if slot is None or value is None:
                continue
            for item in value.items if isinstance(value, PerLayer) else (value,):
                walk(item, slot)

    walk(spec, "model")
    return used


def _missing_part(err: SpecError, text: str, parts: dict[str, str], path: Path, registry: Registry) -> CheckpointError:
    for label, plugin in parts.items():
        kind, _, name = label.partition(":")
        try:
            registry.get(kind, name)
        except UnknownPartError:
            return CheckpointError(
                f"{path}: the checkpoint needs {kind} {name!r}, which no installed plugin supplies "
                f"(it came from plugin {plugin!r}); install that plugin to load it"
            )
    return CheckpointError(f"{path}: its spec does not resolve: {err}")
