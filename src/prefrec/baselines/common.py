"""Data plumbing shared by every traditional baseline: read a prepared folder, build the training data of a regime,
turn test samples into item indices, and fill in scores for items a model never saw.

A prepared folder (`prefrec data prepare`, read by prefrec.data.prepared) holds train/valid/test.jsonl samples that carry raw
item ids (history_items, candidate_items, target_item), the normalised log interactions.tsv (user, item, rating,
timestamp, split) and items.tsv. Folders made by importing someone else's prompts (the DMPO release) have titles but
no ids and no log: there the title string is the item's key and the "full" regime falls back to train + valid samples.

Regimes (docs/baselines.md has the long form):

    few-shot  exactly what the LLM is trained on: the train-split samples. A sample is a user record
              history + candidates: for pairwise, [pos, neg_1..neg_k] appended after the (unlabelled) history, so the
              preference examples are (history, pos, neg_j); for candidates, history + [target], whose prefixes are
              next-item examples (the 19 random negatives are not used: models draw their own).
    full      every interaction in interactions.tsv whose split is not "test", per user in time order, liked =
              rating > like_threshold. With a user-disjoint split (DMPO pairwise) that is every interaction of the
              train, valid and unused users, and test users contribute nothing; with a chronological split (S-DPO
              candidates) it is everything before the test period, test users' earlier interactions included.
              Either way no test target is trained on, and at scoring time a test sample's own history is the
              model's only input about that user.

Item indices: 0 = padding, 1 = UNK (a context with no known item), 2.. = items seen in training, in first-seen
order. An item that never occurs in the training data is *unknown*: it is dropped from a history, and as a candidate
it gets the model's fallback score (see `fill_unknown`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from prefrec.data.prepared import Prepared
from prefrec.errors import UserError
from prefrec.samples import Sample
from prefrec.tasks import task as task_row

PAD, UNK = 0, 1
FIRST_ITEM = 2
REGIMES = ("few-shot", "full")


def sample_keys(s: Sample, by_title: bool) -> tuple[list[str], list[str], int]:
    """(history keys oldest first, candidate keys, index of the positive/target among the candidates).

    A task whose baseline reads the positive first (pairwise: [pos, neg_1..neg_k], samples.py) has target index 0;
    otherwise (candidates: the 20 in prompt order) the target is where it is shown."""
    if by_title:
        history, cands, target = s.history, s.candidates, s.target
    else:
        history, cands, target = s.history_items, s.candidate_items, s.target_item
    where = f"sample {s.id!r}"
    if not cands:
        raise UserError(f"{where}: field '{'candidates' if by_title else 'candidate_items'}' is empty; "
                        "ID baselines need the candidate items")
    if task_row(s.task).baseline.positive_first:
        if len(cands) < 2:
            raise UserError(f"{where}: a pairwise sample needs [positive, negative_1, ...] candidates")
        if target is not None and target != cands[0]:
            raise UserError(f"{where}: the target {target!r} should be the first candidate (the positive)")
        return list(history), list(cands), 0
    if target is None or target not in cands:
        raise UserError(f"{where}: the target item {target!r} is not among its candidates")
    return list(history), list(cands), cands.index(target)


# ---- training data of a regime ----

class Vocab:
    """Item key <-> index. 0 = padding, 1 = UNK, items from 2 in first-seen order (deterministic)."""

    def __init__(self) -> None:
        self.keys: list[str] = ["<pad>", "<unk>"]
        self.index: dict[str, int] = {}

    def add(self, key: str) -> int:
        if key not in self.index:
            self.index[key] = len(self.keys)
            self.keys.append(key)
        return self.index[key]

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def n_items(self) -> int:
        return len(self.keys) - FIRST_ITEM

    def get(self, key: str) -> int:
        """Index of a known item, or -1."""
        return self.index.get(key, -1)


@dataclass
class Record:
    """One training user (full) or one training sample (few-shot): item indices oldest first, and per item
    1 = liked, 0 = not liked, -1 = unlabelled (a few-shot history, or a log without ratings)."""
    user: str
    items: list[int]
    liked: list[int]


@dataclass
class TrainData:
    task: str
    regime: str
    vocab: Vocab
    records: list[Record]
    n_train_samples: int  # samples behind the few-shot records (0 for full)
    info: dict = field(default_factory=dict)

    @property
    def preference_pairs(self) -> bool:
        """Whether models also train on a user's (liked, not liked) pairs (the task's Baseline row)."""
        return task_row(self.task).baseline.preference_pairs


def training_data(prep: Prepared, regime: str) -> TrainData:
    """The training records of a regime (module docstring). The vocabulary holds exactly the items in them."""
    if regime not in REGIMES:
        raise UserError(f"regime must be one of {REGIMES}, got {regime!r}")
    vocab = Vocab()
    records: list[Record] = []

    def record(user: str, keys: list[str], liked: list[int]) -> None:
        records.append(Record(user=user, items=[vocab.add(k) for k in keys], liked=liked))

    if regime == "few-shot" or prep.logs is None:
        pairs = task_row(prep.task).baseline.positive_first  # candidates [positive, negatives]: all labelled
        samples = prep.train if regime == "few-shot" else prep.train + prep.valid
        for s in samples:
            history, cands, t = sample_keys(s, prep.by_title)
            if pairs:
                record(s.user or s.id, history + cands, [-1] * len(history) + [1] + [0] * (len(cands) - 1))
            else:
                record(s.user or s.id, history + [cands[t]], [-1] * len(history) + [1])
        source = "train samples" if regime == "few-shot" else "train + valid samples (the folder has no log)"
        n_samples = len(samples)
    else:
        for user in sorted(prep.logs):
            events = [e for e in prep.logs[user] if e.split != "test"]
            if events:
                liked = [-1 if e.rating is None else int(e.rating > prep.like_threshold) for e in events]
                record(user, [e.item for e in events], liked)
        source = "interactions.tsv, every interaction whose split is not test"
        n_samples = 0
    if not records:
        raise UserError(f"{prep.path}: the {regime} regime has no training data")
    n_events = sum(len(r.items) for r in records)
    # a guard against leakage: how many (test user, test candidate) pairs are training interactions. With a
    # user-disjoint split this must be 0; with a chronological one only a re-consumed item could count
    seen = {(r.user, vocab.keys[i]) for r in records for i in r.items}
    leaked = sum((s.user, k) in seen for s in prep.test if s.user is not None for k in sample_keys(s, prep.by_title)[1])
    info = {"source": source, "records": len(records), "interactions": n_events, "items": vocab.n_items,
            "liked": sum(sum(x == 1 for x in r.liked) for r in records),
            "not_liked": sum(sum(x == 0 for x in r.liked) for r in records),
            "test_candidates_in_training": leaked}
    return TrainData(task=prep.task, regime=regime, vocab=vocab, records=records, n_train_samples=n_samples,
                     info=info)


# ---- training examples, resampled every epoch ----

def next_item_examples(data: TrainData, rng: np.random.Generator, cap: int) -> np.ndarray:
    """(M, 2) int array of (record, t): predict records[r].items[t] from the items before it (t >= 1).
    All such positions when there are at most `cap`, else `cap` drawn uniformly with replacement."""
    lengths = np.array([len(r.items) for r in data.records])
    counts = np.maximum(lengths - 1, 0)
    total = int(counts.sum())
    if total == 0:
        raise UserError("no training sequence has two items; next-item models cannot be trained")
    if total <= cap:
        rec = np.repeat(np.arange(len(lengths)), counts)
        offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        ex = np.stack([rec, offsets + 1], axis=1)
    else:
        flat = rng.integers(0, total, size=cap)
        rec = np.searchsorted(np.cumsum(counts), flat, side="right")
        ex = np.stack([rec, flat - (np.cumsum(counts) - counts)[rec] + 1], axis=1)
    return ex[rng.permutation(len(ex))]


def preference_examples(data: TrainData, rng: np.random.Generator, cap: int) -> np.ndarray:
    """(M, 3) int array of (record, p, n): the record's item at p was liked, the one at n was not; the context is
    `context_before(items, p, n)`, like the DMPO protocol's history. All pairs if at most `cap`, else `cap` drawn
    with a record chosen in proportion to its number of pairs."""
    pos = [np.flatnonzero(np.array(r.liked) == 1) for r in data.records]
    neg = [np.flatnonzero(np.array(r.liked) == 0) for r in data.records]
    counts = np.array([len(p) * len(n) for p, n in zip(pos, neg)])
    total = int(counts.sum())
    if total == 0:
        raise UserError("the training data has no user with both a liked and a not-liked item "
                        "(pairwise baselines need ratings)")
    if total <= cap:
        ex = np.array([(i, p, n) for i in range(len(pos)) for p in pos[i] for n in neg[i]], dtype=np.int64)
    else:
        rec = rng.choice(len(counts), size=cap, p=counts / total)
        ex = np.empty((cap, 3), dtype=np.int64)
        ex[:, 0] = rec
        for j, i in enumerate(rec):
            ex[j, 1] = pos[i][rng.integers(len(pos[i]))]
            ex[j, 2] = neg[i][rng.integers(len(neg[i]))]
    return ex[rng.permutation(len(ex))]


def context_before(items, p: int, n: int):
    """The items before position p, without the one at n: the DMPO pairwise protocol's history (the interactions
    strictly before the positive, minus the held-out negatives; truncation to the last L happens in pad_left)."""
    before = items[:p]
    return before if n >= p else [x for j, x in enumerate(before) if j != n]


def pad_left(seqs: list[list[int]], max_len: int) -> np.ndarray:
    """(B, max_len) int64, each row's last max_len items right-aligned, PAD before; an empty row becomes [UNK]."""
    out = np.zeros((len(seqs), max_len), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = list(s[-max_len:]) or [UNK]
        out[i, max_len - len(s):] = s
    return out


# ---- test samples ----

@dataclass
class EvalSet:
    samples: list[Sample]
    contexts: list[list[int]]  # known history items, oldest first (unknown ones dropped)
    candidates: np.ndarray  # (N, C) item index, -1 = unknown item
    target_index: np.ndarray  # (N,)
    history_unknown: int  # history items dropped as unknown
    history_total: int


def eval_set(prep: Prepared, vocab: Vocab, prefix: str = "") -> EvalSet:
    """Index the test samples with `vocab`; `prefix` is prepended to every item key (cross-domain runs keep the
    target domain's keys apart from the source's)."""
    if not prep.test:
        raise UserError(f"{prep.path / 'test.jsonl'}: no test samples")
    contexts, cands, targets = [], [], []
    dropped = total = 0
    width = None
    for s in prep.test:
        history, cs, t = sample_keys(s, prep.by_title)
        known = [vocab.get(prefix + k) for k in history]
        contexts.append([i for i in known if i >= 0])
        dropped += sum(i < 0 for i in known)
        total += len(known)
        if width is None:
            width = len(cs)
        elif len(cs) != width:
            raise UserError(f"sample {s.id!r}: {len(cs)} candidates, but earlier test samples have {width}")
        cands.append([vocab.get(prefix + k) for k in cs])
        targets.append(t)
    return EvalSet(samples=prep.test, contexts=contexts, candidates=np.array(cands, dtype=np.int64),
                   target_index=np.array(targets, dtype=np.int64), history_unknown=dropped, history_total=total)


def fill_unknown(all_scores: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Candidate scores (N, C) from a model's scores over every known item (N, V) (columns PAD, UNK unused).

    An unknown candidate (index -1) gets the mean of that sample's scores over all known items: the model's
    expected score for an item it knows nothing about, so it is neither favoured nor punished. Two unknown
    candidates tie (AUC 0.5, and pairwise accuracy counts the tie as wrong)."""
    known = all_scores[:, FIRST_ITEM:]
    fallback = known.mean(axis=1, keepdims=True) if known.shape[1] else np.zeros((len(all_scores), 1))
    safe = np.where(candidates >= 0, candidates, 0)
    picked = np.take_along_axis(all_scores, safe, axis=1)
    return np.where(candidates >= 0, picked, fallback)
