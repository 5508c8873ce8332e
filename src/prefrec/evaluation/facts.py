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

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from prefrec.evaluation.stats import metric_fn, paired_user_bootstrap
from prefrec.samples import Sample
from prefrec.tasks import task as task_row
from prefrec.tasks.base import Facts

# ---------------------------------------------------------------------------------------------------------------
# Fitting and scoring

def _model():
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))


def _stack(samples: list[Sample], task: Facts, extra=None) -> tuple[np.ndarray, np.ndarray, list[int]]:
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


def _rows(samples: list[Sample], task: Facts, p: np.ndarray, sizes: list[int]) -> list[dict]:
    out, at = [], 0
    for s, n in zip(samples, sizes):
        out.append({"id": s.id, "user": s.user, **task.rows(s, p[at:at + n])})
        at += n
    return out


def prompt_facts_rows(train: list[Sample], test: list[Sample], task: Facts | None = None) -> list[dict]:
    """Per-sample rows of the prompt-facts baseline: fit on `train`, scored on `test` (the task's row format).
    task: other features of the same units (prior.py's item prior), default the prompt's facts."""
    task = task or task_row(test[0].task).facts
    tx, ty, _ = _stack(train, task)
    x, _, sizes = _stack(test, task)
    return _rows(test, task, _predict(tx, ty, x), sizes)


def _folds(samples: list[Sample], n_folds: int, seed: int) -> np.ndarray:
    """Fold of each sample: users shuffled by the seed, then dealt round-robin (a user's samples stay together)."""
    users = sorted({s.user or s.id for s in samples})
    rng = np.random.default_rng(seed)
    fold = {u: i % n_folds for i, u in enumerate(rng.permutation(users))}
    return np.array([fold[s.user or s.id] for s in samples])


def cross_fit_rows(samples: list[Sample], task: Facts, extra, n_folds: int, seed: int) -> list[dict]:
    """Rows of a facts model (plus the LLM score when `extra`) cross-fit over K folds of users."""
    x, y, sizes = _stack(samples, task, extra)
    fold = np.repeat(_folds(samples, n_folds, seed), sizes)
    p = np.zeros(len(y))
    for f in range(n_folds):
        held = fold == f
        if held.any():
            p[held] = _predict(x[~held], y[~held], x[held])
    return _rows(samples, task, p, sizes)


def _on_indices(rows: list[dict], task: Facts):
    """idx -> the task's metric on rows[idx], by the bootstrap's metric family of these rows (stats.metric_fn),
    checked once against the task's own metric code on every row."""
    fn = metric_fn(rows, task.metric)
    want = task.metrics(rows)[task.metric]
    got = None if fn is None else fn(np.arange(len(rows)))
    same = got is want is None or (None not in (got, want) and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12))
    if fn is None or not same:
        raise ValueError(f"no resampling family of these rows gives the task's {task.metric} ({got} vs {want})")
    return fn


def added_to_facts(samples: list[Sample], llm_rows: list[dict], *, n_folds: int = 10, n_boot: int = 1000,
                   seed: int = 0, task: Facts | None = None) -> dict:
    """The paired test of the facts model + the LLM's score against the facts model alone, on the test samples the
    LLM scored (joined on id), both cross-fit over users; the bootstrap resamples users. task: the facts model's
    features (default the prompt's; prior.floor_task adds the item prior's)."""
    by_id = {r["id"]: r for r in llm_rows}
    samples = [s for s in samples if s.id in by_id]
    if not samples:
        raise ValueError("the LLM's rows share no sample id with the test samples")
    task = task or task_row(samples[0].task).facts
    alone = cross_fit_rows(samples, task, None, n_folds, seed)
    both = cross_fit_rows(samples, task, lambda i, s: task.llm(s, by_id[s.id]), n_folds, seed)
    users = [s.user or s.id for s in samples]
    test = paired_user_bootstrap(_on_indices(both, task), _on_indices(alone, task), users, n_boot=n_boot, seed=seed)
    return {"metric": task.metric, "facts": test["b"], "facts_plus_llm": test["a"], "diff": test["diff"],
            "lo": test["lo"], "hi": test["hi"], "p": test["p"], "n": len(samples), "n_users": len(set(users)),
            "n_folds": n_folds, "beyond": bool(test["p"] < 0.05 and test["diff"] > 0)}
