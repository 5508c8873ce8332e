"""prefrec.evaluation.facts: the prompt-facts baseline and the "added to the facts" test."""

import math

import numpy as np
import pytest
from test_data_protocols import synthetic_log

from prefrec import prompts
from prefrec.data import protocols as P
from prefrec.errors import UserError
from prefrec.evaluation import facts, stats
from prefrec import tasks
from prefrec.tasks import candidates as task_candidates
from prefrec.tasks import pairwise as task_pairwise


def test_notes_and_positions_are_read_off_the_prompt():
    assert prompts.parse_note(prompts.item_note(120, 3.94)) == (3.9, math.log1p(120), 0.0)
    assert prompts.parse_note(prompts.item_note(0, None)) == (0.0, 0.0, 1.0)
    assert prompts.parse_note(prompts.item_note(7, None, rated=False)) == (0.0, math.log1p(7), 1.0)
    q = task_pairwise.title_question("movies", "Heat (1995)", "Up (2009)", (prompts.item_note(3, 4.0), ""))
    assert prompts.shown(q, "Heat (1995)") == (q.index('"Heat'), (4.0, math.log1p(3), 0.0))
    assert prompts.shown(q, "Up (2009)")[1] == (0.0, 0.0, 1.0)
    with pytest.raises(UserError, match="not shown"):
        prompts.shown(q, "Alien (1979)")


def _built(task, **kw):
    log = synthetic_log(n_users=80, seed=7)
    build = task_pairwise.build_pairwise if task == "pairwise" else task_candidates.build_candidates
    return build(log, seed=0, item_stats=True, **kw)


def test_the_facts_model_fits_on_train_and_reads_the_order_of_a_text_only_prompt():
    built = _built("pairwise", negatives=2, n_train=None, n_valid=5, n_test=20)
    rows = facts.prompt_facts_rows(built.samples["train"], built.samples["test"])
    assert [r["id"] for r in rows] == [s.id for s in built.samples["test"]]
    assert all(len(r["s_first"]) == 2 for r in rows)
    # a text-only prompt: the model is an intercept, so P(positive) depends on the shown order only
    plain = task_pairwise.build_pairwise(synthetic_log(n_users=80, seed=7), seed=0, negatives=2, n_train=None, n_valid=5,
                             n_test=20)
    rows = facts.prompt_facts_rows(plain.samples["train"], plain.samples["test"])
    assert len({round(abs(x), 9) for r in rows for x in r["s_first"]}) == 1


@pytest.mark.parametrize("task", ["pairwise", "candidates"])
def test_a_score_that_only_restates_the_facts_adds_nothing_and_a_score_that_knows_the_answer_does(task):
    kw = {"negatives": 2, "n_train": 10, "n_valid": 5, "n_test": None} if task == "pairwise" else \
        {"negatives": 3, "n_train": 10, "n_valid": 10, "n_test": 300}
    test = _built(task, **kw).samples["test"]
    spec = tasks.task(task).facts
    rng = np.random.default_rng(0)

    def rows_from(score):  # per-sample LLM rows whose score of each unit is `score(x, y)`
        out = []
        for s in test:
            x, y = spec.features(s)
            m = score(x, y)
            if task == "pairwise":  # back from the first-shown view to (chosen, rejected)
                margin = np.where(y == 1.0, m, -m)
                out.append({"id": s.id, "s_first": margin.tolist(), "s_second": [0.0] * len(m)})
            else:
                out.append({"id": s.id, "rank_scores": m.tolist(), "target_index": s.candidates.index(s.target)})
        return out

    restating = facts.added_to_facts(test, rows_from(lambda x, y: 2.0 * x[:, 0] - x[:, 1]), n_boot=200)
    assert abs(restating["diff"]) < 0.03 and not restating["beyond"]
    knowing = facts.added_to_facts(test, rows_from(lambda x, y: 3.0 * y + rng.normal(size=len(y))), n_boot=200)
    # the bootstrap's index arithmetic against the task's own metric code over resampled row lists (brute force)
    llm = rows_from(lambda x, y: 3.0 * y + rng.normal(size=len(y)))
    by_id = {r["id"]: r for r in llm}
    alone = facts.cross_fit_rows(test, spec, None, 10, 0)
    both = facts.cross_fit_rows(test, spec, lambda i, s: spec.llm(s, by_id[s.id]), 10, 0)
    users = [s.user or s.id for s in test]
    brute = stats.paired_user_bootstrap(*(lambda idx, rows=rows: spec.metrics([rows[i] for i in idx])[spec.metric]
                                          for rows in (both, alone)), users, n_boot=50, seed=3)
    fast = stats.paired_user_bootstrap(facts._on_indices(both, spec), facts._on_indices(alone, spec), users,
                                       n_boot=50, seed=3)
    assert fast == pytest.approx(brute, abs=1e-12)
    assert knowing["beyond"] and knowing["p"] < 0.05 and knowing["diff"] > 0.1
    assert knowing["n_users"] == len({s.user for s in test})


def test_a_task_metric_that_no_resampling_family_reproduces_is_refused():
    import dataclasses

    spec = dataclasses.replace(tasks.task("pairwise").facts, metrics=lambda rows: {"auc": 0.123})
    rows = [{"s_first": [1.0, 0.0], "s_second": [0.0, 1.0]}] * 3
    with pytest.raises(ValueError, match="no resampling family"):
        facts._on_indices(rows, spec)
    assert facts._on_indices(rows, tasks.task("pairwise").facts)(np.arange(3)) == 0.5
