"""BPR-MF: matrix factorisation trained with the Bayesian Personalized Ranking loss (Rendle et al., UAI 2009).

    score(u, i) = p_u · q_i + b_i                      p_u, q_i in R^d, b_i an item bias
    BPR loss    = −mean log σ(score(u, i) − score(u, j)) + λ (|p_u|² + |q_i|² + |q_j|² + b_i² + b_j²)

over triples (u, i, j) where u prefers i to j. Two kinds of triples, redrawn every epoch:
    implicit  i = an item u interacted with, j = an item drawn uniformly from the vocabulary   (both tasks)
    explicit  i = an item u liked, j = an item u rated but did not like                         (pairwise task)
The implicit triples teach "which items go together"; the explicit ones teach the pairwise task itself.

Test users are not in the training data (users are split disjointly), so each gets a *fold-in* vector: with the
item vectors and biases frozen, p minimises the same implicit BPR loss over the sample's history items (against
uniformly drawn items) + λ|p|², by Adam from p = 0. A test user with no known history item keeps p = 0 and is scored
by the item bias alone.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from prefrec.baselines.common import (
    FIRST_ITEM,
    EvalSet,
    TrainData,
    fill_unknown,
    preference_examples,
)


class MF(nn.Module):
    def __init__(self, n_users: int, n_vocab: int, dim: int = 64):
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_vocab, dim)
        self.bias = nn.Embedding(n_vocab, 1)
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)
        nn.init.zeros_(self.bias.weight)

    def score(self, p: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """p (B, d), items (B, m) -> (B, m)."""
        return (p[:, None, :] * self.item(items)).sum(-1) + self.bias(items).squeeze(-1)

    def score_all(self, p: torch.Tensor) -> torch.Tensor:
        """p (B, d) -> (B, V): scores of every vocabulary entry (columns PAD and UNK are meaningless)."""
        return p @ self.item.weight.T + self.bias.weight.T

    def extra_loss(self, items: torch.Tensor) -> torch.Tensor:
        """Hook for side information on the items in a batch (CMF adds title words); plain MF has none."""
        return self.item.weight.new_zeros(())


def bpr_triples(data: TrainData, rng: np.random.Generator, cap: int) -> np.ndarray:
    """(M, 3) int array of (record, i, j) item indices for one epoch: implicit triples, plus explicit ones for the
    pairwise task (module docstring). Each kind is capped at `cap`, drawn uniformly when there are more."""
    rec = np.concatenate([np.full(len(r.items), k) for k, r in enumerate(data.records)])
    pos = np.concatenate([np.asarray(r.items) for r in data.records])
    if len(rec) > cap:
        pick = rng.integers(0, len(rec), size=cap)
        rec, pos = rec[pick], pos[pick]
    neg = rng.integers(FIRST_ITEM, len(data.vocab), size=len(rec))
    triples = [np.stack([rec, pos, neg], axis=1)]
    if data.preference_pairs:
        ex = preference_examples(data, rng, cap)
        items = [np.asarray(r.items) for r in data.records]
        liked = np.array([items[r][p] for r, p, _ in ex])
        disliked = np.array([items[r][n] for r, _, n in ex])
        triples.append(np.stack([ex[:, 0], liked, disliked], axis=1))
    out = np.concatenate(triples)
    return out[rng.permutation(len(out))]


def bpr_loss(s_pos: torch.Tensor, s_neg: torch.Tensor) -> torch.Tensor:
    """−mean log σ(s_pos − s_neg); shapes (B,) or (B, m)."""
    return -F.logsigmoid(s_pos - s_neg).mean()


def fit_mf(model: MF, data: TrainData, *, epochs: int, batch_size: int = 512, lr: float = 0.01, reg: float = 1e-3,
           cap: int = 20000, seed: int = 0, progress: bool = True) -> MF:
    """Adam on the BPR loss (+ model.extra_loss); seeded: the same seed gives the same model."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in tqdm(range(epochs), desc=f"{type(model).__name__.lower()} epochs", disable=not progress, leave=False):
        triples = torch.from_numpy(bpr_triples(data, rng, cap))
        for start in range(0, len(triples), batch_size):
            u, i, j = triples[start:start + batch_size].T
            p = model.user(u)
            items = torch.stack([i, j], dim=1)
            s = model.score(p, items)
            q = model.item(items)
            b = model.bias(items)
            penalty = reg * ((p ** 2).sum() + (q ** 2).sum() + (b ** 2).sum()) / len(u)
            loss = bpr_loss(s[:, 0], s[:, 1]) + penalty + model.extra_loss(items.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


def fold_in(model: MF, contexts: list[list[int]], *, steps: int = 100, lr: float = 0.05, reg: float = 1e-3,
            seed: int = 0, neg_pool: torch.Tensor | None = None) -> torch.Tensor:
    """(N, d) user vectors for unseen users from their known history items (module docstring). Negatives are drawn
    uniformly from `neg_pool` (item indices), by default from every item."""
    n, d = len(contexts), model.item.embedding_dim
    width = max([len(c) for c in contexts] + [1])
    hist = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width)
    for k, c in enumerate(contexts):
        hist[k, :len(c)] = torch.tensor(c, dtype=torch.long)
        mask[k, :len(c)] = 1.0
    count = mask.sum(1).clamp(min=1)
    p = torch.zeros(n, d, requires_grad=True)
    opt = torch.optim.Adam([p], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for p_ in model.parameters():
        p_.requires_grad_(False)
    try:
        for _ in range(steps):
            if neg_pool is None:
                neg = torch.randint(FIRST_ITEM, model.item.num_embeddings, (n, width), generator=gen)
            else:
                neg = neg_pool[torch.randint(len(neg_pool), (n, width), generator=gen)]
            margin = model.score(p, hist) - model.score(p, neg)
            per_user = -(F.logsigmoid(margin) * mask).sum(1) / count + reg * (p ** 2).sum(1)
            loss = (per_user * (mask.sum(1) > 0)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        for p_ in model.parameters():
            p_.requires_grad_(True)
    return p.detach()


class BPRMF:
    """fit(TrainData) then score(EvalSet) -> (N, C) candidate scores."""

    def __init__(self, dim: int = 64, epochs: int = 20, batch_size: int = 512, lr: float = 0.01, reg: float = 1e-3,
                 cap: int = 20000, seed: int = 0, progress: bool = True):
        self.dim, self.epochs, self.batch_size, self.lr, self.reg = dim, epochs, batch_size, lr, reg
        self.cap, self.seed, self.progress = cap, seed, progress

    def build(self, data: TrainData) -> MF:
        return MF(len(data.records), len(data.vocab), self.dim)

    def fit(self, data: TrainData) -> "BPRMF":
        self.vocab = data.vocab
        torch.manual_seed(self.seed)
        self.model = fit_mf(self.build(data), data, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                            reg=self.reg, cap=self.cap, seed=self.seed, progress=self.progress)
        return self

    @torch.no_grad()
    def _all_scores(self, p: torch.Tensor) -> np.ndarray:
        return self.model.score_all(p).double().numpy()

    def score(self, test: EvalSet) -> np.ndarray:
        p = fold_in(self.model, test.contexts, reg=self.reg, seed=self.seed)
        return fill_unknown(self._all_scores(p), test.candidates)
