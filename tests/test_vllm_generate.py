"""prefrec.scoring.vllm_generate: the optional vLLM generation backend. Its refusals run everywhere; the
comparison with transformers' greedy generation runs only where vLLM and a CUDA GPU are (skipped otherwise)."""

import importlib.util
import sys

import pytest
import torch
from test_evaluate import candidate_samples

from prefrec.errors import UserError
from prefrec.evaluation import evaluate as ev
from prefrec.scoring import generation
from prefrec.tasks import candidates as task_candidates
from prefrec.scoring.vllm_generate import require_vllm


def test_missing_vllm_is_one_clear_error_before_any_work(monkeypatch, tiny_lm):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(UserError, match="pip install vllm"):
        require_vllm()
    calls = []
    monkeypatch.setattr(ev, "_eval_samples", lambda *a, **k: calls.append(a))
    with pytest.raises(UserError, match="pip install vllm"):
        ev.evaluate(tiny_lm, candidate_samples(), gen_backend="vllm", progress=False)
    assert not calls  # refused before reading samples or scoring


def test_unknown_backend_and_unsupported_combinations(tiny_lm):
    model, tok = tiny_lm
    with pytest.raises(UserError, match="expected one of transformers, vllm"):
        ev.evaluate(tiny_lm, candidate_samples(), gen_backend="tgi", progress=False)
    with pytest.raises(UserError, match="transformers backend only"):
        generation.generate_answers(model, tok, candidate_samples(), backend="vllm", progress=False,
                                   tries=task_candidates.answer_tries(tok, candidate_samples()))


def test_cli_names_the_backend(tmp_path):
    from typer.testing import CliRunner

    from prefrec.cli import app

    res = CliRunner().invoke(app, ["eval", "embedded", "--samples", str(tmp_path), "--gen-backend", "tgi"])
    assert res.exit_code == 2 and "generation backend 'tgi'" in res.output


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None or not torch.cuda.is_available(),
                    reason="needs vLLM and a CUDA GPU")
def test_vllm_answers_equal_transformers_greedy(embedded_lm):
    model, tok = embedded_lm
    samples = candidate_samples()
    try:
        model.to("cuda")
        hf = generation.generate_answers(model, tok, samples, max_new_tokens=16, progress=False)
        vl = generation.generate_answers(model, tok, samples, max_new_tokens=16, progress=False, backend="vllm")
    finally:
        model.to("cpu")  # the fixture is shared
    assert sum(a == b for a, b in zip(hf, vl)) >= len(samples) - 1  # a tie within kernel rounding may differ
