"""CMF: collective matrix factorisation (Singh & Gordon, KDD 2008) of user-item preferences and item-title words.

CMF factorises several relations that share an entity type with one factor matrix per entity type. The DMPO paper
uses it for cross-domain recommendation with *users* shared between domains. The DMPO release cannot support that:
its prompts carry titles only, no user ids, so the users of "Amazon Movies" and "Amazon Games" cannot be matched
(and exact title matches between the domains are homonyms such as "Max Payne" the film and the game). What the
domains do share is the title vocabulary, so the shared entity here is the *word*:

    relation 1  users × items   (one domain)     preference, BPR loss (as in bpr.py)      factors P (users), Q (items)
    relation 2  items × words   (both domains)   TF-IDF of the title, squared loss         factors Q (items), W (words)

    loss = BPR(P, Q, b) + text_weight · mean_i |y_i − q_i Wᵀ|² + λ(|p|² + |q|² + b²)

where y_i is item i's L2-normalised TF-IDF row. |y − q Wᵀ|² is computed without forming dense rows:
|y|² − 2 q·(y W) + q (WᵀW) qᵀ. Items of the target domain appear only in relation 2, so their vectors come from
their titles' words; test users get fold-in vectors from their history (bpr.py), drawing the fold-in negatives from
the target domain's items. In-domain (one folder), CMF is BPR-MF with title words as side information.
"""

from __future__ import annotations

import html

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer

from prefrec.baselines.bpr import BPRMF, MF, fit_mf, fold_in
from prefrec.baselines.common import FIRST_ITEM, EvalSet, TrainData, Vocab, fill_unknown


def _normalise(title: str) -> str:
    return html.unescape(html.unescape(title)).lower()  # the DMPO release keeps "&amp;nbsp;"-style entities


def title_tfidf(titles: list[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """L2-normalised TF-IDF rows of the titles' word tokens (2+ letters/digits), as padded lists:
    (V, T) word ids and (V, T) weights (weight 0 = padding), and the number of words."""
    vec = TfidfVectorizer(preprocessor=_normalise, token_pattern=r"(?u)\b[a-z0-9][a-z0-9]+\b")
    try:
        m = vec.fit_transform(titles).tocsr()
    except ValueError:  # not a single token in any title
        return torch.zeros(len(titles), 1, dtype=torch.long), torch.zeros(len(titles), 1), 1
    width = max(int(np.diff(m.indptr).max()), 1)
    ids = torch.zeros(len(titles), width, dtype=torch.long)
    weights = torch.zeros(len(titles), width)
    for i in range(len(titles)):
        lo, hi = m.indptr[i], m.indptr[i + 1]
        ids[i, :hi - lo] = torch.from_numpy(m.indices[lo:hi].astype(np.int64))
        weights[i, :hi - lo] = torch.from_numpy(m.data[lo:hi].astype(np.float32))
    return ids, weights, m.shape[1]


class CMFModel(MF):
    def __init__(self, n_users: int, n_vocab: int, dim: int, word_ids: torch.Tensor, word_weights: torch.Tensor,
                 n_words: int, text_weight: float = 1.0, text_batch: int = 256):
        super().__init__(n_users, n_vocab, dim)
        self.words = torch.nn.Embedding(n_words, dim)
        torch.nn.init.normal_(self.words.weight, std=0.1)
        self.word_ids, self.word_weights = word_ids, word_weights  # (V, T) each
        self.text_weight, self.text_batch = text_weight, text_batch

    def text_loss(self, items: torch.Tensor) -> torch.Tensor:
        """Mean over `items` (m,) of |y_i − q_i Wᵀ|² = |y_i|² − 2 q_i·(y_i W) + q_i (WᵀW) q_iᵀ: no dense
        (m, n_words) rows are ever formed."""
        q = self.item(items)  # (m, d)
        ids, wts = self.word_ids[items], self.word_weights[items]  # (m, T)
        yw = (self.words(ids) * wts[..., None]).sum(1)  # (m, d) = y_i W
        w = self.words.weight
        gram = w.T @ w  # (d, d)
        return ((wts ** 2).sum(1) - 2 * (q * yw).sum(1) + ((q @ gram) * q).sum(1)).mean()

    def extra_loss(self, items: torch.Tensor) -> torch.Tensor:
        # the batch's items plus a uniform draw over the whole vocabulary, so items that have no interactions
        # (the target domain's) are fitted to their titles too
        extra = torch.randint(FIRST_ITEM, self.item.num_embeddings, (self.text_batch,))
        return self.text_weight * self.text_loss(torch.cat([items, extra]))


class CMF(BPRMF):
    """fit(TrainData, titles, extra) then score(EvalSet). `extra` maps the test samples' item keys that have no
    interactions to their titles (cross-domain: every target item, its key prefixed to keep it apart from the
    source's)."""

    def __init__(self, *args, text_weight: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.text_weight = text_weight

    def fit(self, data: TrainData, titles: dict[str, str] | None = None, extra: dict[str, str] | None = None,
            cross_domain: bool = False) -> "CMF":
        titles, extra = titles or {}, extra or {}
        self.cross_domain = cross_domain
        self.vocab = Vocab()
        for key in data.vocab.keys[FIRST_ITEM:]:
            self.vocab.add(key)
        self.n_trained = len(self.vocab)
        for key in extra:
            self.vocab.add(key)
        all_titles = ["", ""] + [extra.get(k, titles.get(k, "")) for k in self.vocab.keys[FIRST_ITEM:]]
        word_ids, word_weights, self.n_words = title_tfidf(all_titles)
        torch.manual_seed(self.seed)
        model = CMFModel(len(data.records), len(self.vocab), self.dim, word_ids, word_weights, self.n_words,
                         text_weight=self.text_weight)
        self.model = fit_mf(model, data, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, reg=self.reg,
                            cap=self.cap, seed=self.seed, progress=self.progress)
        return self

    def score(self, test: EvalSet) -> np.ndarray:
        pool = None
        if self.cross_domain:  # a test user's history should stand out among the target domain's items
            pool = torch.arange(self.n_trained, len(self.vocab))
        p = fold_in(self.model, test.contexts, reg=self.reg, seed=self.seed, neg_pool=pool)
        return fill_unknown(self._all_scores(p), test.candidates)
