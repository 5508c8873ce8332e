"""rank(): candidates-task likelihood ranking, checked against the naive (one full sequence per title) path."""

import json

import pytest
import torch
from conftest import make_tiny_lm
from typer.testing import CliRunner

from prefrec import prompts
from prefrec.errors import UserError
from prefrec.scoring.encoding import encode_texts
from prefrec.scoring.packing import naive_response_logps
from prefrec.serving.rank import RankPrompt, build_tree, clean_titles, rank, read_titles
from prefrec.tasks import candidates as task_candidates
from prefrec.tasks import pairwise as task_pairwise

HISTORY = ["Star Wars (1977)", "Fargo (1996)", "Toy Story (1995)"]
CANDIDATES = ["Babe (1995)", "Heat (1995)", "Return of the Jedi (1983)", "Girl, Interrupted (1999)",
              "Pulp Fiction (1994)"]


def save_tiny_model(folder, tokenizer, seed=0):
    """A tiny random Llama saved as a plain Hugging Face folder (what `load_model(path)` reads)."""
    model = make_tiny_lm(tokenizer, seed=seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def save_tiny_run(run_dir, base_dir, base_model, seed=1):
    """A prefrec run folder (run.json + adapter/) with a LoRA adapter whose weights are not the identity."""
    from prefrec.model import add_lora

    peft_model = add_lora(base_model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # B starts at zero (identity adapter); make it change the outputs
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    peft_model.eval()
    peft_model.save_pretrained(run_dir / "adapter")
    (run_dir / "run.json").write_text(json.dumps({"base_model": str(base_dir), "stages": []}))
    return peft_model


def tree_of(tokenizer, history, candidates, domain="movies"):
    prefix, question = prompts.history_prefix(domain, history), task_candidates.title_question(domain, candidates)
    return encode_texts(tokenizer, prefix, [question], [candidates])


def naive_scores(model, tokenizer, history, candidates, domain="movies"):
    tree = tree_of(tokenizer, history, candidates, domain)
    with torch.no_grad():
        return naive_response_logps(model, [tree]).summed.double().tolist()


def test_prompt_is_the_candidates_protocol_prompt(embedded_tokenizer):
    got = build_tree(embedded_tokenizer, HISTORY, CANDIDATES, "games", RankPrompt())
    want = tree_of(embedded_tokenizer, HISTORY, CANDIDATES, "games")
    assert (got.prefix, got.branches) == (want.prefix, want.branches)


def test_scores_equal_naive_path_and_order_is_by_score(tiny_lm):
    model, tok = tiny_lm
    ranking = rank(model, tok, HISTORY, CANDIDATES)
    expected = dict(zip(CANDIDATES, naive_scores(model, tok, HISTORY, CANDIDATES)))
    assert sorted(r["title"] for r in ranking) == sorted(CANDIDATES)  # titles in, titles out
    for r in ranking:
        assert r["score"] == pytest.approx(expected[r["title"]], abs=1e-3)
        n_tokens = len(tok(r["title"], add_special_tokens=False)["input_ids"]) + 1  # + end-of-turn
        assert r["n_tokens"] == n_tokens
        assert r["score_per_token"] == pytest.approx(r["score"] / n_tokens, abs=1e-4)
    assert [r["rank"] for r in ranking] == list(range(1, len(CANDIDATES) + 1))
    assert [r["title"] for r in ranking] == sorted(CANDIDATES, key=lambda t: -expected[t])


def test_duplicates_removed_top_and_whitespace(tiny_lm):
    model, tok = tiny_lm
    cands = ["  Heat (1995) ", "Babe (1995)", "Heat (1995)", "Babe (1995)"]
    full = rank(model, tok, HISTORY, cands)
    assert sorted(r["title"] for r in full) == ["Babe (1995)", "Heat (1995)"]
    # the deduplicated list is what the prompt shows, so the scores are those of the clean list
    clean = ["Heat (1995)", "Babe (1995)"]
    expected = dict(zip(clean, naive_scores(model, tok, HISTORY, clean)))
    assert all(r["score"] == pytest.approx(expected[r["title"]], abs=1e-3) for r in full)
    top = rank(model, tok, HISTORY, cands, top=1)
    assert top == full[:1]


def test_max_history_keeps_the_last_titles(tiny_lm):
    model, tok = tiny_lm
    cut = rank(model, tok, HISTORY, CANDIDATES, max_history=1)
    same = rank(model, tok, HISTORY[-1:], CANDIDATES)
    assert [(r["title"], r["score"]) for r in cut] == [(r["title"], r["score"]) for r in same]


@pytest.mark.parametrize("history,candidates,kwargs,needle", [
    ([], CANDIDATES, {}, "history"),
    (HISTORY, [], {}, "candidates"),
    (HISTORY, ["ok", ""], {}, "candidates[1]"),
    (HISTORY, ["ok", 3], {}, "candidates[1]"),
    (["a\nb"], CANDIDATES, {}, "history[0]"),
    ("Star Wars", CANDIDATES, {}, "history"),
    (HISTORY, CANDIDATES, {"domain": "cars"}, "domain"),
    (HISTORY, CANDIDATES, {"top": 0}, "top"),
])
def test_bad_input_names_the_field(tiny_lm, history, candidates, kwargs, needle):
    model, tok = tiny_lm
    with pytest.raises(UserError, match=__import__("re").escape(needle)):
        rank(model, tok, history, candidates, **kwargs)


def test_read_titles(tmp_path):
    (tmp_path / "h.txt").write_text("Star Wars (1977)\n\n  Fargo (1996)  \nStar Wars (1977)\n", encoding="utf-8")
    assert read_titles(tmp_path / "h.txt", "history") == ["Star Wars (1977)", "Fargo (1996)"]
    (tmp_path / "c.json").write_text(json.dumps(["Amélie (2001)", "Heat (1995)"]), encoding="utf-8")
    assert read_titles(tmp_path / "c.json", "candidates") == ["Amélie (2001)", "Heat (1995)"]
    (tmp_path / "bad.json").write_text('{"a": 1}', encoding="utf-8")
    with pytest.raises(UserError, match="JSON list"):
        read_titles(tmp_path / "bad.json", "candidates")
    with pytest.raises(UserError, match="no such file"):
        read_titles(tmp_path / "missing.txt", "history")
    assert clean_titles(("a", " a", "b"), "x") == ["a", "b"]


def test_cli_rank_plain_model_and_run_folder(tmp_path, embedded_tokenizer):
    from prefrec.cli import app

    tok = embedded_tokenizer
    base_dir = tmp_path / "tiny"
    base = save_tiny_model(base_dir, tok)
    run_dir = tmp_path / "run"
    peft_model = save_tiny_run(run_dir, base_dir, make_tiny_lm(tok))
    (tmp_path / "h.txt").write_text("\n".join(HISTORY), encoding="utf-8")
    (tmp_path / "c.json").write_text(json.dumps(CANDIDATES), encoding="utf-8")
    runner = CliRunner()
    for name, model in ((str(base_dir), base), (str(run_dir), peft_model)):
        res = runner.invoke(app, ["rank", name, "--history", str(tmp_path / "h.txt"),
                                  "--candidates", str(tmp_path / "c.json"), "--top", "3"])
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        expected = rank(model, tok, HISTORY, CANDIDATES, top=3)
        assert [r["title"] for r in out["ranking"]] == [r["title"] for r in expected]
        assert [r["score"] for r in out["ranking"]] == pytest.approx([r["score"] for r in expected], abs=1e-3)
    # the adapter changes the scores, so the run folder really was loaded with it
    assert rank(base, tok, HISTORY, CANDIDATES)[0]["score"] != pytest.approx(
        rank(peft_model, tok, HISTORY, CANDIDATES)[0]["score"], abs=1e-3)
    args = ["rank", str(base_dir), "--history", str(tmp_path / "h.txt"), "--candidates", str(tmp_path / "c.json"),
            "--out"]
    assert runner.invoke(app, args + [str(tmp_path / "r.json")]).exit_code == 0
    res = runner.invoke(app, args + [str(tmp_path / "r.json")])  # an existing --out FILE needs --force (#43)
    assert res.exit_code == 2 and "pass --force" in res.output, res.output
    assert runner.invoke(app, args + [str(tmp_path / "r.json"), "--force"]).exit_code == 0
    res = runner.invoke(app, args + [str(tmp_path / "h.txt"), "--force"])  # and then only its own file
    assert res.exit_code == 2 and "was not written by `prefrec rank`" in res.output, res.output
    assert (tmp_path / "h.txt").read_text(encoding="utf-8") == "\n".join(HISTORY)
    res = runner.invoke(app, ["rank", str(base_dir), "--history", str(tmp_path / "missing.txt"),
                              "--candidates", str(tmp_path / "c.json")])
    assert res.exit_code == 2 and "missing.txt" in res.output


# ---- token budget, chunked scoring, input files, model names (issue 15) ----

def test_history_is_cut_oldest_first_to_the_token_budget(tiny_lm):
    from prefrec.scoring.budget import TokenBudgetError

    model, tok = tiny_lm
    history = [f"Some long film title number {i} ({1950 + i})" for i in range(8)]
    n = {k: tree_of(tok, history[8 - k:], CANDIDATES).n_tokens() for k in range(1, 9)}  # brute force: the tree's size with the last k titles
    budget = n[5]  # exactly five titles fit
    cut = rank(model, tok, history, CANDIDATES, max_tokens=budget)
    same = rank(model, tok, history[-5:], CANDIDATES, max_tokens=None)
    assert [(r["title"], r["score"]) for r in cut] == [(r["title"], r["score"]) for r in same]
    with pytest.raises(TokenBudgetError, match=f"the limit is {n[1] - 1} tokens .*max_tokens {n[1] - 1}"):
        rank(model, tok, history, CANDIDATES, max_tokens=n[1] - 1)
    # the model's context (2048 here) caps the budget too
    with pytest.raises(TokenBudgetError, match="model context 2048"):
        rank(model, tok, history, [f"{'y' * 250} {i}" for i in range(60)], max_tokens=None)


def test_chunked_scoring_matches_packed_forward_and_bounds_the_mask(tiny_lm, monkeypatch):
    from prefrec.scoring.packing import PackedBatch, response_logps
    from prefrec.scoring.packing import chunked_response_logps as score_steps
    from prefrec.serving.rank import run_steps

    model, tok = tiny_lm
    tree = tree_of(tok, HISTORY, CANDIDATES)
    with torch.inference_mode():
        packed = response_logps(model, [tree]).summed.double().tolist()
    shapes = []
    real = PackedBatch.attention_mask

    def spy(self, *a, **kw):
        m = real(self, *a, **kw)
        shapes.append(tuple(m.shape))
        return m

    monkeypatch.setattr(PackedBatch, "attention_mask", spy)
    steps = score_steps(model, tree, chunk_tokens=32)
    done = []
    while True:
        try:
            done.append(next(steps))
        except StopIteration as end:
            chunked = end.value
            break
    L = tree.n_tokens()
    assert done == list(range(32, L, 32)) + [L]  # a step per chunk: a caller can stop between them
    assert chunked == pytest.approx(packed, abs=1e-4)
    assert max(s[2] for s in shapes) <= 32 and all(s[3] <= L for s in shapes)  # never L × L
    assert run_steps(score_steps(model, tree, chunk_tokens=L + 5)) == pytest.approx(packed, abs=1e-4)


def test_read_titles_decides_by_content(tmp_path):
    cands = ["Amélie (2001)", "Heat (1995)"]
    (tmp_path / "list.jsonl").write_text(json.dumps(cands), encoding="utf-8")  # a JSON list saved as .jsonl
    assert read_titles(tmp_path / "list.jsonl", "candidates") == cands
    (tmp_path / "lines.jsonl").write_text("\n".join(json.dumps(c) for c in cands) + "\n", encoding="utf-8")
    assert read_titles(tmp_path / "lines.jsonl", "candidates") == cands
    (tmp_path / "list.txt").write_text(json.dumps(cands, indent=1), encoding="utf-8")
    assert read_titles(tmp_path / "list.txt", "candidates") == cands
    (tmp_path / "rec.txt").write_text("[REC] (2007)\nHeat (1995)\n", encoding="utf-8")  # a title, not JSON
    assert read_titles(tmp_path / "rec.txt", "history") == ["[REC] (2007)", "Heat (1995)"]
    (tmp_path / "bom.txt").write_text("Heat (1995)\n", encoding="utf-8-sig")
    assert read_titles(tmp_path / "bom.txt", "history") == ["Heat (1995)"]
    (tmp_path / "latin1.txt").write_bytes("Amélie (2001)\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1\.txt: not UTF-8 text \(byte 0xe9 at offset 2\)"):
        read_titles(tmp_path / "latin1.txt", "history")
    (tmp_path / "obj.jsonl").write_text('{"a": 1}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"obj\.jsonl:1: expected a JSON string"):
        read_titles(tmp_path / "obj.jsonl", "history")


def test_cli_rank_mistyped_model_and_budget(tmp_path, embedded_tokenizer):
    from prefrec.cli import app

    (tmp_path / "h.txt").write_text("\n".join(HISTORY), encoding="utf-8")
    (tmp_path / "c.jsonl").write_text(json.dumps(CANDIDATES), encoding="utf-8")
    runner = CliRunner()
    res = runner.invoke(app, ["rank", str(tmp_path / "typo"), "--history", str(tmp_path / "h.txt"),
                              "--candidates", str(tmp_path / "c.jsonl")])
    assert res.exit_code == 2 and "no such folder" in res.output and str(tmp_path / "typo") in res.output
    save_tiny_model(tmp_path / "tiny", embedded_tokenizer)
    res = runner.invoke(app, ["rank", str(tmp_path / "tiny"), "--history", str(tmp_path / "h.txt"),
                              "--candidates", str(tmp_path / "c.jsonl"), "--max-tokens", "40"])
    assert res.exit_code == 2 and "max_tokens 40" in res.output
    res = runner.invoke(app, ["rank", str(tmp_path / "tiny"), "--history", str(tmp_path / "h.txt"),
                              "--candidates", str(tmp_path / "c.jsonl")])
    assert res.exit_code == 0 and json.loads(res.stdout)["n_candidates"] == len(CANDIDATES)


# ---- rank follows the run's task (issue 30) ----

def _run_with_task(tmp_path, task, answers="title", hybrid=False):
    """A run folder whose config.yaml points at a data folder whose stats.json names the task."""
    from prefrec.results import RUN_JSON

    data = tmp_path / f"data-{task}-{answers}"
    data.mkdir()
    (data / "stats.json").write_text(json.dumps({"task": task, "protocol": {"answers": answers,
                                                                            "item_stats": hybrid}}))
    run = tmp_path / f"run-{task}-{answers}"
    (run / "adapter").mkdir(parents=True)
    (run / RUN_JSON).write_text(json.dumps({"base_model": "embedded", "stages": ["sft"]}))
    (run / "config.yaml").write_text(f"data: {{dir: {data}}}\n")
    return run


def test_the_ranker_is_the_runs_task(tmp_path):
    from prefrec.serving.rank import ranker_of

    assert ranker_of("embedded") == RankPrompt()
    assert ranker_of(_run_with_task(tmp_path, "pairwise", "letter")) == RankPrompt("pairwise", "letter")
    hybrid = ranker_of(_run_with_task(tmp_path, "candidates", hybrid=True))
    assert hybrid.task == "candidates" and "titles only" in hybrid.notes[0]
    with pytest.raises(UserError, match="yesno run cannot rank"):
        ranker_of(_run_with_task(tmp_path, "yesno"))


@pytest.mark.parametrize("answers", ["title", "letter"])
def test_a_pairwise_run_ranks_by_comparing_every_pair_in_both_orders(tiny_lm, answers):
    """score(c) = mean over the other candidates d, in both shown orders, of logp(c preferred) − logp(d preferred),
    each log-prob from the naive path (one full sequence per response)."""
    model, tok = tiny_lm
    cands = CANDIDATES[:4]
    got = rank(model, tok, HISTORY, cands, ranker=RankPrompt("pairwise", answers))
    want = {c: [] for c in cands}
    for a in cands:
        for b in cands:
            if a == b:
                continue
            q = task_pairwise.TASK.format(answers).question("movies", a, b)
            resp = ["A", "B"] if answers == "letter" else [task_pairwise.format_ordering(a, b), task_pairwise.format_ordering(b, a)]
            tree = encode_texts(tok, prompts.history_prefix("movies", HISTORY), [q], [resp])
            with torch.no_grad():
                s = naive_response_logps(model, [tree]).summed.double().tolist()
            want[a].append(s[0] - s[1])
            want[b].append(s[1] - s[0])
    means = {c: sum(v) / len(v) for c, v in want.items()}
    assert {r["title"]: r["score"] for r in got} == pytest.approx(means, abs=2e-3)
    assert [r["title"] for r in got] == sorted(cands, key=lambda c: -means[c])
    assert all(r["comparisons"] == 6 for r in got)


def test_order_by_mean_sorts_by_score_per_token(tiny_lm):
    model, tok = tiny_lm
    by_mean = rank(model, tok, HISTORY, CANDIDATES, order_by="mean")
    assert [r["score_per_token"] for r in by_mean] == sorted((r["score_per_token"] for r in by_mean), reverse=True)
    with pytest.raises(UserError, match="order_by"):
        rank(model, tok, HISTORY, CANDIDATES, order_by="max")


def test_cli_rank_checks_the_domain_before_loading_the_model(tmp_path, monkeypatch):
    import prefrec.model
    from prefrec.cli import app

    def refuse(*a, **kw):
        raise AssertionError("the model must not load before the domain is checked")

    monkeypatch.setattr(prefrec.model, "load_model", refuse)
    (tmp_path / "h.txt").write_text("\n".join(HISTORY), encoding="utf-8")
    (tmp_path / "c.txt").write_text("\n".join(CANDIDATES), encoding="utf-8")
    res = CliRunner().invoke(app, ["rank", "embedded", "--history", str(tmp_path / "h.txt"), "--candidates",
                                   str(tmp_path / "c.txt"), "--domain", "movie"])
    assert res.exit_code == 2 and "--domain 'movie': expected one of" in res.output
    assert "did you mean 'movies'?" in res.output
