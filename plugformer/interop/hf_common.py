"""What the Hugging Face converters share: the error, the lazy import, checks on an ``lm``.

Our ``lm`` scales token embeddings by sqrt(d_model) (``TokenEmbedding(scale=True)``); Llama and
GPT-2 do not. The exported embedding table is ours times that scale. With an untied head nothing
else changes. With a tied head, the shared table also feeds the head, so its logits would grow by
the same factor: the final norm's gain (and bias) is divided by it, which the head, being linear,
turns back into our logits. Import undoes both. When sqrt(d_model) is a power of two (d_model 64,
256, 1024, ...) multiplying and dividing are exact and a round trip keeps every bit.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from plugformer.core.attention import MultiHeadAttention
from plugformer.plugins.blocks import PreLNBlock
from plugformer.plugins.dense import DenseAttention
from plugformer.plugins.fused import FusedAttention


class InteropError(ValueError):
    """A model, spec or config with no counterpart on the other side; the message names the part."""


def require_transformers() -> Any:
    """The ``transformers`` module, or an :class:`ImportError` that says how to install it."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            "Hugging Face interop needs the transformers package: pip install 'plugformer[hf]'"
        ) from err
    return transformers


def shared_config(model: nn.Module) -> dict[str, Any]:
    """The config entries every exported shape writes alike: the head's tying and the special
    ids (``bos``/``eos`` left unset so that Hugging Face's ``generate`` never stops early)."""
    return {"tie_word_embeddings": is_tied(model), "pad_token_id": model.pad_id,
            "bos_token_id": None, "eos_token_id": None}


def instantiate(class_name: str, config: Any, model: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """``transformers.<class_name>(config)`` on ``model``'s device and dtype, holding ``state``
    (strictly: every key of the Hugging Face model, and no other), in eval mode."""
    transformers = require_transformers()
    weight = next(model.parameters())
    hf = getattr(transformers, class_name)(config).to(device=weight.device, dtype=weight.dtype)
    hf.load_state_dict(state, strict=True)
    return hf.eval()


def spec_part(model: nn.Module, name: str, fallback: nn.Module) -> str:
    """The spec text of ``model``'s argument ``name`` (e.g. ``bra(region=64, ...)``) for error
    messages; the class name of ``fallback`` when the model carries no spec."""
    spec = getattr(model, "spec", None)
    args = dict(getattr(spec, "args", ()))
    return str(args[name]) if name in args else type(fallback).__name__


def check_lm(model: nn.Module, target: str) -> None:
    """Raise :class:`InteropError` unless ``model`` is a pre-LN ``lm`` with exact softmax
    attention, no QK-norm and a final norm (what both Llama and GPT-2 are)."""
    if getattr(model, "kind", None) != "lm":
        raise InteropError(
            f"only decoder-only 'lm' models map to {target}; got a {type(model).__name__} "
            f"(kind {getattr(model, 'kind', None)!r})"
        )
    if isinstance(model.decoder.norm, nn.Identity):
        raise InteropError(f"final_norm=false has no {target} counterpart; {target} has a final norm")
    for i, layer in enumerate(model.decoder.layers):
        where = f"layer {i}"
        if type(layer) is not PreLNBlock:
            part = spec_part(model, "block", layer)
            raise InteropError(f"block {part} ({where}) has no {target} counterpart; it needs pre_ln")
        attn = layer.self_attn
        if type(attn) is not MultiHeadAttention:
            raise InteropError(f"attention {type(attn).__name__} ({where}) has no {target} counterpart")
        kernel = attn.kernel
        if type(kernel) not in (DenseAttention, FusedAttention):
            part = spec_part(model, "attn", kernel)
            raise InteropError(
                f"attention kernel {part} ({where}) has no {target} counterpart; only exact softmax "
                "attention (dense, fused) maps"
            )
        if kernel.scale is not None and kernel.scale != attn.head_dim**-0.5:
            raise InteropError(
                f"attention scale {kernel.scale} ({where}) has no {target} counterpart; it uses "
                f"head_dim ** -0.5 = {attn.head_dim**-0.5}"
            )
        if not (isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)):
            part = spec_part(model, "qk_norm", attn.q_norm)
            raise InteropError(f"qk_norm {part} ({where}) has no {target} counterpart")


def one_value(values: list[Any], what: str, target: str) -> Any:
    """The value all layers share; :class:`InteropError` when they differ (``target`` has one)."""
    if len(set(values)) != 1:
        raise InteropError(f"{what} differs across layers ({values}); {target} has one value")
    return values[0]


def embedding_scale(model: nn.Module) -> float:
    """The factor our token embedding multiplies by (sqrt(d_model) for ``lm``)."""
    return float(model.embed.scale)


def is_tied(model: nn.Module) -> bool:
    return model.lm_head.weight is model.embed.weight


def exported_embeddings(model: nn.Module) -> tuple[Tensor, float]:
    """The embedding table as Llama / GPT-2 use it (ours times the scale), and the factor by
    which the final norm's gain and bias must shrink to keep a tied head's logits (1 if untied)."""
    scale = embedding_scale(model)
    table = model.embed.weight.detach() * scale
    return table, (scale if is_tied(model) else 1.0)


def imported_embeddings(table: Tensor, scale: float, tied: bool) -> tuple[Tensor, float]:
    """Inverse of :func:`exported_embeddings`: our table, and the factor by which the final
    norm's gain and bias must grow."""
    return table / scale, (scale if tied else 1.0)


def spec_float(value: float) -> str:
    """A float as spec text (``repr`` keeps every bit; the spec parser reads exponents)."""
    return repr(float(value))
