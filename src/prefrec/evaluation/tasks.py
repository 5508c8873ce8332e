"""The task table: pairwise, candidates and yes/no, each with how its per-sample rows become metrics.

Per-sample rows are what evaluate and the baselines write to per_sample.jsonl. `Task.metrics(rows)` is the one
place a task's shared metrics are computed from them (LLM evaluation and baselines alike), and `metric_families`
recomputes metrics on a resample of the rows for the report's bootstrap. The metric definitions themselves live in
prefrec.evaluation.metrics; a new ranking metric is one row of metrics.RANKING_METRICS and reaches every user from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from prefrec import prompts
from prefrec.answers import LETTER, answer_format
from prefrec.errors import UserError
from prefrec.evaluation import metrics, scores
from prefrec.evaluation.metrics import pairwise_metrics, ranking_metrics, yesno_metrics
from prefrec.samples import (
    TASKS as TASK_NAMES,  # the one list of task names; this table gives each its metrics
)

# LLM candidates rows: (metric name prefix, row field): summed log-probs and log-probs per token
LLM_RANKINGS = (("rank_", "rank_scores"), ("rank_norm_", "rank_norm_scores"))

Family = Callable[[np.ndarray], dict]  # row indices (a resample) -> metrics


def ranking_by_size(rows: list[dict], key: str, prefix: str) -> dict:
    """Ranking metrics of rows[i][key] against rows[i]["target_index"], `prefix` before each name. Rows may differ
    in length when samples show different numbers of candidates: each length is ranked apart, then the metrics are
    averaged with the number of rows of each length as weights."""
    parts = []
    for size in sorted({len(r[key]) for r in rows}):
        sel = [r for r in rows if len(r[key]) == size]
        m = ranking_metrics(np.array([r[key] for r in sel]), np.array([r["target_index"] for r in sel]))
        parts.append((m, len(sel)))
    return {prefix + name: float(sum(m[name] * n for m, n in parts) / len(rows)) for name in metrics.RANKING_METRICS}


def _pairwise(rows: list[dict]) -> dict:
    first, second = np.concatenate([r["s_first"] for r in rows]), np.concatenate([r["s_second"] for r in rows])
    return {**pairwise_metrics(first, second), "ties": int(np.sum(first == second))}


def _candidates(rows: list[dict]) -> dict:
    """Baseline rows hold one score list per sample ("scores", every sample the same length); LLM rows hold
    rank_scores and rank_norm_scores (generation metrics, when asked, come from the answers in evaluate)."""
    if rows and "scores" in rows[0]:
        m = ranking_metrics(np.array([r["scores"] for r in rows]), np.array([r["target_index"] for r in rows]))
        m["valid_ratio"] = 1.0  # no generation: every answer is a candidate
        return m
    m = {}
    for prefix, key in LLM_RANKINGS:
        m.update(ranking_by_size(rows, key, prefix))
    m["n"] = len(rows)
    m["n_candidates"] = int(np.mean([len(r["rank_scores"]) for r in rows]))
    return m


def _yesno(rows: list[dict]) -> dict:
    return yesno_metrics([r["p_yes"] for r in rows], [r["label"] for r in rows])


# ---------------------------------------------------------------------------------------------------------------
# Metric families for the bootstrap: each recomputes a group of metrics on a resample of the rows

def _as_list(v) -> list[float]:
    return [float(x) for x in v] if isinstance(v, list) else [float(v)]


def _pairwise_family(rows: list[dict]) -> list[Family]:
    s1 = [np.array(_as_list(r["s_first"])) for r in rows]
    s2 = [np.array(_as_list(r["s_second"])) for r in rows]
    if all(a.size == 1 for a in s1):  # one comparison per sample: plain indexing, much faster
        f1, f2 = np.concatenate(s1), np.concatenate(s2)
        return [lambda idx: pairwise_metrics(f1[idx], f2[idx])]
    # a sample's comparisons stay together in a resample
    return [lambda idx: pairwise_metrics(np.concatenate([s1[i] for i in idx]), np.concatenate([s2[i] for i in idx]))]


def _yesno_family(rows: list[dict]) -> list[Family]:
    p = np.array([float(r["p_yes"]) for r in rows])
    y = np.array([int(r["label"]) for r in rows])
    return [lambda idx: yesno_metrics(p[idx], y[idx])]


def _constrained_family(rows: list[dict]) -> list[Family]:
    valid = np.array([bool(r["valid_constrained"]) for r in rows], dtype=float)
    hit = np.array([bool(r["hit_constrained"]) for r in rows], dtype=float)
    return [lambda idx: {"hr@1_constrained": float(hit[idx].mean()),
                         "valid_ratio_constrained": float(valid[idx].mean())}]


def _generation_family(rows: list[dict]) -> list[Family]:
    valid = np.array([bool(r["valid"]) for r in rows], dtype=float)
    hit = np.array([bool(r["hit"]) for r in rows], dtype=float)
    return [lambda idx: {"hr@1": float(hit[idx].mean()), "valid_ratio": float(valid[idx].mean())}]


def _ranking_family(rows: list[dict]) -> list[Family]:
    """One family per list-valued "*scores" field (scores, rank_scores, rank_norm_scores), named by its prefix."""
    t = np.array([int(r["target_index"]) for r in rows])
    fams = []
    for f in sorted(rows[0]):
        if f.endswith("scores") and isinstance(rows[0][f], list):
            prefix = f[: -len("scores")]
            sc = np.array([r[f] for r in rows], dtype=float)
            fams.append(lambda idx, sc=sc, prefix=prefix: {prefix + k: v for k, v in
                                                           ranking_metrics(sc[idx], t[idx]).items()})
    return fams


# (fields a row must have, families built from such rows), in the order the report has always used
FAMILIES: list[tuple[frozenset, Callable[[list[dict]], list[Family]]]] = [
    (frozenset({"s_first", "s_second"}), _pairwise_family),
    (frozenset({"p_yes", "label"}), _yesno_family),
    (frozenset({"valid", "hit"}), _generation_family),
    (frozenset({"valid_constrained", "hit_constrained"}), _constrained_family),
    (frozenset({"target_index"}), _ranking_family),
]


def metric_families(rows: list[dict]) -> list[Family]:
    """fn(indices) -> dict of metrics, for each metric family the per-sample rows support (read from their fields,
    so rows of any task, LLM or baseline, need no other label)."""
    if not rows:
        return []
    fields = set(rows[0])
    return [fam for need, build in FAMILIES if need <= fields for fam in build(rows)]


# ---------------------------------------------------------------------------------------------------------------
# What each task shows: its key metrics, an example prompt (model cards), the responses explain scores

def _candidates_key_metrics() -> list[str]:
    """Generation's HR@1 and ValidRatio, then every metrics.RANKING_METRICS row as the LLM's likelihood ranking
    (rank_…) and as the baselines' scores, read at call time, so a new ranking metric is shown without touching this
    file (a baseline's hr@1 is its ranking HR@1 under the generation column)."""
    rank = list(metrics.RANKING_METRICS)
    return ["hr@1", "valid_ratio", "hr@1_constrained"] + [f"rank_{m}" for m in rank] + \
        [m for m in rank if m != "hr@1"]


HIST = ["Heat (1995)", "Fargo (1996)"]


def _pairwise_example(domain: str, answers: str) -> tuple[str, str, str]:
    prefix = prompts.history_prefix(domain, HIST)
    question = prompts.pairwise_question(domain, "Alien (1979)", "Jaws (1975)", answers=answers)
    answer = "A" if answers == LETTER else prompts.format_ordering("Alien (1979)", "Jaws (1975)")
    return prefix, question, answer


def _candidates_example(domain: str, answers: str) -> tuple[str, str, str]:
    cands = ["Alien (1979)", "Jaws (1975)", "Big (1988)"]
    question = prompts.candidates_question(domain, cands, answers=answers)
    return prompts.history_prefix(domain, HIST), question, answer_format(answers).response(0, cands[0])


def _yesno_example(domain: str, answers: str) -> tuple[str, str, str]:
    return prompts.yesno_prefix(domain, HIST, ["Cars (2006)"]), prompts.yesno_question(domain, "Alien (1979)"), \
        prompts.YES


def _comparison_responses(sample) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """(questions, responses, is_positive): each comparison's chosen and rejected responses."""
    questions, responses, positive = [], [], []
    for c in sample.comparisons:
        questions.append(c.question)
        responses.append([c.chosen] + list(c.rejected))
        positive.append([True] + [False] * len(c.rejected))
    return questions, responses, positive


def _candidate_responses(sample) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """Every shown candidate's answer (the target first), as likelihood ranking scores them."""
    if not (sample.candidates and sample.target in sample.candidates):
        return _comparison_responses(sample)
    cands = list(dict.fromkeys(sample.candidates))
    fmt = answer_format(sample.answer_format)
    order = [cands.index(sample.target)] + [i for i, c in enumerate(cands) if c != sample.target]
    return [sample.comparisons[0].question], [[fmt.response(i, cands[i]) for i in order]], \
        [[True] + [False] * (len(order) - 1)]


# ---------------------------------------------------------------------------------------------------------------
# The table

@dataclass(frozen=True)
class Task:
    """One task: how a model scores its samples (per-sample rows), how the rows become metrics (and bootstrap
    families), which metrics its tables show, an example prompt, and the responses explain shows.

    score(model, tokenizer, samples, *, max_tokens_per_batch, progress) -> rows; generate (or None):
    (model, tokenizer, samples, rows, max_new_tokens, batch_size, progress) adds the generation fields to the rows
    and returns their metrics."""
    name: str
    score: Callable
    row_metrics: Callable[[list[dict]], dict]
    key_metrics: Callable[[], list[str]]
    example: Callable[[str, str], tuple[str, str, str]]
    responses: Callable
    generate: Callable | None = None
    check: Callable = lambda samples, where: None  # noqa: E731 - samples that cannot be scored, before any model loads

    def metrics(self, rows: list[dict]) -> dict:
        """The task's shared metrics from its per-sample rows."""
        return self.row_metrics(rows)

    def families(self, rows: list[dict]) -> list[Family]:
        """The bootstrap's metric families of these rows."""
        return metric_families(rows)


def _check_candidates(samples, where: str) -> None:
    for s in samples:
        if not s.candidates:
            raise UserError(f"{where}: sample {s.id}: the candidates task needs the 'candidates' list (every title "
                            f"its prompt shows); it is empty, so HR@k would be over chosen + rejected only")


TASKS: dict[str, Task] = {row.name: row for row in (
    Task("pairwise", scores.score_pairwise, _pairwise, lambda: ["auc", "pairwise_accuracy"], _pairwise_example,
         _comparison_responses),
    Task("candidates", scores.score_candidates, _candidates, _candidates_key_metrics, _candidates_example,
         _candidate_responses, generate=scores.generate_and_match, check=_check_candidates),
    Task("yesno", scores.score_yesno, _yesno, lambda: ["auc", "accuracy"], _yesno_example, _comparison_responses),
)}
if tuple(TASKS) != TASK_NAMES:  # a task added to samples.TASKS needs its row here
    raise ImportError(f"prefrec.evaluation.tasks: rows for {sorted(set(TASK_NAMES) - set(TASKS))} are missing")


def task(name: str) -> Task:
    return TASKS[name]
