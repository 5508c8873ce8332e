"""Popularity (MostPop) and liked share: non-personalised scores from the training data.

Popularity scores every user's candidates by how often the item occurs in the training data:

    candidates task: score(i) = n(i), the number of training interactions with i (each one was a "next item")
    pairwise task:   score(i) = likes(i) + n(i) / (1 + max_j n(j)): the number of training events where i was liked
                     (full: rating > threshold; few-shot: i was the positive of a training sample), ties broken by n(i)

Both items of a pairwise test were rated by the user, so what separates them is being liked; but few-shot data has
only ~100 labelled positives, and without the tie-break most pairs would tie at 0 likes (a tie counts as a wrong
pairwise answer). The model ignores the user, so it is the floor every personalised model must beat. An item never
seen in training scores 0: the model's own answer (no recorded interaction), not a fallback.

Liked share scores an item by the share of its training interactions that were liked, shrunk towards the share over
all items: (likes(i) + a·p) / (n(i) + a), a = 5. It is the ID-model counterpart of the hybrid prompt's item facts
(`prepare --item-stats` shows each candidate's mean rating): what reading those facts alone can reach.
"""

from __future__ import annotations

import numpy as np

from prefrec.baselines.common import EvalSet, TrainData


def _tally(data: TrainData, labelled_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """(interactions, liked interactions) per item. labelled_only: leave out liked = -1 (unlabelled, a few-shot
    history), which says nothing about being liked."""
    n = np.zeros(len(data.vocab), dtype=np.float64)
    likes = np.zeros(len(data.vocab), dtype=np.float64)
    for r in data.records:
        for item, liked in zip(r.items, r.liked):
            if labelled_only and liked < 0:
                continue
            n[item] += 1
            likes[item] += liked == 1
    return n, likes


class Popularity:
    def fit(self, data: TrainData) -> "Popularity":
        self.vocab = data.vocab
        n, likes = _tally(data, labelled_only=False)
        self.counts = likes + n / (1 + n.max()) if data.preference_pairs else n
        return self

    def score(self, test: EvalSet) -> np.ndarray:
        """(N, C) candidate scores."""
        return np.where(test.candidates >= 0, self.counts[np.maximum(test.candidates, 0)], 0.0)


class LikedShare:
    PRIOR_WEIGHT = 5.0  # a: pseudo-interactions at the overall liked share

    def fit(self, data: TrainData) -> "LikedShare":
        self.vocab = data.vocab
        n, likes = _tally(data, labelled_only=True)
        prior = likes.sum() / max(n.sum(), 1.0)
        self.share = (likes + self.PRIOR_WEIGHT * prior) / (n + self.PRIOR_WEIGHT)
        self.prior = prior
        return self

    def score(self, test: EvalSet) -> np.ndarray:
        """(N, C) candidate scores; an item never seen in training gets the overall share."""
        return np.where(test.candidates >= 0, self.share[np.maximum(test.candidates, 0)], self.prior)
