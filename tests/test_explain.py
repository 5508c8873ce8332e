"""Per-token conditional probabilities (DMPO §6.4, Figures 7 and 8), checked against the naive scoring path."""

import json
import math
import re

import numpy as np
import pytest
import torch
from conftest import make_tiny_lm
from typer.testing import CliRunner

from prefrec import prompts
from prefrec.errors import UserError
from prefrec.samples import Comparison, Sample, write_samples
from prefrec.scoring.encoding import encode_sample, encode_texts
from prefrec.scoring.packing import naive_response_logps
from prefrec.tasks import candidates as task_candidates
from prefrec.tasks import pairwise as task_pairwise
from prefrec.serving.explain import (
    compare_models,
    explain_sample,
    parse_model_spec,
    render_html,
    token_pieces,
    write_explanation,
)

HISTORY = ["Star Wars (1977)", "Fargo (1996)", "Amélie (2001)"]
EVIL = '<script>alert("x")</script> & Co (1999)'


def pairwise_sample(sid, pos, negs, domain="movies"):
    return Sample(id=sid, task="pairwise", domain=domain, prefix=prompts.history_prefix(domain, HISTORY),
                  comparisons=[Comparison(question=task_pairwise.title_question(domain, pos, n),
                                          chosen=task_pairwise.format_ordering(pos, n),
                                          rejected=[task_pairwise.format_ordering(n, pos)]) for n in negs],
                  history=list(HISTORY), candidates=[pos, *negs], target=pos)


def candidates_sample(sid, target, others):
    shown = [others[0], target, *others[1:]]
    return Sample(id=sid, task="candidates", domain="movies", prefix=prompts.history_prefix("movies", HISTORY),
                  comparisons=[Comparison(question=task_candidates.title_question("movies", shown), chosen=target,
                                          rejected=others[:2])],
                  history=list(HISTORY), candidates=shown, target=target)


def naive_token_logps(model, tok, sample):
    """Per-token log-probs of [chosen, *rejected] of each comparison, one full sequence per response."""
    tree = encode_sample(tok, sample, which="all")
    with torch.no_grad():
        s = naive_response_logps(model, [tree], per_token=True)
    return tree, s


def test_token_probs_are_exp_logps_and_multiply_to_the_response_probability(tiny_lm):
    model, tok = tiny_lm
    sample = pairwise_sample("s1", "Heat (1995)", ["Babe (1995)", EVIL])
    e = explain_sample(model, tok, sample, label="tiny")
    tree, naive = naive_token_logps(model, tok, sample)
    responses = [r for g in e["groups"] for r in g["responses"]]
    assert len(responses) == len(naive.index) == 4
    for r, (t, b, i), ref_tok, ref_sum in zip(responses, naive.index, naive.token_logps, naive.summed):
        ids = tree.branches[b].responses[i]
        assert [x["id"] for x in r["tokens"]] == ids
        assert r["positive"] == (i == 0)
        p = np.array([x["p"] for x in r["tokens"]])
        lp = np.array([x["logp"] for x in r["tokens"]])
        assert np.allclose(p, np.exp(lp), rtol=1e-12)
        assert np.all((p > 0) & (p <= 1))
        assert np.allclose(lp, ref_tok.double().numpy(), atol=2e-4)
        # Π_t p_t = exp(logp(y|x)) of the independent naive path (compared in log space: the product is ~1e-80)
        assert math.log(math.prod(p)) == pytest.approx(float(ref_sum), abs=1e-3)
        assert r["logp"] == pytest.approx(float(ref_sum), abs=1e-3)
        assert r["tokens"][-1]["special"] and not any(x["special"] for x in r["tokens"][:-1])
        assert r["mean_p"] == pytest.approx(float(p[:-1].mean()))


def test_token_pieces_rebuild_the_text(embedded_tokenizer):
    tok = embedded_tokenizer
    text = "Amélie (2001), 東京物語 (1953) – Café"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = token_pieces(tok, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == tok.decode(ids)
    assert "\ufffd" not in "".join(pieces)


def test_candidates_sample_scores_every_shown_title_target_first(tiny_lm):
    model, tok = tiny_lm
    others = ["Babe (1995)", "Heat (1995)", "Fargo (1996)", "Casino (1995)"]
    sample = candidates_sample("c1", "Toy Story (1995)", others)
    e = explain_sample(model, tok, sample)
    (group,) = e["groups"]
    texts = [r["text"] for r in group["responses"]]
    assert texts[0] == "Toy Story (1995)" and group["responses"][0]["positive"]
    assert sorted(texts[1:]) == sorted(others) and not any(r["positive"] for r in group["responses"][1:])
    tree = encode_texts(tok, sample.prefix, [sample.comparisons[0].question], [texts])
    with torch.no_grad():
        ref = naive_response_logps(model, [tree]).summed
    assert [r["logp"] for r in group["responses"]] == pytest.approx(ref.tolist(), abs=1e-3)


def test_html_escapes_untrusted_titles(tiny_lm):
    model, tok = tiny_lm
    sample = pairwise_sample("<img src=x onerror=alert(1)>", EVIL, ["Babe (1995)"])
    sample.history = sample.history + ["</title><script>bad()</script>"]
    page = render_html([explain_sample(model, tok, sample, label="<b>m</b>")])
    assert "<script" not in page.lower() and "<img" not in page and "<b>m</b>" not in page
    assert "&lt;script&gt;" in page and "&lt;img src=x" in page and "&lt;b&gt;m&lt;/b&gt;" in page
    assert "&amp; Co" in page


def test_write_explanation_files(tmp_path, tiny_lm):
    model, tok = tiny_lm
    sample = pairwise_sample("s2", "Heat (1995)", ["Babe (1995)", "Casino (1995)", "Fargo (1996)"])
    other = make_tiny_lm(tok, seed=3)
    exps = [explain_sample(model, tok, sample, label="a"), explain_sample(other, tok, sample, label="b")]
    paths = write_explanation(exps, tmp_path)
    assert open(paths["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    data = json.loads(open(paths["json"]).read())
    assert [x["model"] for x in data["explanations"]] == ["a", "b"] and "created" in data and "versions" in data
    page = open(paths["html"], encoding="utf-8").read()
    # every token of every response of both models is on the page, with its probability
    n_tokens = sum(len(r["tokens"]) for e in exps for g in e["groups"] for r in g["responses"])
    assert len(re.findall(r'class="t( sp)?"', page)) == n_tokens


def test_compare_models_matches_independent_means(tmp_path, embedded_tokenizer):
    tok = embedded_tokenizer
    samples = [pairwise_sample(f"p{i}", pos, negs) for i, (pos, negs) in enumerate([
        ("Heat (1995)", ["Babe (1995)", "Casino (1995)"]),
        ("Fargo (1996)", ["Toy Story (1995)", "Se7en (1995)"]),
        ("Alien (1979)", ["Jaws (1975)", "Rocky (1976)"])])]
    path = tmp_path / "test.jsonl"
    write_samples(path, samples)
    models = {"zero-shot": (make_tiny_lm(tok, seed=0), tok), "sft": (make_tiny_lm(tok, seed=1), tok)}
    paths = compare_models(["zero-shot=unused", "sft=unused"], path, tmp_path / "out", limit=2, loaded=models,
                           max_tokens_per_batch=200)  # one tree per batch
    result = json.loads(open(paths["json"]).read())
    assert result["n_samples"] == 2
    special = set(tok.all_special_ids)
    for row in result["models"]:
        model = models[row["label"]][0]
        pos, neg = [], []
        for s in samples[:2]:
            tree, naive = naive_token_logps(model, tok, s)
            mp, mn = [], []
            for (t, b, i), lps in zip(naive.index, naive.token_logps):
                ids = tree.branches[b].responses[i]
                m = np.mean([math.exp(lp) for tid, lp in zip(ids, lps.tolist()) if tid not in special])
                (mp if i == 0 else mn).append(m)
            pos.append(np.mean(mp))
            neg.append(np.mean(mn))
        assert row["positive"] == pytest.approx(np.mean(pos), rel=1e-3)
        assert row["negative"] == pytest.approx(np.mean(neg), rel=1e-3)
        assert row["gap"] == pytest.approx(np.mean(pos) - np.mean(neg), rel=1e-3, abs=1e-12)
        assert row["n"] == 2
    md = open(paths["md"], encoding="utf-8").read()
    assert "| zero-shot |" in md and "| sft |" in md
    assert open(paths["png"], "rb").read(4) == b"\x89PNG"


def test_parse_model_spec(tmp_path):
    assert parse_model_spec("sft+dmpo=runs/dmpo") == ("sft+dmpo", "runs/dmpo")
    assert parse_model_spec("embedded") == ("embedded", "embedded")
    odd = tmp_path / "a=b"
    odd.mkdir()
    assert parse_model_spec(str(odd)) == (str(odd), str(odd))


def test_cli_explain_and_compare(tmp_path, embedded_tokenizer):
    from test_rank import save_tiny_model

    from prefrec.cli import app

    tok = embedded_tokenizer
    model_dir = tmp_path / "tiny"
    save_tiny_model(model_dir, tok)
    path = tmp_path / "test.jsonl"
    write_samples(path, [pairwise_sample("p0", "Heat (1995)", ["Babe (1995)"]),
                       candidates_sample("c0", "Toy Story (1995)", ["Babe (1995)", "Heat (1995)"])])
    runner = CliRunner()
    res = runner.invoke(app, ["explain", f"tiny={model_dir}", "--samples", str(path), "--index", "1",
                              "--out", str(tmp_path / "ex")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ex" / "explanation-c0.html").is_file() and (tmp_path / "ex" / "explanation-c0.png").is_file()
    res = runner.invoke(app, ["explain", str(model_dir), "--samples", str(path), "--index", "5"])
    assert res.exit_code == 2 and "--index 5" in res.output
    res = runner.invoke(app, ["explain", f"a={model_dir}", f"b={model_dir}", "--samples", str(path), "--compare",
                              "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "cmp" / "conditional_probs.json").read_text())["models"]
    assert [r["label"] for r in rows] == ["a", "b"] and rows[0]["positive"] == rows[1]["positive"]
    with pytest.raises(UserError):
        compare_models(["x"], tmp_path / "nope.jsonl", tmp_path / "o")
