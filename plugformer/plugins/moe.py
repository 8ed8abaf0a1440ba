"""``moe``: a sparse mixture-of-experts feed-forward layer (Shazeer et al., 2017; GShard, 2020;
Switch Transformer, 2021; Mixtral, 2024).

A linear router scores every token against ``n_experts`` experts; each token goes to its
``top_k`` best, and its output is the sum of those experts' outputs weighted by the router's
softmax probabilities (renormalised over the chosen k, as Mixtral; the raw probabilities with
``renormalize=false``, as Switch). Tokens are dispatched by sorting the (token, expert)
assignments by expert and running each expert once on its tokens, gathered with
``index_select`` and scattered back with ``index_add_``: one loop over experts, none over tokens.

Load balancing (Switch, eq. 4; GShard): ``aux_loss = n_experts * sum_i f_i * P_i``, where f_i is
the share of assignments routed to expert i (before any dropping; not differentiable) and P_i
the mean router probability of expert i. It is 1 when routing is uniform and grows to
``n_experts`` when everything goes to one expert. Each forward leaves it on the module as
``aux_loss`` (a scalar tensor, differentiable through P); the trainer adds it to the loss with a
small weight (Switch: 0.01). ``last_tokens_per_expert`` holds how many assignments each expert
received, ``last_dropped`` how many were dropped for capacity.

Capacity: with ``capacity_factor`` none (the default) nothing is dropped. With a factor c each
expert processes at most ceil(c * tokens * top_k / n_experts) assignments of each sequence (a
batch row is its own group, as GShard's groups, so a row's output does not depend on the other
rows); first choices are served before second choices (GShard's priority), and within a choice
earlier tokens first. A dropped assignment contributes zero, so with a residual connection the
token passes through unchanged for that slot.

Padding: given ``token_mask`` (the blocks pass it: ``uses_token_mask``), padded tokens are not
routed; they take no capacity, count in neither f_i nor P_i, and get a zero output. A padded
row therefore routes, drops and balances exactly as the same tokens alone.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from torch import Tensor, nn

from plugformer.core.context import BuildContext
from plugformer.core.interfaces import FeedForward
from plugformer.core.slots import ArgumentError
from plugformer.hooks import hookimpl
from plugformer.plugins.feedforward import FeedForwardNetwork
from plugformer.plugins.gated_ffn import GatedFeedForward, llama_hidden_dim

Expert = Literal["relu", "gelu", "swiglu"]


class MixtureOfExperts(FeedForward):
    """Top-k routed experts with a load-balancing loss; (B, L, D) -> (B, L, D).

    With one expert and ``top_k=1`` it equals that expert (tested), and with ``capacity_factor``
    none every assignment reaches an expert.

    Args:
        router: ``nn.Linear(d_model, n_experts)`` scoring tokens against experts.
        experts: the expert networks, each (N, D) -> (N, D).
        top_k: experts per token. Default: 2.
        capacity_factor: per-expert capacity as a multiple of an even share, or None for no
            dropping. Default: None.
        renormalize: weight the chosen experts by their probabilities renormalised to sum to 1
            (Mixtral); otherwise by the raw softmax probabilities (Switch). Default: True.
    """

    def __init__(
        self,
        *,
        router: nn.Linear,
        experts: list[nn.Module],
        top_k: int = 2,
        capacity_factor: Optional[float] = None,
        renormalize: bool = True,
    ) -> None:
        super().__init__()
        check_routing(len(experts), top_k, capacity_factor)
        if router.out_features != len(experts):
            raise ValueError(
                f"router scores {router.out_features} experts but {len(experts)} were given"
            )
        self.router = router
        self.experts = nn.ModuleList(experts)
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.renormalize = renormalize
        self.aux_loss = torch.zeros(())
        self.last_tokens_per_expert = torch.zeros(len(experts), dtype=torch.long)
        self.last_dropped = torch.zeros((), dtype=torch.long)

    @property
    def n_experts(self) -> int:
        return len(self.experts)

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: (N, D) -> router probabilities (N, E) float32, chosen experts (N, k) and their
        weights (N, k)."""
        probs = self.router(x).float().softmax(-1)  # (N, E)
        weights, chosen = probs.topk(self.top_k, dim=-1)  # (N, k) each
        if self.renormalize:
            weights = weights / weights.sum(-1, keepdim=True)
        return probs, chosen, weights

    uses_token_mask = True

    def forward(self, x: Tensor, *, token_mask: Optional[Tensor] = None) -> Tensor:
        """x: (B, L, D) -> (B, L, D); token_mask: (B, L) bool, True = a real token (None = all).

        Sets ``aux_loss``, ``last_tokens_per_expert``, ``last_dropped`` over the real tokens.
        """
        rows, length = (1, x.shape[0]) if x.dim() == 2 else (x.shape[0], x.shape[-2])
        flat = x.reshape(-1, x.shape[-1])  # (N, D)
        real = torch.ones(flat.shape[0], dtype=torch.bool, device=x.device)
        if token_mask is not None:
            real = token_mask.reshape(-1).to(x.device)
        kept = real.nonzero().squeeze(1)  # (n,) real tokens, in order
        probs, chosen, weights = self.route(flat.index_select(0, kept))
        # Assignments in priority order: all first choices by token, then all second choices.
        expert_of = chosen.t().reshape(-1)  # (k * n,)
        token_of = kept.repeat(self.top_k)
        weight_of = weights.t().reshape(-1).to(x.dtype)
        counts = torch.bincount(expert_of, minlength=self.n_experts)  # (E,)
        self.aux_loss = self.balance_loss(probs, counts)
        self.last_tokens_per_expert = counts.detach()
        row_of = token_of.div(length, rounding_mode="floor")
        capacity = self.capacity(real.view(rows, length).sum(1))  # (B,)
        served = _rank_in_group(row_of * self.n_experts + expert_of) < capacity[row_of]  # (k * n,)
        out = torch.zeros_like(flat)
        for index, expert in enumerate(self.experts):
            taken = (served & (expert_of == index)).nonzero().squeeze(1)
            if taken.numel() == 0:
                continue
            tokens = token_of[taken]
            y = expert(flat.index_select(0, tokens)) * weight_of[taken, None]  # (n_e, D)
            out.index_add_(0, tokens, y)
        self.last_dropped = (~served).sum()
        return out.view_as(x)

    def capacity(self, n_tokens: Tensor | int) -> Tensor | int:
        """Most assignments one expert processes for a sequence of ``n_tokens`` real tokens
        (an int, or a tensor of counts per row)."""
        if self.capacity_factor is None:
            return n_tokens * self.top_k
        share = self.capacity_factor * n_tokens * self.top_k / self.n_experts
        return share.ceil().long() if isinstance(share, Tensor) else math.ceil(share)

    def balance_loss(self, probs: Tensor, counts: Tensor) -> Tensor:
        """n_experts * sum_i f_i * P_i from probabilities (N, E) and assignment counts (E,)."""
        share = counts.to(probs.dtype) / counts.sum().clamp(min=1)  # f_i
        mean_prob = probs.mean(0) if probs.shape[0] else torch.zeros_like(share)  # P_i
        return self.n_experts * (share * mean_prob).sum()

    def extra_repr(self) -> str:
        return (
            f"n_experts={self.n_experts}, top_k={self.top_k}, "
            f"capacity_factor={self.capacity_factor}, renormalize={self.renormalize}"
        )


def _rank_in_group(group: Tensor) -> Tensor:
    """For each item, how many earlier items share its group: group (n,) long -> (n,) long."""
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(group.numel(), device=group.device) - first[group[order]]
    return rank


def check_routing(n_experts: int, top_k: int, capacity_factor: Optional[float]) -> None:
    """Raise ValueError for impossible routing settings."""
    if n_experts < 1:
        raise ValueError(f"n_experts must be >= 1, got {n_experts}")
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k must be in [1, n_experts={n_experts}], got {top_k}")
    if capacity_factor is not None and capacity_factor <= 0:
        raise ValueError(f"capacity_factor must be > 0 (or none for no dropping), got {capacity_factor}")


def expert_network(ctx: BuildContext, expert: Expert, d_ff: Optional[int], bias: bool) -> FeedForward:
    """One expert: a plain ReLU/GELU FFN (d_ff default 4 * d_model) or a SwiGLU one (d_ff
    default LLaMA's 8/3 * d_model rounded up to a multiple of 64)."""
    fk = ctx.factory_kwargs
    if expert == "swiglu":
        width = llama_hidden_dim(ctx.d_model, 64) if d_ff is None else d_ff
        return GatedFeedForward(
            d_model=ctx.d_model, d_ff=width, activation=nn.SiLU(), dropout=ctx.dropout, bias=bias, **fk
        )
    activations = {"relu": nn.ReLU, "gelu": nn.GELU}
    if expert not in activations:
        raise ValueError(f"expert must be 'relu', 'gelu' or 'swiglu', got {expert!r}")
    width = 4 * ctx.d_model if d_ff is None else d_ff
    return FeedForwardNetwork(
        d_model=ctx.d_model, d_ff=width, activation=activations[expert](), dropout=ctx.dropout,
        bias=bias, **fk,
    )


def moe(
    ctx: BuildContext,
    *,
    n_experts: int = 8,
    top_k: int = 2,
    expert: Expert = "swiglu",
    d_ff: Optional[int] = None,
    capacity_factor: Optional[float] = None,
    renormalize: bool = True,
    bias: bool = False,
) -> MixtureOfExperts:
    """Mixture of experts: a softmax router sends each token to its top-k expert FFNs.

    Leaves a load-balancing loss (Switch: n_experts * sum f_i P_i, 1 when balanced) on the
    module as aux_loss after each forward, and tokens per expert as last_tokens_per_expert.

    Args:
        n_experts: number of experts.
        top_k: experts each token is sent to.
        expert: the expert network: relu, gelu (plain FFN) or swiglu (gated).
        d_ff: hidden width of each expert; none means 4 * d_model for relu/gelu and 8/3 * d_model
            rounded up to a multiple of 64 for swiglu.
        capacity_factor: none drops nothing; c caps each expert at ceil(c * tokens * top_k /
            n_experts) assignments of each sequence (its real tokens), first choices served
            first, then earlier tokens.
        renormalize: weight the chosen experts by probabilities renormalised over the top-k
            (Mixtral); false uses the raw softmax probabilities (Switch).
        bias: biases in the experts' projections.
    """
    try:
        check_routing(n_experts, top_k, capacity_factor)
    except ValueError as err:
        argument = str(err).split(" ", 1)[0]
        raise ArgumentError(("top_k", "n_experts") if argument == "top_k" else argument, str(err)) from None
    if d_ff is not None and d_ff < 1:
        raise ArgumentError("d_ff", f"d_ff must be >= 1, got {d_ff}")
    return MixtureOfExperts(
        router=nn.Linear(ctx.d_model, n_experts, bias=False, **ctx.factory_kwargs),
        experts=[expert_network(ctx, expert, d_ff, bias) for _ in range(n_experts)],
        top_k=top_k,
        capacity_factor=capacity_factor,
        renormalize=renormalize,
    )


@hookimpl
def plugformer_register(registry) -> None:
    registry.add("feedforward", "moe", moe)
