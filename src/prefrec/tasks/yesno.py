"""The yes/no task (TALLRec): will the user enjoy this item? Answer "Yes." or "No.".

Protocol (`build_yesno`; Bao et al. 2023). A user's target interaction (drawn uniformly among positions with at
least 10 earlier interactions) and the 10 interactions before it, split into liked (> 3) and disliked titles; the
answer is "Yes." when the target is liked. Users split disjointly like the pairwise task, one sample each.

Scoring: P(Yes) and P(No) = softmax over the whole vocabulary at the answer's first position, read at the first
token of the "Yes." and "No." responses; score = P(Yes) / (P(Yes) + P(No)) = σ(log P(Yes) − log P(No)). One
softmax: TALLRec's second softmax over the two logits gives the same AUC but is not a probability of the model
(docs/evaluate.md, the papers' code). Metrics: AUC and accuracy.
Prompt facts: y = label, x = the target's (mean rating, log(1 + raters), no-mean flag) and the mean of the user's
shown history ratings; the LLM's score is log P(Yes) − log P(No). Item prior: the target's (smoothed mean,
log(1 + n)). Rank/serve and the ID baselines do not take the task.
"""

from __future__ import annotations

import math
import random
import re

import numpy as np

from prefrec import prompts
from prefrec.data.protocols import (SPLITS, Built, ItemFacts, Options, assign_users, before_counts, check_common,
                                    check_options, filter_row, history_before, liked_flags, order_note,
                                    order_warnings, same_time_note, sequences, split_sizes, timed, user_key)
from prefrec.data.readers import Log
from prefrec.errors import UserError
from prefrec.items import item_ids
from prefrec.samples import Comparison, Sample
from prefrec.scoring.encoding import encode_texts
from prefrec.scoring.packing import score_trees
from prefrec.scoring.soft import mark_sample
from prefrec.tasks.base import EXAMPLE_HISTORY, Facts, Task, candidate_ids, comparison_responses, rated
from prefrec.tasks.formats import AnswerFormat
from prefrec.tasks.metrics import yesno_metrics

YES = "Yes."
NO = "No."

# ---- wording ----


def yesno_prefix(dom: str, liked: list[str], disliked: list[str]) -> str:
    d = prompts.domain(dom)
    return (f"{d.role} The user liked these {d.plural}: {prompts.title_list(liked)}. "
            f"The user disliked these {d.plural}: {prompts.title_list(disliked)}.\n")


def yesno_question(dom: str, target: str, note: str | None = None) -> str:
    """`note`: the target's item facts in parentheses (the hybrid prompt option)."""
    d = prompts.domain(dom)
    shown = prompts.quote(target) + (f" ({note})" if note else "")
    return f"Will the user enjoy the {d.singular} {shown}? Answer Yes or No."


# the task's own answer, Yes./No. (its "title" row, the format every sample names by default)
FORMATS: dict[str, AnswerFormat] = {"title": AnswerFormat("title", yesno_question)}


# ---- the protocol ----

def build_yesno(log: Log, *, seed: int = 0, threshold: float = 3.0, history_len: int = 10, min_history: int = 10,
                n_train: int | None = 64, n_valid: int | None = 100, n_test: int | None = 1000,
                same_time: str = "keep", history_ratings: bool = False, item_stats: bool = False,
                answers: str = "title") -> Built:
    """TALLRec: liked and disliked history titles, "will the user enjoy T?", Yes./No. With history_ratings the
    history is shown with the user's ratings instead (the hybrid prompt of the other tasks); with item_stats the
    target carries its facts from users outside the test split."""
    fmt = TASK.format(answers)
    check_common(history_len, min_history)
    check_options(log, history_ratings)
    min_history = max(min_history, 1)
    inter, title = log.interactions, log.title
    seqs, liked = sequences(log, seed), liked_flags(log, threshold)
    before = before_counts(log, seqs, same_time)
    eligible = [u for u, seq in seqs.items() if len(seq) > min_history and before[u][-1] >= min_history]
    filters = [filter_row(f">{min_history} interactions", log, set(eligible))]
    requested = {"train": n_train, "valid": n_valid, "test": n_test}
    sizes, warnings = split_sizes(len(eligible), requested, f"eligible users (>{min_history} interactions)")
    user_split = assign_users(eligible, seed, "yesno", sizes)
    facts = ItemFacts(log, [user_split.get(x.user) != "test" for x in inter]) if item_stats else None
    samples: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    twins_removed = 0
    for u in sorted(user_split, key=user_key):
        rng = random.Random(f"{seed}:yesno:{u}")
        seq = seqs[u]
        if same_time == "keep":
            t = rng.randrange(min_history, len(seq))
        else:
            t = rng.choice([t for t in range(len(seq)) if before[u][t] >= min_history])
        hist, n_twins = history_before(log, seq, before[u][t], history_len, {title(inter[seq[t]].item).casefold()})
        twins_removed += n_twins > 0
        hist_items = [inter[i].item for i in hist]
        liked_titles = [title(inter[i].item) for i in hist if liked[i]]
        disliked_titles = [title(inter[i].item) for i in hist if not liked[i]]
        target = inter[seq[t]].item
        label = int(liked[seq[t]])
        yes_no = (YES, NO) if label else (NO, YES)
        split = user_split[u]
        prefix = prompts.history_prefix(log.domain, [title(i) for i in hist_items], [inter[i].rating for i in hist],
                                        timed=timed(log)) if history_ratings else \
            yesno_prefix(log.domain, liked_titles, disliked_titles)
        note = facts.note(target, u) if facts is not None else None
        samples[split].append(Sample(
            id=f"{log.name}-yesno-{split}-{u}", task="yesno", domain=log.domain, prefix=prefix,
            comparisons=[Comparison(question=fmt.question(log.domain, title(target), note),
                                    chosen=yes_no[0], rejected=[yes_no[1]])],
            user=u, history=[title(i) for i in hist_items], history_items=hist_items, candidates=[title(target)],
            candidate_items=[target], target=title(target), target_item=target, label=label, answer_format=fmt.name))
    filters.append(filter_row("sampled into train/valid/test", log, set(user_split)))
    warnings += order_warnings(log)
    kind = "rating > %g" % threshold if log.value == "rating" else "top half of the user's play counts"
    return Built(samples=samples, interaction_split=[user_split.get(x.user, "unused") for x in inter],
                 users_eligible=len(eligible), filters=filters, warnings=warnings, requested=requested,
                 protocol={"name": "TALLRec yes/no", "liked": kind, "history_len": history_len,
                           "min_history": min_history, "user_disjoint": True, "history_ratings": history_ratings,
                           "item_stats": "users outside the test split, the sample's own user left out"
                           if item_stats else False,
                           "history_order": order_note(log),
                           "same_time_history": same_time_note(log, same_time, samples),
                           "history_title_twins_removed": twins_removed})


def _build(log: Log, o: Options) -> Built:
    """The protocol with `prefrec data prepare`'s options (Options; the defaults of the task row)."""
    if o.negative_below is not None:
        raise UserError("--negative-below applies to the pairwise task")
    if o.per_user != 1:
        raise UserError("--per-user applies to the pairwise task (the yesno task already takes every position of a "
                        "user's timeline)")
    if o.train_order is not None:
        raise UserError("--train-order applies to the candidates task (the yesno task's training samples are "
                        "already one per user)")
    built = build_yesno(log, seed=o.seed, threshold=o.liked_above, history_len=o.history_len,
                        min_history=o.min_history, same_time=o.same_time, history_ratings=o.history_ratings,
                        item_stats=o.item_stats, answers=o.answers, **o.sizes())
    built.extra["labels_positive"] = {s: sum(x.label or 0 for x in built.samples[s]) for s in SPLITS}
    return built


# ---- scoring and metrics ----

def _is_yes(text: str) -> bool | None:
    t = text.strip().lower().rstrip(".!")
    return True if t == "yes" else False if t == "no" else None


def score_yesno(model, tokenizer, samples: list[Sample], *, max_tokens_per_batch: int = 4096,
                progress: bool = True) -> list[dict]:
    """Per sample: logp_yes, logp_no = log-softmax over the full vocabulary at the first answer position, read at the
    first token of the "Yes." and "No." responses; p_yes = σ(logp_yes − logp_no) = P(Yes) / (P(Yes) + P(No))."""
    trees, yes_at = [], []
    ids = item_ids(model)
    for s in samples:
        c = s.comparisons[0]
        answers = [c.chosen] + list(c.rejected)
        kinds = [_is_yes(a) for a in answers]
        if True not in kinds or False not in kinds:
            raise UserError(f"sample {s.id}: a yes/no sample needs responses 'Yes.' and 'No.', got {answers}")
        yes_at.append((kinds.index(True), kinds.index(False)))
        if ids is None:
            trees.append(encode_texts(tokenizer, s.prefix, [c.question], [answers]))
        else:
            m = mark_sample(s, ids, [c.question])
            trees.append(encode_texts(tokenizer, m.prefix, m.questions, [answers], marked=True))
    scores = score_trees(model, trees, max_tokens_per_batch=max_tokens_per_batch, per_token=True, progress=progress,
                         desc="yes/no")
    first = [t[0].item() for t in scores.token_logps]  # log P(first token of each response)
    out, n = [], 0
    for s, tree, (iy, ino) in zip(samples, trees, yes_at):
        resp = tree.branches[0].responses
        if resp[iy][0] == resp[ino][0]:
            raise UserError(f"sample {s.id}: 'Yes.' and 'No.' start with the same token; cannot read P(Yes)")
        ly, ln = first[n + iy], first[n + ino]
        n += len(resp)
        label = s.label if s.label is not None else int(iy == 0)
        out.append({"id": s.id, "user": s.user, "label": int(label), "logp_yes": ly, "logp_no": ln,
                    "p_yes": float(1.0 / (1.0 + np.exp(ln - ly)))})
    return out


def _row_metrics(rows: list[dict]) -> dict:
    return yesno_metrics([r["p_yes"] for r in rows], [r["label"] for r in rows])


def _example(domain: str, answers: str) -> tuple[str, str, str]:
    question = TASK.format(answers).question(domain, "Alien (1979)")
    return yesno_prefix(domain, EXAMPLE_HISTORY, ["Cars (2006)"]), question, YES


# ---- prompt facts and the item prior ----

_RATING = re.compile(r"\((\d+(?:\.\d+)?)/5\)")


def _facts_features(s: Sample) -> tuple[np.ndarray, np.ndarray]:
    _, facts = prompts.shown(s.comparisons[0].question, s.target)
    ratings = [float(r) for r in _RATING.findall(s.prefix)]
    return np.array([[*facts, np.mean(ratings) if ratings else 0.0]]), np.array([float(s.label or 0)])


def _llm(s: Sample, row: dict) -> np.ndarray:
    return np.array([row["logp_yes"] - row["logp_no"]] if "logp_yes" in row else [math.log(row["p_yes"]) -
                                                                                   math.log1p(-row["p_yes"])])


def _facts_rows(s: Sample, z: np.ndarray) -> dict:
    return {"p_yes": float(1.0 / (1.0 + np.exp(-z[0]))), "label": int(s.label or 0)}


def _prior(prior, s: Sample) -> tuple[np.ndarray, np.ndarray]:
    return np.array([prior.features(candidate_ids(s)[0], s.user)]), np.array([float(s.label or 0)])


TASK = Task(
    name="yesno", formats=FORMATS, build=_build, score=score_yesno, metrics=_row_metrics,
    defaults={"negatives": None, "history_len": 10, "min_history": 10, "n_train": 64, "n_valid": 100, "n_test": 1000},
    key_metrics=lambda: ["auc", "accuracy"], example=_example, responses=comparison_responses, ratings=rated,
    facts=Facts(_facts_features, _llm, _facts_rows, "auc", _row_metrics, _prior),
    rank=None, baseline=None,
    why_no_rank="its prompt lists the titles the user liked and disliked, which a history of titles does not say",
)
