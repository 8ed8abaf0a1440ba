"""Save and load models: safetensors weights with the canonical spec in the metadata.

No pickle anywhere: the file is a safetensors header (JSON) and raw tensor bytes. ``load``
checks the header's tensors against the spec's model on the meta device before it allocates
anything, builds the model without random initialisation and copies the weights in. A SHA-256
of the tensor bytes catches a tampered file.

Version skew: the stored spec is canonical (every argument explicit), so the saved values
always win. An argument a part gained since the file was saved takes its default; a default
that changed since (the file records the defaults of every part it uses) is reported by name
in a :class:`CheckpointSkewWarning`; a part or argument that no longer exists fails with a
:class:`CheckpointError` naming it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_model
from torch import nn

from plugformer.registry.errors import SpecError
from plugformer.registry.materialize import skip_random_init
from plugformer.registry.registry import Registry, UnknownPartError, default_registry
from plugformer.registry.spec import PerLayer, Spec, format_spec, parse

FORMAT = "plugformer/1"
#: The metadata key of the tokenizer saved with a model (JSON of ``Tokenizer.to_dict()``).
TOKENIZER_KEY = "plugformer.tokenizer"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: not ours, damaged, or naming parts we lack."""


class CheckpointSkewWarning(UserWarning):
    """A checkpoint loaded, but a default of a part it uses changed since it was saved (its
    saved value is used)."""


def save(model: nn.Module, path: str | Path, *, registry: Optional[Registry] = None,
         tokenizer: Optional[Any] = None) -> Path:
    """Write ``model``'s weights and spec to ``path`` (safetensors). Returns the path.

    ``registry``: the one the model was built from (default: the default registry); the file
    records which plugin supplied each part, so that loading can name a missing one.
    ``tokenizer``: a `plugformer.tasks.tokenizers.Tokenizer` (the text task's) stored with the
    model as the JSON of its ``to_dict()`` (settings, and a BPE's vocabulary and merges); `load`
    gives it back as ``model.tokenizer``. Default: none.
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
        "plugformer.defaults": json.dumps(_defaults_of(spec, registry), sort_keys=True),
        "plugformer.sha256": _digest(model.state_dict()),
    }
    if tokenizer is not None:
        metadata[TOKENIZER_KEY] = json.dumps(tokenizer.to_dict(), sort_keys=True)
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

    The file is untrusted input: before anything is allocated, the tensors its header lists
    (names, shapes, dtypes) are checked against the spec's model built on the meta device.
    The model is then built without random initialisation and the weights are copied in.
    A part that gained an argument since the file was saved builds with that argument's
    default; the saved values of all other arguments win. A model saved with a tokenizer has it
    back as ``model.tokenizer`` (e.g. for `plugformer.textgen.generate_text`).

    Raises:
        CheckpointError: not a plugformer checkpoint, truncated or tampered, a part or argument
            that no longer exists (or that no installed plugin supplies), a saved value that
            now resolves differently, or tensors that do not fit the spec's model (the first
            mismatch is named).
        InsufficientMemoryError: the model does not fit in ``device``'s memory.

    Warns:
        CheckpointSkewWarning: a default of a part the file uses changed since it was saved.
    """
    from plugformer.registry.builder import build

    registry = registry or default_registry()
    path = Path(path)
    metadata = _read_metadata(path)
    spec = _resolve_saved(metadata, path, registry)
    shell = build(spec, registry=registry, device="meta", dtype=dtype)
    _check_tensors(shell, path, exact_dtypes=dtype is None)
    with skip_random_init():
        model = build(spec, registry=registry, device=device, dtype=dtype)
    _copy_weights(model, path, device)
    expected = metadata.get("plugformer.sha256")
    if expected and dtype is None and _digest(model.state_dict()) != expected:
        raise CheckpointError(f"{path}: tensor data does not match its checksum (the file was altered)")
    if TOKENIZER_KEY in metadata:
        model.tokenizer = _saved_tokenizer(metadata[TOKENIZER_KEY], path)
    return model


def _tied_groups(model: nn.Module) -> list[list[str]]:
    """State-dict keys grouped by the tensor they name (tied weights share one group)."""
    groups: dict[int, list[str]] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(key)
    return list(groups.values())


def _check_tensors(shell: nn.Module, path: Path, *, exact_dtypes: bool) -> None:
    """Raise a :class:`CheckpointError` naming the first tensor of the file's header that does
    not fit ``shell`` (the model on the meta device): missing, extra, shape or dtype."""
    expected = shell.state_dict(keep_vars=True)
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = {key: handle.get_slice(key) for key in handle.keys()}
            found = {key: (tuple(part.get_shape()), part.get_dtype()) for key, part in header.items()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: its tensor header is unreadable: {err}") from None
    problem = f"{path}: the file's tensors do not fit the model its spec describes"
    for group in _tied_groups(shell):
        present = [key for key in group if key in found]
        if not present:
            raise CheckpointError(f"{problem}: tensor {group[0]!r} is missing from the file")
        for key in present:
            want, (shape, stored) = expected[key], found[key]
            if shape != tuple(want.shape):
                raise CheckpointError(
                    f"{problem}: tensor {key!r} has shape {shape} in the file, the model needs "
                    f"{tuple(want.shape)}"
                )
            dtype = _DTYPES.get(stored)
            fits = dtype == want.dtype if exact_dtypes else dtype is not None and (
                dtype.is_floating_point == want.dtype.is_floating_point
            )
            if not fits:
                raise CheckpointError(
                    f"{problem}: tensor {key!r} is {stored} in the file, the model holds "
                    f"{want.dtype}" + ("; pass dtype= to convert" if exact_dtypes else "")
                )
    extra = [key for key in found if key not in expected]
    if extra:
        raise CheckpointError(f"{problem}: the file holds tensor {extra[0]!r}, which the model lacks")


def _copy_weights(model: nn.Module, path: Path, device: torch.device | str | None) -> None:
    """Put every tensor of the file into ``model`` (already checked to fit): each parameter or
    buffer takes the loaded tensor as its data, so the uninitialised storage the build made is
    never touched, and tied weights (one object) stay tied."""
    state = model.state_dict(keep_vars=True)
    try:
        with safe_open(str(path), framework="pt", device=str(device or "cpu")) as handle:
            for key in handle.keys():
                target = state[key]
                target.data = handle.get_tensor(key).to(target.dtype)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: its tensor data is unreadable (truncated?): {err}") from None


_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


def _saved_tokenizer(text: str, path: Path) -> Any:
    from plugformer.tasks.tokenizers import tokenizer_from_dict

    try:
        return tokenizer_from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: its stored tokenizer does not load: {err}") from None


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
        sha.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy())  # 0-dim too
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
    used: dict[str, str] = {}

    def walk(node: Spec, kind: str) -> None:
        part = registry.get(kind, node.name)
        used[part.label] = part.plugin or part.source
        for _, slot, value, _ in _slots(node, kind, registry):
            for item in _nested(value) if slot else ():
                walk(item, slot)

    walk(spec, "model")
    return used


def _resolve_saved(metadata: dict[str, str], path: Path, registry: Registry) -> Spec:
    """The saved spec resolved today: saved values, plus defaults for arguments added since."""
    from plugformer.registry.builder import resolve

    text = metadata["plugformer.spec"]
    parts = json.loads(metadata.get("plugformer.parts", "{}"))
    try:
        saved = parse(text)
    except SpecError as err:
        raise CheckpointError(f"{path}: its stored spec does not parse: {err}") from None
    _check_still_exists(saved, "model", parts, path, registry)
    try:
        spec = resolve(saved, registry=registry, check=False)
    except SpecError as err:
        raise CheckpointError(f"{path}: its spec does not resolve: {err}") from None
    if str(_only_saved_args(spec, saved, "model", registry)) != text:
        raise CheckpointError(
            f"{path}: the saved spec no longer resolves to the same model (a value's type or a "
            f"part changed since plugformer {metadata.get('plugformer.version', '?')}):\n"
            f"  saved: {text}\n  now:   {spec}\n"
            "load it with the library version that saved it, or rebuild it from the new spec"
        )
    saved_defaults = json.loads(metadata.get("plugformer.defaults", "{}"))
    for label, defaults in _defaults_of(spec, registry).items():
        for name, then in saved_defaults.get(label, {}).items():
            now = defaults.get(name)
            if now is not None and now != then:
                kind, _, part = label.partition(":")
                warnings.warn(
                    f"{path}: the default of argument {name!r} of {kind} {part!r} changed from "
                    f"{then} to {now} since the file was saved; the saved value is used",
                    CheckpointSkewWarning,
                    stacklevel=3,
                )
    return spec


def _slots(node: Spec, kind: str, registry: Registry):
    """(name, part kind when a part slot else None, value, whether the part still takes it) of
    each argument written in ``node``."""
    from plugformer.registry.builder import slot_kind

    accepted = {arg.name: arg for arg in registry.get(kind, node.name).args}
    for name, value in node.args:
        arg = accepted.get(name)
        yield name, (slot_kind(arg.type)[0] if arg is not None else None), value, arg is not None


def _nested(value: object) -> list[Spec]:
    items = value.items if isinstance(value, PerLayer) else (value,)
    return [item for item in items if isinstance(item, Spec)]


def _check_still_exists(node: Spec, kind: str, parts: dict[str, str], path: Path, registry: Registry) -> None:
    """Raise a :class:`CheckpointError` naming the first part or argument of the saved spec
    that the registry no longer has."""
    try:
        registry.get(kind, node.name)
    except UnknownPartError:
        plugin = parts.get(f"{kind}:{node.name}")
        where = f" (it came from plugin {plugin!r}); install that plugin to load it" if plugin else ""
        raise CheckpointError(
            f"{path}: the checkpoint needs {kind} {node.name!r}, which no installed plugin "
            f"supplies{where}"
        ) from None
    for name, slot, value, exists in _slots(node, kind, registry):
        if not exists:
            raise CheckpointError(
                f"{path}: the checkpoint sets argument {name!r} of {kind} {node.name!r}, which "
                f"{kind} {node.name!r} no longer has; load it with the library version that saved it"
            )
        for item in _nested(value) if slot else ():
            _check_still_exists(item, slot, parts, path, registry)


def _only_saved_args(resolved: Spec, saved: Spec, kind: str, registry: Registry) -> Spec:
    """``resolved`` without the arguments that ``saved`` lacks (those added since it was saved)."""
    written = saved.kwargs
    args = []
    for name, slot, value, _ in _slots(resolved, kind, registry):
        if name not in written:
            continue
        old = written[name]
        if slot and isinstance(value, Spec) and isinstance(old, Spec):
            value = _only_saved_args(value, old, slot, registry)
        elif slot and isinstance(value, PerLayer) and isinstance(old, PerLayer) and len(value.items) == len(old.items):
            value = PerLayer([
                _only_saved_args(v, o, slot, registry) if isinstance(v, Spec) and isinstance(o, Spec) else v
                for v, o in zip(value.items, old.items)
            ])
        args.append((name, value))
    return Spec(resolved.name, args, bare=resolved.bare and not args)


def _defaults_of(spec: Spec, registry: Registry) -> dict[str, dict[str, str]]:
    """``kind:name`` -> {argument: canonical text of its default} for every part in the spec."""
    out: dict[str, dict[str, str]] = {}

    def walk(node: Spec, kind: str) -> None:
        part = registry.get(kind, node.name)
        out[part.label] = {arg.name: _default_text(arg.default) for arg in part.args if not arg.required}
        for _, slot, value, _ in _slots(node, kind, registry):
            for item in _nested(value) if slot else ():
                walk(item, slot)

    walk(spec, "model")
    return out


def _default_text(value: object) -> str:
    try:
        return format_spec(value)
    except (SpecError, TypeError, ValueError):
        return repr(value)
