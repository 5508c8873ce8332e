"""Sequential recommenders as small PyTorch modules that share one training loop.

Every model is an *encoder* from a user's recent items to a vector h, and scores item i by h · e_i with the same
item embedding table it reads its input from (Caser: a separate output table and bias; CORE: cosine / τ):

    ctx (B, L) item indices, left-padded with PAD (0), newest item last  ->  encode  ->  h (B, d)
    score_all(h) -> (B, V) scores of every vocabulary entry (PAD and UNK columns are never targets)

Models (paper; what is kept / changed, docs/baselines.md):
    SASRec   Kang & McAuley, ICDM 2018   causal self-attention, learned positions, output at the newest item
    GRU4Rec  Hidasi et al., ICLR 2016    one GRU layer over the sequence, last hidden state
    BERT4Rec Sun et al., CIKM 2019       bidirectional self-attention; a [MASK] appended after the context is read
                                         out; trained with the cloze objective (random masks + the last item)
    Caser    Tang & Wang, WSDM 2018      horizontal and vertical convolutions over the last 5 items; no user
                                         embedding (test users are unseen)
    STAMP    Liu et al., KDD 2018        attention over the items with the last item and the mean as memory,
                                         trilinear score
    CORE     Hou et al., SIGIR 2022      CORE-trm: a transformer only computes weights; h = weighted sum of the item
                                         embeddings themselves; cosine score / τ (τ = 0.07)
    GCSAN    Xu et al., IJCAI 2019       gated graph NN over the session graph, then causal self-attention;
                                         h = ω·attention + (1−ω)·graph state of the newest item (ω = 0.6)
    SHAN     Ying et al., IJCAI 2018     two attention layers: long-term items, then (long-term vector + the last 3
                                         items); the user embedding that queries both layers is replaced by
                                         tanh(W · mean of the context's item embeddings), since test users are unseen

One training loop (`fit_sequential`), one loss per task:
    candidates: next-item cross-entropy over the whole vocabulary, −log softmax(score_all(h))[target], from every
                prefix of every training sequence (SASRec's and GRU4Rec's original papers sample negatives; full
                softmax is what current implementations, RecBole included, default to)
    pairwise:   BPR, −log σ(s(h, liked) − s(h, not liked)), the context being the items before the liked one minus
                the other (the shape of a DMPO test sample's history)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from prefrec.baselines.common import (
    FIRST_ITEM,
    PAD,
    EvalSet,
    TrainData,
    context_before,
    fill_unknown,
    next_item_examples,
    pad_left,
    preference_examples,
)

SEQUENTIAL = ("sasrec", "gru4rec", "bert4rec", "caser", "stamp", "core", "gcsan", "shan")


# ---- building blocks ----

def attention_mask(ctx: torch.Tensor, causal: bool) -> torch.Tensor:
    """(B, L) items -> (B, 1, L, L) bool, True = may attend. Queries never see PAD keys (nor the future, if causal).
    Every position may see itself, so no row is empty (an all-masked row would give NaN)."""
    L = ctx.size(1)
    allowed = (ctx != PAD)[:, None, :].expand(-1, L, -1)
    if causal:
        allowed = allowed & torch.ones(L, L, dtype=torch.bool, device=ctx.device).tril()
    allowed = allowed | torch.eye(L, dtype=torch.bool, device=ctx.device)
    return allowed[:, None]


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + Attn(LN(x)), then x + FFN(LN(x)). x (B, L, d)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (t.view(B, L, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, L, d)))
        return x + self.drop(self.ff(self.ln2(x)))


class SeqRec(nn.Module):
    """Base: an item table shared by input and output; subclasses implement encode(ctx) -> (B, d)."""

    def __init__(self, n_vocab: int, dim: int, max_len: int, dropout: float):
        super().__init__()
        self.n_vocab, self.dim, self.max_len = n_vocab, dim, max_len
        self.item = nn.Embedding(n_vocab, dim, padding_idx=PAD)
        nn.init.normal_(self.item.weight, std=0.1)
        with torch.no_grad():
            self.item.weight[PAD].zero_()
        self.drop = nn.Dropout(dropout)

    def encode(self, ctx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score_all(self, h: torch.Tensor) -> torch.Tensor:
        """h (B, d) -> (B, V)."""
        return h @ self.item.weight[:self.n_vocab].T

    def next_item_loss(self, ctx: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the next item over the vocabulary. ctx (B, L), target (B,)."""
        return F.cross_entropy(masked_logits(self.score_all(self.encode(ctx))), target)


def masked_logits(logits: torch.Tensor) -> torch.Tensor:
    """PAD and UNK are never a next item: give them −inf before a softmax."""
    return torch.cat([torch.full_like(logits[:, :FIRST_ITEM], float("-inf")), logits[:, FIRST_ITEM:]], dim=1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, L, d), mask (B, L) -> (B, d)."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


# ---- the models ----

class SASRec(SeqRec):
    def __init__(self, n_vocab, dim=64, max_len=50, dropout=0.2, layers=2, heads=2):
        super().__init__(n_vocab, dim, max_len, dropout)
        self.pos = nn.Embedding(max_len, dim)
        nn.init.normal_(self.pos.weight, std=0.1)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)

    def encode(self, ctx):
        # left padding puts the newest item at position max_len - 1 always: positions count back from "now"
        x = self.drop(self.item(ctx) + self.pos.weight[-ctx.size(1):])
        allowed = attention_mask(ctx, causal=True)
        for blk in self.blocks:
            x = blk(x, allowed)
        return self.ln(x)[:, -1]


class GRU4Rec(SeqRec):
    def __init__(self, n_vocab, dim=64, max_len=50, dropout=0.2):
        super().__init__(n_vocab, dim, max_len, dropout)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.out = nn.Linear(dim, dim)

    def encode(self, ctx):
        B, L = ctx.shape
        lengths = (ctx != PAD).sum(1).clamp(min=1)
        # left-padded -> left-aligned, so the packed GRU never reads padding
        idx = (torch.arange(L)[None, :] + (L - lengths)[:, None]).clamp(max=L - 1)
        x = self.drop(self.item(ctx.gather(1, idx)))
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)
        return self.out(h[-1])


class BERT4Rec(SeqRec):
    """The vocabulary gets one extra row, [MASK] = n_vocab; scores never include it."""

    def __init__(self, n_vocab, dim=64, max_len=50, dropout=0.2, layers=2, heads=2, mask_prob=0.2):
        super().__init__(n_vocab, dim, max_len, dropout)
        self.item = nn.Embedding(n_vocab + 1, dim, padding_idx=PAD)
        nn.init.normal_(self.item.weight, std=0.1)
        with torch.no_grad():
            self.item.weight[PAD].zero_()
        self.mask_token, self.mask_prob = n_vocab, mask_prob
        self.pos = nn.Embedding(max_len + 1, dim)
        nn.init.normal_(self.pos.weight, std=0.1)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)

    def hidden(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L') -> (B, L', d), bidirectional."""
        x = self.drop(self.item(seq) + self.pos.weight[-seq.size(1):])
        allowed = attention_mask(seq, causal=False)
        for blk in self.blocks:
            x = blk(x, allowed)
        return self.ln(x)

    def encode(self, ctx):
        seq = torch.cat([ctx, torch.full_like(ctx[:, :1], self.mask_token)], dim=1)
        return self.hidden(seq)[:, -1]

    def next_item_loss(self, ctx, target):
        """Cloze: mask the target (appended after ctx) and each other item with probability mask_prob; predict
        every masked item from both sides."""
        seq = torch.cat([ctx, target[:, None]], dim=1)
        masked = (torch.rand(seq.shape) < self.mask_prob) & (seq >= FIRST_ITEM)
        masked[:, -1] = True
        h = self.hidden(seq.masked_fill(masked, self.mask_token))[masked]
        return F.cross_entropy(masked_logits(self.score_all(h)), seq[masked])


class Caser(SeqRec):
    def __init__(self, n_vocab, dim=64, max_len=50, dropout=0.2, window=5, n_h=16, n_v=4):
        super().__init__(n_vocab, dim, max_len, dropout)
        self.window = window
        self.vertical = nn.Conv2d(1, n_v, (window, 1))
        self.horizontal = nn.ModuleList(nn.Conv2d(1, n_h, (h, dim)) for h in range(1, window + 1))
        self.fc = nn.Linear(n_v * dim + n_h * window, dim)
        self.out = nn.Embedding(n_vocab, dim)
        self.out_bias = nn.Parameter(torch.zeros(n_vocab))
        nn.init.normal_(self.out.weight, std=0.1)

    def encode(self, ctx):
        w = ctx[:, -self.window:]
        if w.size(1) < self.window:
            w = F.pad(w, (self.window - w.size(1), 0), value=PAD)
        e = self.item(w).unsqueeze(1)  # (B, 1, window, d)
        v = self.vertical(e).flatten(1)  # (B, n_v * d)
        hs = [F.relu(conv(e)).squeeze(3).amax(dim=2) for conv in self.horizontal]  # each (B, n_h)
        return F.relu(self.fc(self.drop(torch.cat([v] + hs, dim=1))))

    def score_all(self, h):
        return h @ self.out.weight.T + self.out_bias


class STAMP(SeqRec):
    def __init__(self, n_vocab, dim=64, max_len=50, dropout=0.2):
        super().__init__(n_vocab, dim, max_len, dropout)
        self.w1, self.w2, self.w3 = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.b_a = nn.Parameter(torch.zeros(dim))
        self.w0 = nn.Linear(dim, 1, bias=False)
        self.mlp_a, self.mlp_b = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def encode(self, ctx):
        x = self.item(ctx)
        valid = ctx != PAD
        m_s = masked_mean(x, valid)  # general interest
        x_t = x[:, -1]  # current interest: the newest item
        a = self.w0(torch.sigmoid(self.w1(x) + self.w2(x_t)[:, None] + self.w3(m_s)[:, None] + self.b_a))
        m_a = (a * valid[..., None]).mul(x).sum(1)
        return torch.tanh(self.mlp_a(m_a)) * torch.tanh(self.mlp_b(x_t))


class CORE(SeqRec):
    def __init__(self, n_vocab, dim=64, max_len=50, dropout=0.2, layers=2, heads=2, temperature=0.07):
        super().__init__(n_vocab, dim, max_len, dropout)
        self.pos = nn.Embedding(max_len, dim)
        nn.init.normal_(self.pos.weight, std=0.1)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.weight = nn.Linear(dim, 1)
        self.temperature = temperature

    def encode(self, ctx):
        e = self.drop(self.item(ctx))
        x = e + self.pos.weight[-ctx.size(1):]
        allowed = attention_mask(ctx, causal=False)
        for blk in self.blocks:
            x = blk(x, allowed)
        alpha = self.weight(x).squeeze(-1).masked_fill(ctx == PAD, float("-inf")).softmax(dim=1)
        # representation-consistent: h lives in the item embedding space, a convex combination of item vectors
        return (alpha[..., None] * e).sum(1)

    def score_all(self, h):
        return F.normalize(h, dim=-1) @ F.normalize(self.item.weight[:self.n_vocab], dim=-1).T / self.temperature


class GCSAN(SeqRec):
    def __init__(self, n_vocab, dim=64, max_len=50, dropout=0.2, layers=1, heads=2, gnn_steps=1, omega=0.6):
        super().__init__(n_vocab, dim, max_len, dropout)
        self.gnn_steps, self.omega = gnn_steps, omega
        self.edge_in, self.edge_out = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.w_ih, self.w_hh = nn.Linear(2 * dim, 3 * dim), nn.Linear(dim, 3 * dim)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)

    @staticmethod
    def session_graph(ctx: torch.Tensor):
        """Per row: nodes = distinct items; alias[t] = node of position t; A_in, A_out (B, N, N) the transition
        graph of consecutive items, each normalised by in- / out-degree (SR-GNN, Wu et al. AAAI 2019)."""
        B, L = ctx.shape
        nodes = torch.zeros(B, L, dtype=torch.long)
        alias = torch.zeros(B, L, dtype=torch.long)
        a_out = torch.zeros(B, L, L)
        for b in range(B):
            row = ctx[b]
            valid = (row != PAD).nonzero().squeeze(1)
            uniq, inv = torch.unique(row[valid], return_inverse=True)
            nodes[b, :len(uniq)] = uniq
            alias[b, valid] = inv
            if len(inv) > 1:
                a_out[b, inv[:-1], inv[1:]] = 1.0
        a_in = a_out.transpose(1, 2)
        a_out = a_out / a_out.sum(2, keepdim=True).clamp(min=1.0)
        a_in = a_in / a_in.sum(2, keepdim=True).clamp(min=1.0)
        return nodes, alias, a_in, a_out

    def encode(self, ctx):
        nodes, alias, a_in, a_out = self.session_graph(ctx)
        h = self.item(nodes)
        for _ in range(self.gnn_steps):  # gated graph NN step: a GRU cell whose input is the neighbours' message
            msg = torch.cat([a_in @ self.edge_in(h), a_out @ self.edge_out(h)], dim=-1)
            gi_r, gi_z, gi_n = self.w_ih(msg).chunk(3, dim=-1)
            gh_r, gh_z, gh_n = self.w_hh(h).chunk(3, dim=-1)
            r, z = torch.sigmoid(gi_r + gh_r), torch.sigmoid(gi_z + gh_z)
            n = torch.tanh(gi_n + r * gh_n)
            h = (1 - z) * n + z * h
        seq = h.gather(1, alias[..., None].expand(-1, -1, self.dim)) * (ctx != PAD)[..., None]
        x = self.drop(seq)
        allowed = attention_mask(ctx, causal=True)
        for blk in self.blocks:
            x = blk(x, allowed)
        return self.omega * self.ln(x)[:, -1] + (1 - self.omega) * seq[:, -1]


class SHAN(SeqRec):
    def __init__(self, n_vocab, dim=64, max_len=50, dropout=0.2, short=3):
        super().__init__(n_vocab, dim, max_len, dropout)
        self.short = short
        self.user = nn.Linear(dim, dim)
        self.layer1, self.layer2 = nn.Linear(dim, dim), nn.Linear(dim, dim)

    @staticmethod
    def attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """softmax over the masked positions of (query · keys) applied to values; an all-masked row gives 0."""
        logits = (keys * query[:, None]).sum(-1).masked_fill(~mask, float("-inf"))
        w = torch.nan_to_num(logits.softmax(dim=1), nan=0.0)
        return (w[..., None] * values).sum(1)

    def encode(self, ctx):
        L = ctx.size(1)
        x = self.drop(self.item(ctx))
        valid = ctx != PAD
        recent = torch.arange(L) >= L - self.short
        long_mask, short_mask = valid & ~recent, valid & recent
        u = torch.tanh(self.user(masked_mean(x, valid)))
        u_long = self.attend(u, F.relu(self.layer1(x)), x, long_mask)
        keys = torch.cat([u_long[:, None], x], dim=1)
        mask = torch.cat([long_mask.any(1, keepdim=True), short_mask], dim=1)
        return self.attend(u, F.relu(self.layer2(keys)), keys, mask)


def build(name: str, n_vocab: int, *, dim: int, max_len: int, dropout: float) -> SeqRec:
    models = {"sasrec": SASRec, "gru4rec": GRU4Rec, "bert4rec": BERT4Rec, "caser": Caser, "stamp": STAMP,
              "core": CORE, "gcsan": GCSAN, "shan": SHAN}
    if name not in models:
        raise ValueError(f"unknown sequential model {name!r}; expected one of {SEQUENTIAL}")
    return models[name](n_vocab, dim=dim, max_len=max_len, dropout=dropout)


# ---- one training loop ----

def fit_sequential(model: SeqRec, data: TrainData, *, epochs: int, batch_size: int = 128, lr: float = 1e-3,
                   weight_decay: float = 0.0, cap: int = 20000, seed: int = 0, progress: bool = True) -> SeqRec:
    """Adam over freshly drawn examples each epoch (module docstring); seeded and repeatable."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    items = [np.asarray(r.items, dtype=np.int64) for r in data.records]
    L = model.max_len
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    pairs = data.preference_pairs
    for _ in tqdm(range(epochs), desc=f"{type(model).__name__} epochs", disable=not progress, leave=False):
        if pairs:
            ex = preference_examples(data, rng, cap)
        else:
            ex = next_item_examples(data, rng, cap)
        for start in range(0, len(ex), batch_size):
            batch = ex[start:start + batch_size]
            if pairs:
                ctx = [context_before(items[r], p, n) for r, p, n in batch]
                pair = torch.tensor([[items[r][p], items[r][n]] for r, p, n in batch])
                s = model.score_all(model.encode(torch.from_numpy(pad_left(ctx, L)))).gather(1, pair)
                loss = -F.logsigmoid(s[:, 0] - s[:, 1]).mean()
            else:
                ctx = [items[r][:t] for r, t in batch]
                target = torch.tensor([items[r][t] for r, t in batch])
                loss = model.next_item_loss(torch.from_numpy(pad_left(ctx, L)), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


class SequentialBaseline:
    """fit(TrainData) then score(EvalSet) -> (N, C) candidate scores, for any model in SEQUENTIAL."""

    def __init__(self, name: str, *, dim: int = 64, max_len: int = 50, dropout: float = 0.2, epochs: int = 20,
                 batch_size: int = 128, lr: float = 1e-3, cap: int = 20000, seed: int = 0, progress: bool = True):
        self.name, self.dim, self.max_len, self.dropout = name, dim, max_len, dropout
        self.epochs, self.batch_size, self.lr, self.cap, self.seed = epochs, batch_size, lr, cap, seed
        self.progress = progress

    def fit(self, data: TrainData) -> "SequentialBaseline":
        self.vocab = data.vocab
        torch.manual_seed(self.seed)  # the initial weights are part of what the seed fixes
        model = build(self.name, len(data.vocab), dim=self.dim, max_len=self.max_len, dropout=self.dropout)
        self.model = fit_sequential(model, data, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                                    cap=self.cap, seed=self.seed, progress=self.progress)
        return self

    def item_embeddings(self) -> tuple[torch.Tensor, list[str]]:
        """(the item table the encoder reads (n_items, dim), the item key of each row): what LLaRA-style item tokens
        project into an LM's prompt (prefrec.items). PAD, UNK (and BERT4Rec's [MASK]) rows are left out."""
        return self.model.item.weight[FIRST_ITEM:len(self.vocab)].detach().clone(), self.vocab.keys[FIRST_ITEM:]

    @torch.no_grad()
    def score(self, test: EvalSet, batch_size: int = 256) -> np.ndarray:
        out = []
        for start in range(0, len(test.contexts), batch_size):
            ctx = torch.from_numpy(pad_left(test.contexts[start:start + batch_size], self.max_len))
            out.append(self.model.score_all(self.model.encode(ctx)).double().numpy())
        return fill_unknown(np.concatenate(out), test.candidates)


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

