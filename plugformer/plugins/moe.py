"""``moe``: a sparse mixture-of-experts feed-forward layer (Shazeer et al., 2017; GShard, 2020;
Switch Transformer, 2021; Mixtral, 2024).

A linear router scores every token against ``n_experts`` experts; each token goes to its
``top_k`` best, and its output is the sum of those experts' outputs weighted by the router's
softmax probabilities (renormalised over the chosen k, as Mixtral; the raw probabilities with
``renormalize=false``, as Switch). Dispatch has static shapes, as GShard and Switch: each
assignment's place in its expert's queue is a cumulative sum of one-hot assignments, the
tokens are scattered into one block of C slots per expert (C fixed by the shapes), each
expert runs once on its block (a loop over the fixed number of experts, none over tokens) and
the outputs are gathered back weighted by the gate, so ``torch.compile(fullgraph=True)``
captures it in one graph. Eagerly, the blocks shrink to the experts' actual loads.

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
import torch.nn.functional as F
from torch import Tensor, nn

from plugformer.core.context import BuildContext
from plugformer.core.interfaces import FeedForward
from plugformer.core.slots import ArgumentError
from plugformer.core.tracing import eager
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
        """x: (N, D) -> router probabilities (N, E), chosen experts (N, k) and their weights
        (N, k); the softmax runs in float32, or float64 for float64 input."""
        logits = self.router(x)  # (N, E)
        probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)  # (N, k) each
        if self.renormalize:
            weights = weights / weights.sum(-1, keepdim=True)
        return probs, chosen, weights

    uses_token_mask = True

    def forward(self, x: Tensor, *, token_mask: Optional[Tensor] = None) -> Tensor:
        """x: (B, L, D) or (L, D) -> same shape; token_mask: (B, L) bool, True = a real token
        (None = all).

        Sets ``aux_loss``, ``last_tokens_per_expert``, ``last_dropped`` over the real tokens.
        """
        batch = 1 if x.dim() == 2 else x.shape[0]
        rows = x.reshape(batch, x.shape[-2], x.shape[-1])  # (B, L, D)
        length, width = rows.shape[1:]
        real = torch.ones(batch, length, dtype=torch.bool, device=x.device)
        if token_mask is not None:
            real = token_mask.reshape(batch, length).to(x.device)
        probs, chosen, weights = self.route(rows.reshape(-1, width))  # (B*L, E), (B*L, k) x2
        # Assignments in priority order within each row: all first choices by token, then all
        # second choices, ...: (B, k*L).
        expert_of = chosen.view(batch, length, self.top_k).transpose(1, 2).reshape(batch, -1)
        weight_of = weights.view(batch, length, self.top_k).transpose(1, 2).reshape(batch, -1)
        live = real.repeat(1, self.top_k)  # (B, k*L) assignments of real tokens
        onehot = F.one_hot(expert_of, self.n_experts) * live[..., None]  # (B, k*L, E)
        counts = onehot.sum((0, 1))  # (E,)
        self.aux_loss = self.balance_loss(probs, counts, real.reshape(-1))
        self.last_tokens_per_expert = counts.detach()
        slot = ((onehot.cumsum(1) - 1) * onehot).sum(-1)  # (B, k*L) place in its expert's row queue
        capacity = self.capacity(real.sum(1))  # (B,)
        served = live & (slot < capacity[:, None])  # (B, k*L)
        self.last_dropped = (live & ~served).sum()
        gate = torch.where(served, weight_of, 0).to(x.dtype)  # (B, k*L), 0 where dropped
        out = self.dispatch_and_combine(rows, expert_of, served, gate)
        return out.view_as(x)

    def dispatch_and_combine(self, rows: Tensor, expert_of: Tensor, served: Tensor, gate: Tensor) -> Tensor:
        """Run each expert once on a buffer of its served assignments; sum them back per token.

        rows (B, L, D); per assignment in priority order (B, k*L): its expert, whether it is
        served, its gate weight (0 if not served). Returns (B, L, D).

        Expert e's assignments of all rows go, in order, to its own block of slots in one
        (S + 1, D) buffer whose last row is a sink for dropped assignments and is never read.
        Traced, every block has the static size B * (the most one expert can take from a row:
        L without capacity, else the capacity of L real tokens); in eager mode each block is
        exactly its expert's load (one host sync, as any data-dependent dispatch needs) and
        experts without assignments are skipped.
        """
        batch, length, width = rows.shape
        expert_of, served = expert_of.flatten(), served.flatten()  # (B*k*L,)
        flat = F.one_hot(expert_of, self.n_experts) * served[:, None]  # (B*k*L, E)
        slot = ((flat.cumsum(0) - 1) * flat).sum(-1)  # (B*k*L,) place in its expert's block
        load = flat.sum(0)  # (E,)
        if eager():
            sizes = load.tolist()
            starts = load.cumsum(0) - load  # (E,)
        else:
            sizes = [batch * min(length, self.capacity(length))] * self.n_experts
            starts = torch.arange(self.n_experts, device=rows.device) * sizes[0]
        sink = sum(sizes)
        index = torch.where(served, starts[expert_of] + slot, sink)  # (B*k*L,)
        tokens = rows.repeat(1, self.top_k, 1).flatten(0, 1)  # (B*k*L, D), assignments' inputs
        spread = index[:, None].expand(-1, width)
        buffer = rows.new_zeros(sink + 1, width).scatter(0, spread, tokens)  # (S+1, D)
        blocks = buffer[:sink].split(sizes)  # E x (S_e, D)
        outputs = [expert(block) if block.shape[0] else block for block, expert in zip(blocks, self.experts)]
        results = torch.cat([*outputs, rows.new_zeros(1, width)])  # (S+1, D)
        gathered = results.gather(0, spread) * gate.flatten()[:, None]  # (B*k*L, D)
        return gathered.view(batch, self.top_k, length, width).sum(1)

    def capacity(self, n_tokens: Tensor | int) -> Tensor | int:
        """Most assignments one expert processes for a sequence of ``n_tokens`` real tokens
        (an int, or a tensor of counts per row)."""
        if self.capacity_factor is None:
            return n_tokens * self.top_k
        share = self.capacity_factor * n_tokens * self.top_k / self.n_experts
        return share.ceil().long() if isinstance(share, Tensor) else math.ceil(share)

    def balance_loss(self, probs: Tensor, counts: Tensor, real: Optional[Tensor] = None) -> Tensor:
        """n_experts * sum_i f_i * P_i from probabilities (N, E), assignment counts (E,) and
        which tokens are real (N,) bool (None = all; P_i averages over the real ones)."""
        share = counts.to(probs.dtype) / counts.sum().clamp(min=1)  # f_i
        if real is None:
            real = torch.ones(probs.shape[0], dtype=torch.bool, device=probs.device)
        kept = torch.where(real[:, None], probs, 0)  # (N, E)
        mean_prob = kept.sum(0) / real.sum().clamp(min=1)  # P_i
        return self.n_experts * (share * mean_prob).sum()

    def extra_repr(self) -> str:
        return (
            f"n_experts={self.n_experts}, top_k={self.top_k}, "
            f"capacity_factor={self.capacity_factor}, renormalize={self.renormalize}"
        )


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
