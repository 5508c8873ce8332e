"""What a model adds beyond its prompt: the `prompt-facts` baseline and the "added to the facts" test.

A hybrid prompt prints numbers: each item's mean rating and rater count from other users ("mean rating 3.9 from
120 users"), the user's own ratings of the history ("4/5"), and every prompt shows its options in an order. A
model that only reads those numbers back has learnt nothing about the user. Two measurements say whether it did:

1. **prompt-facts**: a logistic regression fit on the *training* split over exactly the facts the prompt shows,
   parsed from the prompt text itself, evaluated on the test samples like any model:
       pairwise    per comparison, y = 1[the first-shown item is the positive], x = (Δ mean rating, Δ log(1 +
                   raters), both unknown-mean flags) of first − second; the intercept is the order bias
       candidates  per candidate (pointwise), y = 1[target], x = (mean rating, log(1 + raters), no-mean flag,
                   shown position / number of candidates)
       yesno       y = label, x = the target's (mean rating, log(1 + raters), no-mean flag) and the mean of the
                   user's shown history ratings
   A text-only prompt shows no numbers, so its model is the order (position) bias alone.
2. **added to the facts**: on the test samples, the facts model plus the LLM's score against the facts model
   alone, both fit by K-fold cross-fitting over test *users* (each fold predicted by a model fit on the other
   folds, so no sample is predicted by a fit that saw it), then compared on the same samples with a paired
   bootstrap that resamples users. A gain with p < 0.05 is something the LLM knows beyond its prompt.

The LLM's score per task: pairwise, the margin logp(first-shown first) − logp(second-shown first) (title answers)
or logp(letter A) − logp(letter B), read from the per-sample rows as s_first − s_second; candidates, the summed
log-prob of each candidate's answer minus the sample's mean; yes/no, log P(Yes) − log P(No).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from prefrec import prompts
from prefrec.errors import UserError
from prefrec.evaluation.metrics import pairwise_metrics, ranking_metrics, yesno_metrics
from prefrec.evaluation.stats import paired_user_bootstrap
from prefrec.samples import Sample

_MEAN = re.compile(r"^mean rating (-?[\d.]+) from (\d+) users?$")
_COUNT = re.compile(r"^(\d+) other users?$")
_RATING = re.compile(r"\((\d+(?:\.\d+)?)/5\)")


def parse_note(note: str | None) -> tuple[float, float, float]:
    """(mean rating or 0, log(1 + raters), 1 if no mean is shown) from a prompt's item note (prompts.item_note)."""
    if note:
        m = _MEAN.match(note)
        if m:
            return float(m.group(1)), math.log1p(int(m.group(2))), 0.0
        m = _COUNT.match(note)
        if m:
            return 0.0, math.log1p(int(m.group(1))), 1.0
    return 0.0, 0.0, 1.0


def shown(question: str, title: str) -> tuple[int, tuple[float, float, float]]:
    """(where the title is shown in the question, its parsed note): the facts the prompt gives of one item."""
    q = prompts.quote(title)
    at = question.find(q)
    if at < 0:
        raise UserError(f"{title!r} is not shown in quotes in its prompt, so its facts and order cannot be read off "
                        f"it (prompt-facts reads prompts written by `prefrec data prepare`)")
    rest = question[at + len(q):]
    note = rest[2:rest.index(")")] if rest.startswith(" (") and ")" in rest else None
    return at, parse_note(note)


# ---------------------------------------------------------------------------------------------------------------
# Per task: the features of one sample, and how cross-fit probabilities become per-sample rows


def _pairwise_features(s: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Per comparison j: x (first − second facts), y = 1[the positive is shown first]."""
    xs, ys = [], []
    for c, neg in zip(s.comparisons, s.candidates[1:]):
        (ap, fp), (an, fn) = shown(c.question, s.target), shown(c.question, neg)
        first, second = (fp, fn) if ap < an else (fn, fp)
        xs.append([first[0] - second[0], first[1] - second[1], first[2], second[2]])
        ys.append(float(ap < an))
    return np.array(xs), np.array(ys)


def _candidates_features(s: Sample) -> tuple[np.ndarray, np.ndarray]:
    question = s.comparisons[0].question
    got = [shown(question, t) for t in s.candidates]
    order = np.argsort(np.argsort([at for at, _ in got]))
    xs = [[*facts, order[i] / len(got)] for i, (_, facts) in enumerate(got)]
    return np.array(xs), np.array([float(t == s.target) for t in s.candidates])


def _yesno_features(s: Sample) -> tuple[np.ndarray, np.ndarray]:
    _, facts = shown(s.comparisons[0].question, s.target)
    ratings = [float(r) for r in _RATING.findall(s.prefix)]
    return np.array([[*facts, np.mean(ratings) if ratings else 0.0]]), np.array([float(s.label or 0)])


def _llm_pairwise(s: Sample, row: dict) -> np.ndarray:
    """The LLM's preference for the first-shown item, per comparison."""
    margin = np.asarray(row["s_first"], float) - np.asarray(row["s_second"], float)
    first_is_pos = _pairwise_features(s)[1]
    return np.where(first_is_pos == 1.0, margin, -margin)


def _llm_candidates(s: Sample, row: dict) -> np.ndarray:
    sc = np.asarray(row["rank_scores"] if "rank_scores" in row else row["scores"], float)
    return sc - sc.mean()


def _llm_yesno(s: Sample, row: dict) -> np.ndarray:
    return np.array([row["logp_yes"] - row["logp_no"]] if "logp_yes" in row else [math.log(row["p_yes"]) -
                                                                                   math.log1p(-row["p_yes"])])


def _pairwise_rows(s: Sample, z: np.ndarray) -> dict:
    """logit P(first-shown is the positive) -> s_first − s_second = logit P(positive preferred), the sign flipped
    exactly (so that the two orders of equal facts tie exactly)."""
    z_pos = np.where(_pairwise_features(s)[1] == 1.0, z, -z)
    return {"s_first": z_pos.tolist(), "s_second": [0.0] * len(z)}


def _candidates_rows(s: Sample, z: np.ndarray) -> dict:
    return {"scores": z.tolist(), "target_index": s.candidates.index(s.target)}


def _yesno_rows(s: Sample, z: np.ndarray) -> dict:
    return {"p_yes": float(1.0 / (1.0 + np.exp(-z[0]))), "label": int(s.label or 0)}


@dataclass(frozen=True)
class FactsTask:
    features: object  # Sample -> (x (m, d), y (m,)), one row per comparison / candidate / sample
    llm: object  # (Sample, per-sample row) -> (m,) the LLM's score of the same units
    rows: object  # (Sample, logits (m,)) -> a per-sample row in the format of the task's metrics
    metric: str  # what the added-to-facts test compares
    metrics: object  # rows -> metrics (the task's own metric code)


TASKS = {
    "pairwise": FactsTask(_pairwise_features, _llm_pairwise, _pairwise_rows, "auc",
                          lambda rows: pairwise_metrics(np.concatenate([r["s_first"] for r in rows]),
                                                        np.concatenate([r["s_second"] for r in rows]))),
    "candidates": FactsTask(_candidates_features, _llm_candidates, _candidates_rows, "mrr",
                            lambda rows: ranking_metrics(np.array([r["scores"] for r in rows]),
                                                         np.array([r["target_index"] for r in rows]))),
    "yesno": FactsTask(_yesno_features, _llm_yesno, _yesno_rows, "auc",
                       lambda rows: yesno_metrics([r["p_yes"] for r in rows], [r["label"] for r in rows])),
}


# ---------------------------------------------------------------------------------------------------------------
# Fitting and scoring

def _model():
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))


def _stack(samples: list[Sample], task: FactsTask, extra=None) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """All samples' feature rows (with the LLM's score as one more column when `extra` gives it), labels, and each
    sample's number of rows."""
    xs, ys, sizes = [], [], []
    for i, s in enumerate(samples):
        x, y = task.features(s)
        if extra is not None:
            x = np.column_stack([x, extra(i, s)])
        xs.append(x)
        ys.append(y)
        sizes.append(len(y))
    return np.vstack(xs), np.concatenate(ys), sizes


def _predict(fit_x, fit_y, x) -> np.ndarray:
    """The fitted model's logits (log-odds of y = 1) at x."""
    if len(np.unique(fit_y)) < 2:  # one class only: the base rate is all a model can say
        rate = float(np.clip(np.mean(fit_y), 1e-6, 1 - 1e-6))
        return np.full(len(x), math.log(rate / (1 - rate)))
    return _model().fit(fit_x, fit_y).decision_function(x)


def _rows(samples: list[Sample], task: FactsTask, p: np.ndarray, sizes: list[int]) -> list[dict]:
    out, at = [], 0
    for s, n in zip(samples, sizes):
        out.append({"id": s.id, "user": s.user, **task.rows(s, p[at:at + n])})
        at += n
    return out


def prompt_facts_rows(train: list[Sample], test: list[Sample], task: FactsTask | None = None) -> list[dict]:
    """Per-sample rows of the prompt-facts baseline: fit on `train`, scored on `test` (the task's row format).
    task: other features of the same units (prior.py's item prior), default the prompt's facts."""
    task = task or TASKS[test[0].task]
    tx, ty, _ = _stack(train, task)
    x, _, sizes = _stack(test, task)
    return _rows(test, task, _predict(tx, ty, x), sizes)


def _folds(samples: list[Sample], n_folds: int, seed: int) -> np.ndarray:
    """Fold of each sample: users shuffled by the seed, then dealt round-robin (a user's samples stay together)."""
    users = sorted({s.user or s.id for s in samples})
    rng = np.random.default_rng(seed)
    fold = {u: i % n_folds for i, u in enumerate(rng.permutation(users))}
    return np.array([fold[s.user or s.id] for s in samples])


def cross_fit_rows(samples: list[Sample], task: FactsTask, extra, n_folds: int, seed: int) -> list[dict]:
    """Rows of a facts model (plus the LLM score when `extra`) cross-fit over K folds of users."""
    x, y, sizes = _stack(samples, task, extra)
    fold = np.repeat(_folds(samples, n_folds, seed), sizes)
    p = np.zeros(len(y))
    for f in range(n_folds):
        held = fold == f
        if held.any():
            p[held] = _predict(x[~held], y[~held], x[held])
    return _rows(samples, task, p, sizes)


def added_to_facts(samples: list[Sample], llm_rows: list[dict], *, n_folds: int = 10, n_boot: int = 1000,
                   seed: int = 0, task: FactsTask | None = None) -> dict:
    """The paired test of the facts model + the LLM's score against the facts model alone, on the test samples the
    LLM scored (joined on id), both cross-fit over users; the bootstrap resamples users. task: the facts model's
    features (default the prompt's; prior.floor_task adds the item prior's)."""
    by_id = {r["id"]: r for r in llm_rows}
    samples = [s for s in samples if s.id in by_id]
    if not samples:
        raise ValueError("the LLM's rows share no sample id with the test samples")
    task = task or TASKS[samples[0].task]
    alone = cross_fit_rows(samples, task, None, n_folds, seed)
    both = cross_fit_rows(samples, task, lambda i, s: task.llm(s, by_id[s.id]), n_folds, seed)
    users = [s.user or s.id for s in samples]
    test = paired_user_bootstrap(both, alone, users, lambda rows: task.metrics(rows)[task.metric], n_boot=n_boot,
                                 seed=seed)
    return {"metric": task.metric, "facts": test["b"], "facts_plus_llm": test["a"], "diff": test["diff"],
            "lo": test["lo"], "hi": test["hi"], "p": test["p"], "n": len(samples), "n_users": len(set(users)),
            "n_folds": n_folds, "beyond": bool(test["p"] < 0.05 and test["diff"] > 0)}
