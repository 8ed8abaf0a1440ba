"""``rope``: rotary position embedding (Su et al., 2021, "RoFormer").

Each pair of query/key features (x_2i, x_2i+1) at position m is rotated by the angle
m * theta_i, theta_i = base^(-2i/d): in complex form x_i -> x_i * e^(i m theta_i). The dot
product of a query at m and a key at n then depends on m - n only, so attention sees relative
positions while the cache stores keys already rotated at their absolute positions.

``fraction`` < 1 rotates only the first ``fraction * head_dim`` features of each head and passes
the rest through (partial rotary, GPT-NeoX / GPT-J ``rotary_dim``). ``layout`` says how features
pair up: ``interleaved`` pairs neighbours (2i, 2i+1), as the paper and Meta's LLaMA code;
``half`` pairs i with i + d/2, as GPT-NeoX and Hugging Face's ``rotate_half`` (the two differ by a
fixed permutation of the q/k projection rows). Tested against the complex-number form.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from plugformer.core.context import BuildContext
from plugformer.core.interfaces import PositionalEncoding
from plugformer.core.slots import ArgumentError
from plugformer.hooks import hookimpl

Layout = Literal["interleaved", "half"]


class RotaryPositions(PositionalEncoding):
    """Rotates queries and keys by their absolute positions; no parameters.

    Rotation runs in float32 (float64 for float64 input) and the result is cast back to the
    input's dtype.

    Args:
        head_dim: width of each attention head.
        base: wavelength base, theta_i = base^(-2i / rotary_dim). Default: 10000.
        fraction: share of each head's features that are rotated (the first ones). Default: 1.
        layout: ``interleaved`` (pairs 2i, 2i+1) or ``half`` (pairs i, i + rotary_dim / 2).
            Default: interleaved.
        device: accepted for the common constructor shape; there are no tensors to place.
    """

    uses_rotate = True

    def __init__(
        self,
        *,
        head_dim: int,
        base: float = 10000.0,
        fraction: float = 1.0,
        layout: Layout = "interleaved",
        device=None,
    ) -> None:
        super().__init__()
        rotary_dim = rotary_width(head_dim, fraction)
        if base <= 1.0:
            raise ValueError(f"rope base must be > 1, got {base}")
        if layout not in ("interleaved", "half"):
            raise ValueError(f"rope layout must be 'interleaved' or 'half', got {layout!r}")
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim
        self.base = base
        self.layout = layout

    def angles(self, positions: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """positions (L,) or (B, L) -> angles m * theta_i, (..., L, rotary_dim / 2), in ``dtype``
        (float32 or wider).

        The frequencies are computed here rather than kept in a buffer, so that ``model.half()``
        cannot round them (an error that grows with the position).
        """
        exponents = torch.arange(0, self.rotary_dim, 2, device=positions.device, dtype=dtype)
        inv_freq = self.base ** -(exponents / self.rotary_dim)  # (R/2,)
        return positions.to(dtype)[..., None] * inv_freq

    def rotate(self, q: Tensor, k: Tensor, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        """q: (B, H, Lq, Dh), k: (B, Hkv, Lk, Dh); positions (Lq,) / (Lk,) or (B, Lq) / (B, Lk).

        Returns q and k rotated, same shapes and dtypes.
        """
        return self.rotate_one(q, q_pos), self.rotate_one(k, k_pos)

    def rotate_one(self, x: Tensor, positions: Tensor) -> Tensor:
        """x: (B, H, L, Dh), positions (L,) or (B, L) -> x rotated, (B, H, L, Dh)."""
        wide = torch.promote_types(x.dtype, torch.float32)
        angles = self.angles(positions, wide)  # (L, R/2) or (B, L, R/2)
        if angles.dim() == 3:
            angles = angles[:, None]  # (B, 1, L, R/2): broadcast over heads
        cos, sin = angles.cos(), angles.sin()
        rotary, rest = x[..., : self.rotary_dim].to(wide), x[..., self.rotary_dim :]
        if self.layout == "interleaved":
            pairs = rotary.unflatten(-1, (-1, 2))  # (..., L, R/2, 2)
            a, b = pairs[..., 0], pairs[..., 1]
            rotated = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
        else:
            a, b = rotary.chunk(2, dim=-1)  # (..., L, R/2) each
            rotated = torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
        return torch.cat([rotated.to(x.dtype), rest], dim=-1)

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, base={self.base}, "
            f"layout={self.layout!r}"
        )


def rotary_width(head_dim: int, fraction: float) -> int:
    """The rotated features of a head: ``fraction * head_dim`` rounded down to an even number."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"rope fraction must be in (0, 1], got {fraction}")
    width = int(head_dim * fraction) // 2 * 2
    if width < 2:
        raise ValueError(
            f"rope fraction {fraction} of head_dim {head_dim} rotates {width} features; at least 2 "
            "(one pair) are needed"
        )
    return width


def rope(
    ctx: BuildContext, *, base: float = 10000.0, fraction: float = 1.0, layout: Layout = "interleaved"
) -> RotaryPositions:
    """Rotary position embedding on queries and keys (Su et al. 2021; GPT-J, LLaMA).

    Args:
        base: wavelength base, theta_i = base^(-2i / rotary_dim).
        fraction: share of each head's features rotated (the first ones); e.g. 0.5 rotates the
            first half, as GPT-NeoX's rotary_pct. Rounded down to an even width.
        layout: interleaved pairs (2i, 2i+1) as the paper and Meta's LLaMA; half pairs
            (i, i + d/2) as GPT-NeoX and Hugging Face's rotate_half.
    """
    if base <= 1.0:
        raise ArgumentError("base", f"base must be > 1, got {base}")
    try:
        rotary_width(ctx.head_dim, fraction)
    except ValueError as err:
        raise ArgumentError("fraction", str(err).removeprefix("rope ")) from None
    return RotaryPositions(
        head_dim=ctx.head_dim, base=base, fraction=fraction, layout=layout, device=ctx.device
    )


@hookimpl
def plugformer_register(registry) -> None:
    registry.add("positional", "rope", rope)
