"""The arithmetic shared by the tile attentions of :mod:`.sparse` and :mod:`.sparse_region`:
chunking, the softmax backward, dropout masks regenerated in the backward, and sums into places
by a sparse matrix of ones (one parallel pass, where ``index_add_`` runs one small parallel
region per index, which is slow on a busy machine)."""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor

#: Scores per chunk of tiles, all heads together; bounds the working memory.
CHUNK_ELEMENTS = 1 << 22


def parts(tiles: int, scores_per_tile: int) -> list[slice]:
    """Ranges of tiles with about CHUNK_ELEMENTS scores each."""
    step = max(1, CHUNK_ELEMENTS // scores_per_tile)
    return [slice(start, min(start + step, tiles)) for start in range(0, tiles, step)]


def grad_values(p: Tensor, grad_out: Tensor, keep: Optional[Tensor], dropout: float) -> Tensor:
    """d v of out = dropout(p) v: (tc*Hkv, S*R, Dh) from p (tc*Hkv, G*C, S*R), grad_out (…, G*C, Dh)."""
    if keep is None:
        return torch.bmm(p.transpose(1, 2), grad_out)
    return torch.bmm((p * keep).transpose(1, 2), grad_out).div_(1.0 - dropout)


def grad_scores(
    p: Tensor, grad_out: Tensor, v: Tensor, delta: Tensor, keep: Optional[Tensor], dropout: float
) -> Tensor:
    """d scores of out = dropout(p) v with p = softmax(scores), in place of p.

    delta: (tc*Hkv, G*C, 1), rowsum(grad_out * out), the softmax's correction.
    """
    dp = torch.bmm(grad_out, v.transpose(1, 2))  # (tc*Hkv, G*C, S*R)
    if keep is not None:
        dp = dp.mul_(keep).div_(1.0 - dropout)
    return p.mul_(dp.sub_(delta))


def scaled_bmm(a: Tensor, b: Tensor, scale: float) -> Tensor:
    return torch.baddbmm(a.new_empty(a.shape[0], a.shape[1], b.shape[2]), a, b, beta=0.0, alpha=scale)


class Summing:
    """``target[index[i]] += values[i]`` for the tiles of a part, by a sparse matrix of ones.

    Args:
        index: (T, Y) places of the rows of every tile.
        places: number of places (rows of the target).
    """

    def __init__(self, index: Tensor, places: int, dtype: torch.dtype) -> None:
        self.index, self.places, self.dtype = index, places, dtype
        self._part: Optional[tuple[int, int]] = None
        self._matrix: Optional[Tensor] = None

    def add(self, target: Tensor, part: slice, values: Tensor) -> None:
        """target (places, ...) += the rows of values (n, ...) summed by index[part]."""
        if self._part != (part.start, part.stop):
            self._part = (part.start, part.stop)
            self._matrix = summing_matrix(self.index[part].flatten(), self.places, self.dtype)
        target.view(self.places, -1).addmm_(self._matrix, values.reshape(self._matrix.shape[1], -1))


def summing_matrix(index: Tensor, places: int, dtype: torch.dtype) -> Tensor:
    """Sparse CSR (places, n) matrix with a one at (index[i], i)."""
    order = torch.argsort(index, stable=True)
    crow = index.new_zeros(places + 1)
    torch.cumsum(torch.bincount(index, minlength=places), 0, out=crow[1:])
    ones = torch.ones(index.numel(), dtype=dtype, device=index.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, order, ones, size=(places, index.numel()))


def zeros(x: Tensor) -> Tensor:
    return torch.zeros(x.shape, dtype=x.dtype, device=x.device)


def dropout_seed(dropout: float) -> int:
    return int(torch.randint(0, 2**62, ())) if dropout > 0 else 0


def keep_mask(p: Tensor, dropout: float, seed: int, index: int) -> Optional[Tensor]:
    """The dropout keep-mask of chunk ``index``, regenerated identically in backward."""
    if dropout <= 0:
        return None
    generator = torch.Generator(device=p.device).manual_seed(seed + index)
    return torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype) >= dropout


def apply_dropout(p: Tensor, dropout: float, seed: int, index: int) -> Tensor:
    keep = keep_mask(p, dropout, seed, index)
    return p if keep is None else p.mul_(keep).div_(1.0 - dropout)
