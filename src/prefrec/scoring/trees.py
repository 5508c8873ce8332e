"""The shapes every scorer shares: a sample as a *tree* (one prefix, branches of question + responses) and the
`Scores` of its responses. prefrec.scoring.encoding makes trees from text; prefrec.scoring.packing scores them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Branch:
    question: list[int]  # token ids appended to the tree's prefix to form this branch's prompt (may be empty)
    responses: list[list[int]]  # token ids of each response (non-empty), e.g. [chosen, rejected_1, ...]
    # collaborative item tokens in the question (prefrec.scoring.soft): (position in `question`, table row)
    soft: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Tree:
    prefix: list[int]  # token ids shared by every branch
    branches: list[Branch]
    soft: list[tuple[int, int]] = field(default_factory=list)  # item tokens in the prefix: (position, table row)

    def prompt_soft(self, b: int) -> list[tuple[int, int]]:
        """The item tokens of branch b's whole prompt (prefix + question): (position, table row)."""
        return list(self.soft) + [(len(self.prefix) + p, row) for p, row in self.branches[b].soft]

    def n_tokens(self) -> int:
        """Length of this tree in a packed row."""
        return len(self.prefix) + sum(len(b.question) + sum(map(len, b.responses)) for b in self.branches)

    def n_naive_tokens(self) -> int:
        """Total tokens of the naive layout: one full sequence prefix + question + response per response."""
        return sum(len(r) + len(self.prefix) + len(b.question) for b in self.branches for r in b.responses)

    def n_responses(self) -> int:
        return sum(len(b.responses) for b in self.branches)


@dataclass
class Scores:
    """Log-probs of N responses. `summed[n]` = Σ_t log π(y_t | prompt, y_<t) over response n's tokens (float32 or
    wider; keeps the autograd graph unless computed under no_grad/inference_mode); `token_logps[n]` the per-token
    terms (T_n,), when asked for; `index[n]` = (tree, branch, response), in the order trees → branches →
    responses."""

    summed: Tensor
    token_logps: list[Tensor] | None
    index: list[tuple[int, int, int]]

    def nested(self) -> list[list[Tensor]]:
        """[tree][branch] -> Tensor (n_responses,) of summed log-probs (views into `summed`, grad kept)."""
        out: list[list[Tensor]] = []
        start = 0
        while start < len(self.index):
            t, b, _ = self.index[start]
            stop = start
            while stop < len(self.index) and self.index[stop][:2] == (t, b):
                stop += 1
            while len(out) <= t:
                out.append([])
            out[t].append(self.summed[start:stop])
            start = stop
        return out

    def chosen_rejected(self, pairs: bool = False) -> tuple[Tensor, Tensor]:
        """Split into the losses' inputs, one row per tree: chosen (B,) [or (B, k) with pairs], rejected (B, k).

        Convention of `encode_sample(which="all")`: response 0 of every branch is chosen, the others rejected.
        chosen_b = mean over branches of the branch's chosen log-prob (one branch: just the chosen; pairwise task:
        the k orderings "positive, negative_i" each have their own prompt, and a mean of log-probs gives the mean of
        their rewards, since the reward is linear); rejected_b = every other response, in order. Every tree must
        have the same k. pairs=True: chosen[b, i] = the chosen log-prob of the branch rejected i belongs to (its own
        prompt's chosen, what DPO pairs it with); trees without rejected responses keep chosen (B,).
        """
        chosen, rejected = [], []
        for branches in self.nested():
            rejected.append(torch.cat([b[1:] for b in branches]))
            if pairs and rejected[-1].numel():
                chosen.append(torch.cat([b[:1].expand(len(b) - 1) for b in branches]))
            else:
                chosen.append(torch.stack([b[0] for b in branches]).mean())
        ks = {r.numel() for r in rejected}
        if len(ks) != 1:
            raise ValueError(f"trees have different numbers of rejected responses: {sorted(ks)}")
        return torch.stack(chosen), torch.stack(rejected)
