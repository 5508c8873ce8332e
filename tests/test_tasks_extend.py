"""The extension points of docs/dev/extending.md, from this file alone: a new task is one module plus one row of
prefrec.tasks.TASKS, a new answer format is one row of its task's FORMATS. Each runs prepare -> train one step ->
eval -> rank on the tiny random-init model, with nothing else changed."""

import json

import numpy as np
import pytest
from conftest import save_tiny_model
from test_data_protocols import synthetic_log

from prefrec import prompts, tasks
from prefrec.data.prepare import prepare_log
from prefrec.data.protocols import (SPLITS, Built, Options, assign_users, check_common, filter_row, history_before,
                                    liked_flags, order_note, sequences, split_sizes, user_key)
from prefrec.evaluation.evaluate import evaluate
from prefrec.items import item_ids
from prefrec.model import load_model
from prefrec.samples import Comparison, Sample
from prefrec.scoring.encoding import encode_sample
from prefrec.scoring.packing import score_trees
from prefrec.serving.rank import rank, ranker_of
from prefrec.tasks import candidates
from prefrec.tasks.base import Facts, Ranking, Task, comparison_responses, example_prefix, rated
from prefrec.tasks.formats import AnswerFormat, read_label
from prefrec.tasks.metrics import yesno_metrics
from prefrec.training.config import config_from_dict, resolve_paths
from prefrec.training.recipe import train

# ---------------------------------------------------------------------------------------------------------------
# The toy task, as its own module would hold it: "would the user pick this one?", answered Y or N, one sample per
# user (the user's last item), and ranked item by item for a new user.


def toy_question(dom: str, title: str) -> str:
    return f"Would the user pick the {prompts.domain(dom).singular} {prompts.quote(title)}? Answer Y or N."


TOY_FORMATS = {"title": AnswerFormat("title", toy_question)}


def build_toy(log, o: Options) -> Built:
    check_common(o.history_len, o.min_history)
    seqs, liked = sequences(log, o.seed), liked_flags(log, o.liked_above)
    users = sorted((u for u, s in seqs.items() if len(s) > o.min_history), key=user_key)
    requested = {"train": o.n_train, "valid": o.n_valid, "test": o.n_test}
    sizes, warnings = split_sizes(len(users), requested)
    split_of = assign_users(users, o.seed, "toy", sizes)
    samples = {s: [] for s in SPLITS}
    fmt = TOY_TASK.format(o.answers)
    for u in sorted(split_of, key=user_key):
        seq, title = seqs[u], log.title
        target = log.interactions[seq[-1]]
        hist, _ = history_before(log, seq, len(seq) - 1, o.history_len, {title(target.item).casefold()})
        answer = ("Y", "N") if liked[seq[-1]] else ("N", "Y")
        samples[split_of[u]].append(Sample(
            id=f"toy-{u}", task="toy", domain=log.domain, user=u, answer_format=fmt.name,
            prefix=prompts.history_prefix(log.domain, [title(log.interactions[i].item) for i in hist]),
            comparisons=[Comparison(fmt.question(log.domain, title(target.item)), answer[0], [answer[1]])],
            candidates=[title(target.item)], candidate_items=[target.item], target=title(target.item),
            target_item=target.item, label=int(liked[seq[-1]])))
    return Built(samples=samples, interaction_split=[split_of.get(x.user, "unused") for x in log.interactions],
                 users_eligible=len(users), filters=[filter_row("toy users", log, set(split_of))],
                 warnings=warnings, requested=requested,
                 protocol={"name": "toy", "answers": fmt.name, "history_order": order_note(log)})


def score_toy(model, tokenizer, samples, *, max_tokens_per_batch=4096, progress=True) -> list[dict]:
    trees = [encode_sample(tokenizer, s, which="all", items=item_ids(model)) for s in samples]
    nested = score_trees(model, trees, max_tokens_per_batch=max_tokens_per_batch, progress=progress).nested()
    out = []
    for s, (b,) in zip(samples, nested):
        margin = float(b[0] - b[1]) if s.comparisons[0].chosen == "Y" else float(b[1] - b[0])  # logp(Y) − logp(N)
        out.append({"id": s.id, "user": s.user, "p_yes": 1 / (1 + np.exp(-margin)), "label": s.label})
    return out


def toy_metrics(rows: list[dict]) -> dict:
    return yesno_metrics([r["p_yes"] for r in rows], [r["label"] for r in rows])


def _rank_questions(domain, titles, fmt):
    return [fmt.question(domain, t) for t in titles], [["Y", "N"] for _ in titles]


def _rank_rows(tree, titles, summed):
    return [{"title": t, "score": summed[2 * i] - summed[2 * i + 1]} for i, t in enumerate(titles)]


TOY_TASK = Task(
    name="toy", formats=TOY_FORMATS, build=build_toy, score=score_toy, metrics=toy_metrics,
    defaults={"negatives": None, "history_len": 5, "min_history": 3, "n_train": 8, "n_valid": 4, "n_test": 6},
    key_metrics=lambda: ["auc", "accuracy"], responses=comparison_responses, ratings=rated,
    example=lambda domain, answers: (example_prefix(domain), toy_question(domain, "Alien (1979)"), "Y"),
    facts=Facts(None, None, None, "auc", toy_metrics, None), rank=Ranking(_rank_questions, _rank_rows),
    baseline=None,
)

# ---------------------------------------------------------------------------------------------------------------
# The toy format: candidates labelled with lower-case letters, one row of the candidates task's table.

LOWER = "abcdefghijklmnopqrst"


def lower_question(dom: str, titles: list[str], notes=None, *, timed: bool = True) -> str:
    listed = "; ".join(f"{LOWER[i]}) {prompts.quote(t)}" for i, t in enumerate(titles))
    return f"Which one of these {prompts.domain(dom).plural} comes next? {listed}. Answer with the letter only."


LOWER_ROW = AnswerFormat("lower", lower_question, lambda i: LOWER[i],
                         read_label(lambda i: LOWER[i].upper(), r"\b([a-t])\b"))


# ---------------------------------------------------------------------------------------------------------------
# prepare -> train one step -> eval -> rank


def _prepare(tmp_path, task: str, **kw):
    out = tmp_path / f"data-{task}"
    prepare_log(synthetic_log(n_users=30), [], {}, task, out, dataset="syn", source=tmp_path, seed=0,
                warn=lambda w: None, **kw)
    return out


def _train_one_step(tmp_path, data, tokenizer):
    model = save_tiny_model(tmp_path / "model", tokenizer)
    raw = {"output_dir": str(tmp_path / "run"), "progress": False, "model": {"name": str(model)},
           "lora": {"r": 2, "alpha": 4}, "data": {"dir": str(data), "max_valid_samples": 2},
           "stages": [{"kind": "sft", "max_steps": 1, "batch_size": 2}]}
    return train(resolve_paths(config_from_dict(raw, "test")))


def _rank_with(run, history, titles):
    model, tokenizer = load_model(str(run), dtype="fp32", device="cpu", merge_adapter=True)
    return rank(model, tokenizer, history, titles, ranker=ranker_of(run))


def test_a_toy_task_is_one_module_and_one_row(monkeypatch, tmp_path, embedded_tokenizer):
    monkeypatch.setitem(tasks.TASKS, "toy", TOY_TASK)
    data = _prepare(tmp_path, "toy")
    stats = json.loads((data / "stats.json").read_text())
    assert stats["task"] == "toy" and stats["split_sizes"] == {"train": 8, "valid": 4, "test": 6}
    run = _train_one_step(tmp_path, data, embedded_tokenizer)
    assert [json.loads(x)["stage"] for x in (run / "metrics.jsonl").read_text().splitlines()][0] == "sft"
    res = evaluate(run, data, out=tmp_path / "eval", progress=False)
    assert res["task"] == "toy" and res["n_samples"] == 6 and 0.0 <= res["metrics"]["accuracy"] <= 1.0
    assert "Would the user pick" in (run / "README.md").read_text()  # the card shows the task's example
    got = _rank_with(run, ["Movie 1 (1951)", "Movie 2 (1952)"], ["Movie 3 (1953)", "Movie 4 (1954)", "Movie 5 (1955)"])
    assert [r["rank"] for r in got] == [1, 2, 3] and sorted(r["title"] for r in got) == \
        ["Movie 3 (1953)", "Movie 4 (1954)", "Movie 5 (1955)"]


def test_a_toy_format_is_one_row(monkeypatch, tmp_path, embedded_tokenizer):
    monkeypatch.setitem(candidates.FORMATS, "lower", LOWER_ROW)
    data = _prepare(tmp_path, "candidates", answers="lower", n_candidates=5, negatives=2, n_train=8, n_valid=4,
                    n_test=6)
    s = json.loads((data / "test.jsonl").read_text().splitlines()[0])
    assert s["answer_format"] == "lower" and "Answer with the letter only." in s["comparisons"][0]["question"]
    assert s["comparisons"][0]["chosen"] == LOWER[s["candidates"].index(s["target"])]
    run = _train_one_step(tmp_path, data, embedded_tokenizer)
    res = evaluate(run, data, out=tmp_path / "eval", progress=False, max_new_tokens=4)
    assert res["n_samples"] == 6 and {"rank_mrr", "hr@1", "valid_ratio"} <= set(res["metrics"])
    rows = [json.loads(x) for x in (tmp_path / "eval" / "per_sample.jsonl").read_text().splitlines()]
    assert all(r["matched"] is None or r["rule"] == "lower" for r in rows)  # answers are read back by the row
    got = _rank_with(run, ["Movie 1 (1951)"], ["Movie 3 (1953)", "Movie 4 (1954)"])
    assert sorted(r["title"] for r in got) == ["Movie 3 (1953)", "Movie 4 (1954)"]


def test_an_unknown_task_or_format_is_an_error_naming_the_known_ones():
    from prefrec.errors import UserError

    with pytest.raises(UserError, match=r"task 'ranking' is not known; expected one of pairwise, candidates, yesno"):
        tasks.task("ranking")
    with pytest.raises(UserError, match=r"answer format 'lower' does not apply to the candidates task; it takes "
                                        r"title, number"):
        tasks.task("candidates").format("lower")
