"""The token budget shared by rank, serve, explain and evaluation (prefrec.scoring.budget): min(model context, cap)."""

import json

import pytest
import torch

from prefrec.samples import Comparison, Sample
from prefrec.scoring.budget import (
    Budget,
    TokenBudgetError,
    check_tokens,
    fit_history,
    model_context,
    token_budget,
)


def test_budget_is_the_smaller_of_context_and_cap(tiny_lm):
    model, _ = tiny_lm
    assert model_context(model) == 2048
    assert token_budget(model) == Budget(2048, "model context 2048")
    assert token_budget(model, 100) == Budget(100, "min of model context 2048 and max_tokens 100")
    assert token_budget(model, 5000).tokens == 2048
    with pytest.raises(TokenBudgetError, match=r"x needs 101 tokens; the limit is 100 tokens \(min of model context"):
        check_tokens(101, token_budget(model, 100), "x")


@pytest.mark.parametrize("n_history,budget", [(10, 1000), (10, 57), (10, 55), (1, 100), (10, 50)])
def test_fit_history_is_the_largest_k_that_fits(n_history, budget):
    size = lambda k: 40 + 2 * k  # noqa: E731 - tokens grow with the titles kept
    brute = max((k for k in range(1, n_history + 1) if size(k) <= budget), default=None)
    if brute is None:
        with pytest.raises(TokenBudgetError, match="with only 1 history title"):
            fit_history(size, n_history, Budget(budget, "test"))
    else:
        assert fit_history(size, n_history, Budget(budget, "test")) == brute


def _long_sample(n_words=3000):
    return Sample(id="long-1", task="candidates", domain="movies", prefix="word " * n_words,
                  comparisons=[Comparison(question="Which one?", chosen="A", rejected=["B"])], candidates=["A", "B"],
                  target="A")


def test_explain_refuses_a_sample_over_the_model_context(tiny_lm):
    from prefrec.serving.explain import explain_sample

    model, tok = tiny_lm
    with pytest.raises(TokenBudgetError, match=r"sample long-1 needs \d+ tokens; the limit is 2048 tokens"):
        explain_sample(model, tok, _long_sample())
    assert explain_sample(model, tok, _long_sample(10))["sample_id"] == "long-1"


def test_evaluation_of_a_peer_file_refuses_trees_over_the_budget(tmp_path, tiny_lm):
    from prefrec.data.peer import load_candidates
    from prefrec.evaluation.evaluate import evaluate
    from prefrec.scoring.encoding import encode_sample
    from prefrec.scoring.packing import score_trees

    model, tok = tiny_lm
    rec = {"historyList": "::".join(f"A long history title {i} (19{i % 100:02d})" for i in range(400)),
           "itemList": ["Heat (1995)", "Babe (1995)"], "trueSelection": "Heat (1995)"}
    (tmp_path / "peer.json").write_text(json.dumps([rec]), encoding="utf-8")
    samples = load_candidates(tmp_path / "peer.json")
    with pytest.raises(TokenBudgetError, match=r"candidates: item 0 .* the limit is 2048 tokens \(model context"):
        evaluate((model, tok), samples, out=tmp_path / "out", generate=False, progress=False)
    assert not (tmp_path / "out").exists()  # refused before anything was written
    short = [encode_sample(tok, _long_sample(5))]
    assert score_trees(model, short, progress=False).summed.shape == torch.Size([2])
    with pytest.raises(TokenBudgetError, match="max_tokens 5"):
        score_trees(model, short, progress=False, max_tokens=5)
