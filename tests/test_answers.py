"""The answer formats (each task's FORMATS table), from the protocol's prompt to scoring and generation matching."""

import pytest
import torch
from conftest import make_tiny_lm
from test_data_protocols import synthetic_log

from prefrec import tasks
from prefrec.tasks import candidates as task_candidates
from prefrec.samples import Sample
from prefrec.tasks import pairwise as task_pairwise


def test_labels_responses_and_reading():
    letter, number, title = tasks.task("pairwise").format("letter"), tasks.task("candidates").format("number"), \
        tasks.task("candidates").format("title")
    assert letter.responses(["X", "Y"]) == ["A", "B"] and number.responses(["X", "Y", "Z"]) == ["1", "2", "3"]
    assert title.responses(["X", "Y"]) == ["X", "Y"]
    for text, want in (("B", 1), ("b.", 1), ("Option A", 0), ("I think B", 1), ("C", None), ("", None)):
        assert letter.read(text, 2) == want, text
    for text, want in (("7", 6), ("7.", 6), ("Number 12 it is", 11), ("21", None), ("1995", None), ("x", None)):
        assert number.read(text, 20) == want, text
    assert list(tasks.task("pairwise").formats) == ["title", "letter"]
    assert list(tasks.task("candidates").formats) == ["title", "number"]
    with pytest.raises(ValueError, match="does not apply to the pairwise task"):
        tasks.task("pairwise").format("number")


def test_pairwise_letters_name_the_positive_by_its_shown_position():
    log = synthetic_log(seed=3)
    built = task_pairwise.build_pairwise(log, seed=1, negatives=2, answers="letter", n_train=None, n_valid=5, n_test=5,
                             item_stats=True)
    n_a = 0
    for s in (x for v in built.samples.values() for x in v):
        assert s.answer_format == "letter"
        for c, neg in zip(s.comparisons, s.candidates[1:]):
            shown_first = f'A: "{s.target}"' in c.question
            assert (c.chosen, c.rejected) == (("A", ["B"]) if shown_first else ("B", ["A"]))
            assert f'"{neg}"' in c.question and "Answer with the letter A or B." in c.question
            n_a += shown_first
    total = sum(len(x.comparisons) for v in built.samples.values() for x in v)
    assert 0.3 < n_a / total < 0.7  # the order is shuffled, so A is right about half the time
    assert built.protocol["answers"] == "letter"


def test_candidates_numbers_list_every_candidate_and_answer_the_target():
    log = synthetic_log(seed=4)
    built = task_candidates.build_candidates(log, seed=0, negatives=3, answers="number", n_train=20, n_valid=5, n_test=5)
    for s in (x for v in built.samples.values() for x in v):
        q, c = s.comparisons[0].question, s.comparisons[0]
        for i, title in enumerate(s.candidates):
            assert f'\n{i + 1}. "{title}"' in q
        assert c.chosen == str(s.candidates.index(s.target) + 1)
        assert all(r.isdigit() and s.candidates[int(r) - 1] != s.target for r in c.rejected)
        assert task_candidates.candidate_answers(s) == [str(i + 1) for i in range(len(s.candidates))]
        assert task_candidates.matched_candidate(s, c.chosen) == (s.candidates.index(s.target), "number")


def test_a_number_format_sample_scores_and_explains_by_number(embedded_tokenizer):
    s = Sample(id="x", task="candidates", domain="movies", prefix="Seen: Heat.\n",
               comparisons=[], candidates=["Alien", "Jaws", "Up"], target="Jaws", answer_format="number")
    from prefrec.samples import Comparison

    s.comparisons = [Comparison(question="Which one?\n1. Alien\n2. Jaws\n3. Up\nAnswer with the number only.",
                                chosen="2", rejected=["1", "3"])]
    model = make_tiny_lm(embedded_tokenizer, seed=0)
    model.eval()
    (row,) = task_candidates.score_candidates(model, embedded_tokenizer, [s], progress=False)
    assert row["target_index"] == 1 and len(row["rank_scores"]) == 3
    # the scores are the log-probs of the numbers "1", "2", "3" as answers (checked against the trees themselves)
    trees = task_candidates.candidate_trees(embedded_tokenizer, [s])
    want = [embedded_tokenizer(x, add_special_tokens=False)["input_ids"] for x in ("1", "2", "3")]
    assert [r[:len(w)] for r, w in zip(trees[0].branches[0].responses, want)] == want
    questions, responses, positive = tasks.task("candidates").responses(s)
    assert responses == [["2", "1", "3"]] and positive == [[True, False, False]]
    assert torch.isfinite(torch.tensor(row["rank_scores"])).all()
