"""Train one traditional baseline on a prepared folder, score its test samples, and write results.json.

    run_baseline("sasrec", "/tmp/prefrec-samples/ml100k-candidates", regime="full", seed=0, out="results/x")

The scores go through the same metric code as the LLM evaluation (prefrec.tasks.metrics):
    pairwise:   per comparison, s_first = score(positive), s_second = score(negative_j) -> pairwise_metrics
                (AUC pooled over item scores, pairwise accuracy; a tie counts as wrong)
    candidates: scores of the 20 candidates in prompt order -> ranking_metrics (HR@1/5, NDCG@5/10, MRR). A
                baseline does not generate text, so its HR@1 is the ranking HR@1 and its ValidRatio is 1 by
                construction (every "answer" is a candidate).
Cross-domain (train_samples = another domain's folder): only CMF can transfer, through title words (cmf.py).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from prefrec.baselines.bpr import BPRMF
from prefrec.baselines.cmf import CMF
from prefrec.baselines.common import REGIMES, EvalSet, eval_set, sample_keys, training_data
from prefrec.baselines.popularity import LikedShare, Popularity
from prefrec.baselines.sequential import SEQUENTIAL, SequentialBaseline
from prefrec.data.prepared import Prepared, load_prepared, read_split
from prefrec.errors import UserError
from prefrec.evaluation.facts import prompt_facts_rows
from prefrec.evaluation.prior import PRIOR_WEIGHT, item_prior, item_prior_rows
from prefrec.items import TABLE_FILE, save_table
from prefrec.provenance import provenance
from prefrec.results import write_results
from prefrec.tasks import TASKS
from prefrec.tasks import task as task_row

BASELINES = ("popularity", "liked-share", "bpr", *SEQUENTIAL, "cmf", "prompt-facts", "item-prior")
FACT_MODELS = ("prompt-facts", "item-prior")  # logistic models of facts (evaluation/facts.py, prior.py): any task
CROSS_DOMAIN = ("cmf",)  # the models that can score items they have no interaction with
TARGET_PREFIX = "target:"  # keeps a target domain's item keys apart from the source's
EPOCHS = {"few-shot": 20, "full": 10}  # few-shot data is small, so it gets more passes


def default_max_len(*preps: Prepared) -> int:
    """The longest history among all samples (the protocol's truncation), at most 200."""
    longest = max((len(s.history_items or s.history) for p in preps for s in p.train + p.valid + p.test), default=1)
    return int(min(max(longest, 1), 200))


def make_model(name: str, *, dim: int, max_len: int, epochs: int, lr: float | None, batch_size: int | None,
               cap: int, seed: int, progress: bool):
    if name == "popularity":
        return Popularity()
    if name == "liked-share":
        return LikedShare()
    mf = dict(dim=dim, epochs=epochs, cap=cap, seed=seed, progress=progress, lr=lr or 0.01,
              batch_size=batch_size or 512)
    if name == "bpr":
        return BPRMF(**mf)
    if name == "cmf":
        return CMF(**mf)
    if name in SEQUENTIAL:
        return SequentialBaseline(name, dim=dim, max_len=max_len, epochs=epochs, lr=lr or 1e-3,
                                  batch_size=batch_size or 128, cap=cap, seed=seed, progress=progress)
    raise UserError(f"unknown baseline {name!r}; expected one of {', '.join(BASELINES)}")


def baseline_metrics(task: str, scores: np.ndarray, test: EvalSet) -> tuple[dict, list[dict]]:
    """Shared metrics and per-sample rows (the fields `prefrec report` bootstraps from) from (N, C) scores, as the
    task's Baseline row maps them."""
    keys = [{"id": s.id, "user": s.user} for s in test.samples]
    row = task_row(task)
    rows = row.baseline.rows(keys, scores, test.target_index)
    return row.metrics(rows), rows


def coverage(test: EvalSet, n_trained: int) -> dict:
    """How much of the test data the model knows. Unknown = never in the training data (fallback score); cold =
    no interactions in training, including CMF's items known only by their titles."""
    unknown = test.candidates < 0
    return {
        "unknown_candidate_rate": float(unknown.mean()),
        "cold_candidate_rate": float((unknown | (test.candidates >= n_trained)).mean()),
        "unknown_history_rate": test.history_unknown / max(test.history_total, 1),
        "samples_without_known_history": int(sum(not c for c in test.contexts)),
        "samples_with_unknown_target": int(unknown[np.arange(len(unknown)), test.target_index].sum()),
    }


def run_baseline(name: str, samples_dir: str | Path, *, regime: str = "few-shot", seed: int = 0,
                 out: str | Path | None = None, epochs: int | None = None, dim: int = 64, max_len: int | None = None,
                 lr: float | None = None, batch_size: int | None = None, examples_per_epoch: int = 10000,
                 train_samples: str | Path | None = None, progress: bool = True, threads: int | None = 1,
                 max_train_samples: int | None = None, limit: int | None = None,
                 test_file: str | Path | None = None) -> dict:
    """Train `name` on the regime's data, score samples_dir/test.jsonl, return (and write to out/) the results.

    train_samples: a folder of another domain to train on (cross-domain; CMF only); default samples_dir itself.
    max_train_samples: few-shot regime only: train on the first N training samples (file order, as the LLM runs'
    `data.max_train_samples`), so a shots sweep trains the baselines on the same users as the LLMs.
    limit: score only the first N test samples (as `prefrec eval --limit`), so tables compare the same samples. The
    other test users stay out of training all the same.
    test_file: score this samples file instead of samples_dir/test.jsonl, e.g. the test samples with another user's
    history (`prefrec data swap-histories`). Training is the folder's, unchanged; every sample must be of one of the
    folder's test users, so no scored user was trained on.
    threads: torch intra-op threads while this runs (restored after). The models are tiny, so one thread is
    fastest, and on a busy machine several threads spin-wait for each other (measured 7x slower on 2 shared cores).
    Returns the results dict (prefrec.results's schema) plus, under "scores", the (N, C) candidate scores."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(name, samples_dir, regime=regime, seed=seed, out=out, epochs=epochs, dim=dim, max_len=max_len,
                    lr=lr, batch_size=batch_size, examples_per_epoch=examples_per_epoch,
                    train_samples=train_samples, progress=progress, max_train_samples=max_train_samples,
                    limit=limit, test_file=test_file)
    finally:
        torch.set_num_threads(before)


def _run(name, samples_dir, *, regime, seed, out, epochs, dim, max_len, lr, batch_size, examples_per_epoch,
         train_samples, progress, max_train_samples=None, limit=None, test_file=None) -> dict:
    name = name.lower()
    cross = train_samples is not None and Path(train_samples).resolve() != Path(samples_dir).resolve()
    target, source = _inputs(name, samples_dir, train_samples, cross, regime, limit, max_train_samples)
    scored = _test_samples(target, test_file)[:limit]  # used after training: no scored user leaks in
    if name in FACT_MODELS:
        return _facts_baseline(name, target, source, samples_dir, regime=regime, seed=seed, out=out, limit=limit,
                               test=scored, test_file=test_file)
    max_len = max_len or default_max_len(source, target)
    n_epochs = EPOCHS[regime] if epochs is None else epochs
    data = training_data(source, regime)
    model = make_model(name, dim=dim, max_len=max_len, epochs=n_epochs, lr=lr, batch_size=batch_size,
                       cap=examples_per_epoch, seed=seed, progress=progress)

    t0 = time.perf_counter()
    prefix = _fit(name, model, data, source, target, cross)
    train_seconds = time.perf_counter() - t0
    target = dataclasses.replace(target, test=scored)
    test = eval_set(target, model.vocab, prefix)
    t0 = time.perf_counter()
    scores = model.score(test)
    score_seconds = time.perf_counter() - t0
    if not np.isfinite(scores).all():
        raise RuntimeError(f"{name}: non-finite scores (training diverged?)")
    m, rows = baseline_metrics(target.task, scores, test)

    config = {"samples": str(Path(samples_dir)), "train_samples": str(Path(train_samples or samples_dir)),
              "regime": regime, "epochs": 0 if name in ("popularity", "liked-share") else n_epochs, "dim": dim, "max_len": max_len,
              "lr": getattr(model, "lr", None), "batch_size": getattr(model, "batch_size", None),
              "examples_per_epoch": examples_per_epoch, "like_threshold": source.like_threshold, "limit": limit,
              "test_file": None if test_file is None else str(Path(test_file)),
              "source_dataset": source.name, "target_dataset": target.name, "cross_domain": cross}
    result = {
        "kind": "eval", "method": name,
        "dataset": f"{source.name}->{target.name}" if cross else target.name,
        "task": target.task, "split": "test", "seed": seed, "regime": regime, "k": None,
        "shots": data.n_train_samples if regime == "few-shot" else None,
        "n_samples": len(test.samples), "metrics": m, "model": name, "config": config,
        "training": {**data.info, "train_seconds": round(train_seconds, 2), "score_seconds": round(score_seconds, 2)},
        "coverage": coverage(test, getattr(model, "n_trained", len(model.vocab))),
        **provenance(),
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        _save_item_table(out, model, source, name, result)
        write_results(out, result, rows, ascii_rows=True)
    return {**result, "scores": scores}


def _save_item_table(out: Path, model, source: Prepared, name: str, result: dict) -> None:
    """A sequential model's item table and id map beside its results: what LLaRA-style item tokens read
    (prefrec.items). Folders whose samples carry no item ids (imported prompts) get none."""
    if isinstance(model, SequentialBaseline) and not source.by_title:
        save_table(out, *model.item_embeddings(), titles=source.titles, dataset=source.name,
                   items_tsv=source.path / "items.tsv", model=name)
        result["config"]["item_embeddings"] = TABLE_FILE


def _inputs(name: str, samples_dir, train_samples, cross: bool, regime: str, limit, max_train_samples):
    """(target, source) prepared folders, every argument checked before any training."""
    if name not in BASELINES:
        raise UserError(f"unknown baseline {name!r}; expected one of {', '.join(BASELINES)}")
    if regime not in REGIMES:
        raise UserError(f"regime must be one of {', '.join(REGIMES)}, got {regime!r}")
    if limit is not None and limit < 1:  # checked before training, used after it
        raise UserError(f"limit must be at least 1, got {limit}")
    target = _supported(name, load_prepared(samples_dir, require_train=not cross))
    source = _supported(name, load_prepared(train_samples)) if cross else target
    if max_train_samples is not None and regime == "few-shot":
        if max_train_samples < 1:
            raise UserError(f"max_train_samples must be at least 1, got {max_train_samples}")
        source = dataclasses.replace(source, train=source.train[:max_train_samples])
    if cross:
        if name not in CROSS_DOMAIN:
            raise UserError(f"{name} scores items by their ids only and the two domains share no items, so a "
                            f"cross-domain run would be chance by construction; cross-domain baselines: "
                            f"{', '.join(CROSS_DOMAIN)}")
        if source.task != target.task:
            raise UserError(f"{train_samples} has task {source.task!r} but {samples_dir} has {target.task!r}")
    return target, source


def _test_samples(target: Prepared, test_file) -> list:
    """The samples to score: the folder's test split, or test_file's when every one is of a folder's test user."""
    if test_file is None:
        return target.test
    samples = read_split(test_file)
    if not samples:
        raise UserError(f"{test_file}: no samples to score")
    users = {s.user for s in target.test}
    for i, s in enumerate(samples, 1):
        if s.task != target.task:
            raise UserError(f"{test_file}:{i}: task {s.task!r}, but {target.path} holds {target.task!r} samples")
        if s.user not in users:
            raise UserError(f"{test_file}:{i}: user {s.user!r} is not one of {target.path}'s test users, so the "
                            "baseline may have trained on them; score a folder's own test users only")
    return samples


def _supported(name: str, prep: Prepared) -> Prepared:
    """The folder, when its task is one the baseline takes (the fact models take every task)."""
    if name not in FACT_MODELS and task_row(prep.task).baseline is None:
        ok = [t for t, row in TASKS.items() if row.baseline is not None]
        raise UserError(f"{prep.path}: task {prep.task!r} is not supported by the traditional baselines "
                        f"(supported: {', '.join(ok)})")
    return prep


def _fit(name: str, model, data, source: Prepared, target: Prepared, cross: bool) -> str:
    """Train the model; returns the prefix of the target's item keys (cross-domain CMF keeps them apart)."""
    if name != "cmf":
        model.fit(data)
        return ""
    # the test samples' items that have no interactions get vectors from their titles (shown in every prompt)
    prefix = TARGET_PREFIX if cross else ""
    extra = {}
    for s in target.test:
        history, cands, _ = sample_keys(s, target.by_title)
        for k in history + cands:
            if data.vocab.get(prefix + k) < 0:
                extra[prefix + k] = target.titles.get(k, k)
    model.fit(data, source.titles, extra, cross_domain=cross)
    return prefix


_FEATURES = {"prompt-facts": "parsed from the prompt text: item notes (mean rating, raters), shown order",
             "item-prior": "per item, from non-test users' non-test interactions (interactions.tsv): smoothed mean "
                           "rating (or liked share) and log(1 + raters); pairwise: their differences and the shown "
                           "order"}


def _facts_baseline(name: str, target: Prepared, source: Prepared, samples_dir, *, regime: str, seed: int, out,
                    limit, test: list, test_file=None) -> dict:
    """A logistic model of facts, fit on the regime's training samples (few-shot: the training split; full: every
    non-test user's samples, train + valid), scored on the test samples. prompt-facts (prefrec.evaluation.facts):
    the numbers and the order the prompt shows, only what the LLM reads. item-prior (prefrec.evaluation.prior):
    each item's smoothed mean rating and rater count among non-test users, what is known without the user."""
    fit_on = source.train + (source.valid if regime == "full" else [])
    t0 = time.perf_counter()
    if name == "item-prior":
        prior = item_prior(target)
        rows = item_prior_rows(prior, fit_on, test)
    else:
        rows = prompt_facts_rows(fit_on, test)
    result = {
        "kind": "eval", "method": name, "dataset": target.name, "task": target.task, "split": "test",
        "seed": seed, "regime": regime, "k": None, "shots": len(fit_on) if regime == "few-shot" else None,
        "n_samples": len(test), "metrics": task_row(target.task).metrics(rows), "model": name,
        "config": {"samples": str(Path(samples_dir)), "regime": regime, "limit": limit, "fit_samples": len(fit_on),
                   "test_file": None if test_file is None else str(Path(test_file)),
                   "features": _FEATURES[name]},
        "training": {"train_seconds": round(time.perf_counter() - t0, 2)},
        **provenance(),
    }
    if name == "item-prior":
        result["config"].update(prior=prior.kind, items=len(prior.stats), prior_weight=PRIOR_WEIGHT)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_results(Path(out), result, rows, ascii_rows=True)
    return result
