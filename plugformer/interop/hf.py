"""Hugging Face ``transformers`` models in and out: :func:`to_hf`, :func:`from_hf`.

Two decoder-only shapes have a direct counterpart: ``llama_tiny``-shaped ``lm`` models (rope,
swiglu, rmsnorm, pre_ln, grouped-query attention) are ``LlamaForCausalLM``; ``gpt_tiny``-shaped
ones (learned positions, gelu, layernorm, pre_ln, biases) are ``GPT2LMHeadModel``. Anything else
(``bra`` attention, ``alibi``, ``moe``, ``post_ln``, QK-norm, ...) raises :class:`InteropError`
naming the part. Both directions agree on logits to float tolerance and a round trip keeps every
weight bit when sqrt(d_model) is a power of two (see :mod:`plugformer.interop.hf_common`).

``transformers`` is optional (``pip install 'plugformer[hf]'``) and imported only when called.

Generation: our ``lm.generate(prompt, n)`` returns the new tokens only, (B, n); Hugging Face's
``generate(input_ids, max_new_tokens=n)`` returns prompt and new tokens, (B, L + n).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Optional

from torch import nn

from plugformer.interop.hf_common import InteropError, require_transformers, spec_part
from plugformer.interop.hf_gpt2 import from_gpt2, gpt2_config, to_gpt2
from plugformer.interop.hf_llama import RopeLayout, from_llama, llama_config, to_llama
from plugformer.plugins.positional import LearnedPositions
from plugformer.plugins.rope import RotaryPositions
from plugformer.registry.registry import Registry

__all__ = ["InteropError", "from_hf", "hf_config", "to_hf"]


def to_hf(model: nn.Module) -> nn.Module:
    """A Hugging Face causal LM with ``model``'s weights, in eval mode, same dtype and device.

    ``rope`` models become ``LlamaForCausalLM``, ``learned``-position models ``GPT2LMHeadModel``.

    Raises:
        InteropError: a part with no counterpart in the target, named in the message.
        ImportError: transformers is not installed.
    """
    with _naming_target(model) as target:
        return to_llama(model) if target == "llama" else to_gpt2(model)


def hf_config(model: nn.Module) -> Any:
    """The ``transformers`` config :func:`to_hf` would give ``model`` (checks without weights)."""
    with _naming_target(model) as target:
        return llama_config(model) if target == "llama" else gpt2_config(model)


def from_hf(
    hf_model: nn.Module, *, rope_layout: RopeLayout = "interleaved", registry: Optional[Registry] = None
) -> nn.Module:
    """Our ``lm`` (float32, CPU, eval mode) with the weights of a ``LlamaForCausalLM`` or a
    ``GPT2LMHeadModel``; ``model.spec`` is an ``lm(...)`` spec that rebuilds it.

    Args:
        hf_model: the Hugging Face model.
        rope_layout: for Llama, the rope layout of the result ('interleaved' reorders the
            query/key rows; 'half' keeps Hugging Face's). Ignored for GPT-2.
        registry: the registry to build from (default: the default registry).

    Raises:
        InteropError: another architecture, or a config setting with no counterpart here.
    """
    require_transformers()
    model_type = getattr(getattr(hf_model, "config", None), "model_type", None)
    if model_type == "llama":
        return from_llama(hf_model, rope_layout=rope_layout, registry=registry)
    if model_type == "gpt2":
        return from_gpt2(hf_model, registry=registry)
    raise InteropError(
        f"Hugging Face model type {model_type!r} ({type(hf_model).__name__}) has no counterpart; "
        "'llama' and 'gpt2' map"
    )


@contextmanager
def _naming_target(model: nn.Module) -> Iterator[str]:
    """The target of ``model``; an :class:`InteropError` inside says why that target was chosen
    (a Llama-shaped model with learned positions is told it went to GPT-2 because of them)."""
    target = _target(model)
    try:
        yield target
    except InteropError as err:
        pe = spec_part(model, "pe", model.decoder.pe)
        why = "GPT-2, the only one with learned positions" if target == "gpt2" else "Llama, the only one with rope"
        raise InteropError(f"{err} (pe={pe} maps to {why})") from None


def _target(model: nn.Module) -> str:
    pe = getattr(getattr(model, "decoder", None), "pe", None)
    if isinstance(pe, RotaryPositions):
        return "llama"
    if isinstance(pe, LearnedPositions):
        return "gpt2"
    if getattr(model, "kind", None) != "lm":
        raise InteropError(
            f"only decoder-only 'lm' models map to Hugging Face; got a {type(model).__name__} "
            f"(kind {getattr(model, 'kind', None)!r})"
        )
    raise InteropError(
        f"positional encoding {spec_part(model, 'pe', pe)} has no Hugging Face counterpart; rope maps "
        "to Llama, learned to GPT-2"
    )
