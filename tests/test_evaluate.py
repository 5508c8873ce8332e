"""evaluate() end to end on a tiny random model with hand-made samples, checked against independent computations:
full-sequence log-probs (naive path), full-vocabulary softmax from model(...).logits, unbatched generation."""

import json

import numpy as np
import pytest
import torch

from prefrec.errors import UserError
from prefrec.evaluation import evaluate as ev
from prefrec.scoring import generation
from prefrec.tasks import candidates as task_candidates
from prefrec.tasks.metrics import pairwise_metrics, ranking_metrics, yesno_metrics
from prefrec.samples import Comparison, Sample, write_samples
from prefrec.scoring.encoding import encode_texts
from prefrec.scoring.packing import naive_response_logps

CANDS = ["Star Wars (1977)", "Star Wars: Episode V (1980)", "Fargo (1996)", "Up (2009)", "Heat (1995)"]


def pairwise_samples():
    def comp(a, b):
        return Comparison(question=f"Rank {a} and {b}.", chosen=f"{a}, {b}", rejected=[f"{b}, {a}"])

    return [
        Sample(id="p0", task="pairwise", domain="movies", prefix="The user liked Alien (1979) and Heat (1995).\n",
               comparisons=[comp("Fargo (1996)", "Up (2009)"), comp("Fargo (1996)", "Cars (2006)")]),
        Sample(id="p1", task="pairwise", domain="movies", prefix="The user liked Up (2009).\n",
               comparisons=[comp("Cars (2006)", "Heat (1995)")]),
        Sample(id="p2", task="pairwise", domain="movies", prefix="The user disliked Jaws (1975).\n",
               comparisons=[comp("Babe (1995)", "Jaws 2 (1978)")]),
    ]


def candidate_samples():
    out = []
    for i, tgt in enumerate(CANDS[:3]):
        out.append(Sample(id=f"c{i}", task="candidates", domain="movies", prefix=f"History {i}: Alien (1979).\n",
                          comparisons=[Comparison(question="Pick one: " + "; ".join(CANDS), chosen=tgt,
                                                  rejected=[c for c in CANDS if c != tgt][:3])],
                          candidates=list(CANDS), target=tgt))
    return out


def yesno_samples():
    return [Sample(id=f"y{i}", task="yesno", domain="movies", prefix=f"The user liked film {i}. Will they like X?",
                   comparisons=[Comparison(question="", chosen="Yes." if i % 2 else "No.",
                                           rejected=["No." if i % 2 else "Yes."])], label=i % 2)
            for i in range(4)]


def _per_sample(out):
    return [json.loads(line) for line in open(out / "per_sample.jsonl")]


def test_pairwise_against_naive_path(tiny_lm, tmp_path):
    model, tok = tiny_lm
    samples = pairwise_samples()
    res = ev.evaluate(tiny_lm, samples, out=tmp_path / "pw", progress=False, dataset="hand", seed=3)
    rows = _per_sample(tmp_path / "pw")
    s1, s2 = [], []
    for s, r in zip(samples, rows):
        tree = encode_texts(tok, s.prefix, [c.question for c in s.comparisons],
                            [[c.chosen, c.rejected[0]] for c in s.comparisons])
        with torch.no_grad():
            ref = naive_response_logps(model, [tree]).nested()[0]
        assert r["s_first"] == pytest.approx([float(b[0]) for b in ref], abs=1e-3)
        assert r["s_second"] == pytest.approx([float(b[1]) for b in ref], abs=1e-3)
        s1 += r["s_first"]
        s2 += r["s_second"]
    want = pairwise_metrics(s1, s2)
    assert res["metrics"]["auc"] == pytest.approx(want["auc"])
    assert res["metrics"]["pairwise_accuracy"] == pytest.approx(want["pairwise_accuracy"])
    assert res["metrics"]["n"] == 4  # comparisons, pooled over samples
    saved = json.loads((tmp_path / "pw" / "results.json").read_text())
    assert saved["kind"] == "eval" and saved["method"] == "zero-shot" and saved["task"] == "pairwise"
    assert saved["dataset"] == "hand" and saved["seed"] == 3 and saved["n_samples"] == 3
    assert {"git_commit", "versions", "created", "config", "model", "base_model", "beta"} <= set(saved)
    assert saved["beta"] is None and saved["k"] is None and saved["shots"] is None
    assert saved["versions"]["torch"]


def test_candidates_likelihood_against_naive_path(tiny_lm, tmp_path):
    model, tok = tiny_lm
    samples = candidate_samples()
    res = ev.evaluate(tiny_lm, samples, out=tmp_path / "c", generate=False, progress=False)
    rows = _per_sample(tmp_path / "c")
    for s, r in zip(samples, rows):
        tree = encode_texts(tok, s.prefix, [s.comparisons[0].question], [CANDS])
        with torch.no_grad():
            ref = naive_response_logps(model, [tree]).summed.numpy()
        assert r["rank_scores"] == pytest.approx(ref.tolist(), abs=1e-3)
        lengths = [len(tok(c, add_special_tokens=False)["input_ids"]) + 1 for c in CANDS]  # + end-of-turn
        assert r["rank_norm_scores"] == pytest.approx((ref / lengths).tolist(), abs=1e-3)
        assert r["target_index"] == CANDS.index(s.target)
    want = ranking_metrics(np.array([r["rank_scores"] for r in rows]), [r["target_index"] for r in rows])
    for k in ("hr@1", "hr@5", "ndcg@5", "ndcg@10", "mrr"):
        assert res["metrics"]["rank_" + k] == pytest.approx(want[k])
    assert "hr@1" not in res["metrics"]  # no generation asked


def test_candidates_generation_plumbing(tiny_lm, tmp_path, monkeypatch):
    samples = candidate_samples()
    answers = ["Star Wars (1977)", "I pick Star Wars: Episode V (1980).", "Star Wars"]  # hit, hit, ambiguous
    monkeypatch.setattr(task_candidates, "generate_answers", lambda *a, **k: list(answers))
    res = ev.evaluate(tiny_lm, samples, out=tmp_path / "g", progress=False)
    assert res["metrics"]["hr@1"] == pytest.approx(2 / 3)
    assert res["metrics"]["valid_ratio"] == pytest.approx(2 / 3)
    rows = _per_sample(tmp_path / "g")
    assert [r["rule"] for r in rows] == ["exact", "contains", "ambiguous"]
    assert [r["matched"] for r in rows] == [0, 1, None]
    assert [r["hit"] for r in rows] == [True, True, False]
    assert [r["answer"] for r in rows] == answers


def test_each_answer_is_matched_once(tiny_lm, tmp_path, monkeypatch):
    """Issue 17: rows and HR@1/ValidRatio come from one match per answer, with generation_metrics' numbers."""
    from prefrec.tasks.metrics import generation_metrics
    from prefrec.scoring import matching

    samples = candidate_samples()
    answers = ["Star Wars (1977)", "Fargo", "Star Wars"]  # hit, miss, ambiguous
    monkeypatch.setattr(task_candidates, "generate_answers", lambda *a, **k: list(answers))
    calls = []
    real = matching.match

    def counting(answer, cands):
        calls.append(answer)
        return real(answer, cands)

    monkeypatch.setattr(matching, "match", counting)
    monkeypatch.setattr(task_candidates, "match", counting)
    res = ev.evaluate(tiny_lm, samples, out=tmp_path / "g", progress=False)
    assert sorted(calls) == sorted(answers)
    cands = [task_candidates.candidate_list(s)[0] for s in samples]
    want = generation_metrics(answers, cands, [c[task_candidates.candidate_list(s)[1]] for c, s in zip(cands, samples)])
    assert {k: res["metrics"][k] for k in want} == want


def test_batched_generation_equals_one_at_a_time(tiny_lm):
    model, tok = tiny_lm
    torch.manual_seed(1)
    with torch.no_grad():  # larger weights: a random model that does not just repeat one token
        for p in model.parameters():
            p.normal_(0, 0.2)
    samples = candidate_samples()
    samples[2].prefix = samples[2].prefix * 3  # different prompt lengths: left padding matters
    one = generation.generate_answers(model, tok, samples, max_new_tokens=6, batch_size=1, progress=False)
    batched = generation.generate_answers(model, tok, samples, max_new_tokens=6, batch_size=3, progress=False)
    assert one == batched
    assert len(set(one)) > 1 and all(one)
    # and one at a time equals a plain generate() on the chat-templated prompt
    ids = tok.apply_chat_template([{"role": "user", "content": samples[0].prompt(0)}], add_generation_prompt=True,
                                  tokenize=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        g = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           max_new_tokens=6, do_sample=False, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id)
    assert tok.decode(g[0, len(ids):], skip_special_tokens=True).strip() == one[0]


def test_yesno_single_softmax_over_full_vocabulary(tiny_lm, tmp_path):
    model, tok = tiny_lm
    samples = yesno_samples()
    res = ev.evaluate(tiny_lm, samples, out=tmp_path / "y", progress=False)
    rows = _per_sample(tmp_path / "y")
    yes_id = tok("Yes.", add_special_tokens=False)["input_ids"][0]
    no_id = tok("No.", add_special_tokens=False)["input_ids"][0]
    for s, r in zip(samples, rows):
        ids = tok.apply_chat_template([{"role": "user", "content": s.prompt(0)}], add_generation_prompt=True,
                                      tokenize=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            probs = torch.softmax(model(torch.tensor([ids])).logits[0, -1].double(), dim=-1)
        assert r["p_yes"] == pytest.approx(float(probs[yes_id] / (probs[yes_id] + probs[no_id])), abs=1e-5)
        assert r["logp_yes"] == pytest.approx(float(torch.log(probs[yes_id])), abs=1e-4)
        assert r["label"] == s.label
    want = yesno_metrics([r["p_yes"] for r in rows], [s.label for s in samples])
    assert res["metrics"]["auc"] == pytest.approx(want["auc"])


def test_prepared_folder_limit_and_errors(tiny_lm, tmp_path):
    folder = tmp_path / "data"
    write_samples(folder / "test.jsonl", pairwise_samples())
    (folder / "stats.json").write_text(json.dumps({"dataset": "ml-100k", "task": "pairwise", "seed": 7}))
    res = ev.evaluate(tiny_lm, folder, out=tmp_path / "o", limit=2, progress=False)
    assert res["dataset"] == "ml-100k" and res["seed"] == 7 and res["n_samples"] == 2
    assert len(_per_sample(tmp_path / "o")) == 2
    with pytest.raises(UserError, match="valid.jsonl"):
        ev.evaluate(tiny_lm, folder, split="valid", out=tmp_path / "o2", progress=False)
    with pytest.raises(UserError, match="mixed tasks"):
        ev.evaluate(tiny_lm, pairwise_samples() + yesno_samples(), out=tmp_path / "o3", progress=False)
    bad = candidate_samples()[:1]
    bad[0].target = "Casablanca (1942)"
    with pytest.raises(UserError, match="not among"):
        ev.evaluate(tiny_lm, bad, out=tmp_path / "o4", progress=False)


def test_run_info_reads_the_last_stage(tmp_path):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"base_model": "embedded", "seed": 2,
                                              "stages": [{"method": "sft"}, {"method": "dmpo", "k": 3,
                                                                             "shots": 100, "regime": "few-shot"}]}))
    (run / "config.yaml").write_text("stages:\n- {kind: sft, beta: 0.1}\n- {kind: dmpo, beta: 0.5}\n")
    info = ev._run_info(str(run))
    assert (info["method"], info["k"], info["shots"], info["regime"], info["seed"]) == ("dmpo", 3, 100, "few-shot", 2)
    assert info["train_config"]["stages"][1] == {"kind": "dmpo", "beta": 0.5}
    assert info["beta"] == 0.5 and info["base_model"] == "embedded"
    assert ev.evaluated("embedded") == ("model", {})
    # the layout `prefrec train` writes: stage kinds, details per kind
    (run / "run.json").write_text(json.dumps({"base_model": "embedded", "seed": 1, "stages": ["sft", "sdpo"],
                                              "stage_info": {"sft": {"k": None, "train_samples": 100},
                                                             "sdpo": {"k": 3, "train_samples": 100}}}))
    info = ev._run_info(str(run))
    assert (info["method"], info["k"], info["shots"], info["seed"]) == ("sdpo", 3, 100, 1)


def test_cli_eval_and_report_on_a_saved_model(tiny_lm, tmp_path):
    from typer.testing import CliRunner

    from prefrec.cli import app

    model, tok = tiny_lm
    model_dir = tmp_path / "tiny"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    folder = tmp_path / "data"
    write_samples(folder / "test.jsonl", pairwise_samples())
    (folder / "stats.json").write_text(json.dumps({"dataset": "hand", "task": "pairwise", "seed": 0}))
    runner = CliRunner()
    r = runner.invoke(app, ["eval", str(model_dir), "--samples", str(folder), "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["method"] == "zero-shot"
    r = runner.invoke(app, ["report", str(tmp_path / "ev"), "--out", str(tmp_path / "rep"), "--bootstrap", "20"])
    assert r.exit_code == 0, r.output
    assert "hand · pairwise" in (tmp_path / "rep" / "results.md").read_text()
    r = runner.invoke(app, ["eval", str(model_dir), "--samples", str(tmp_path / "nowhere")])
    assert r.exit_code == 2
    # the user's own files in --out are never overwritten; refused before the evaluation (#43)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "results.json").write_text("the user's")
    (tmp_path / "mine" / "results.md").write_text("the user's")
    for cmd in (["eval", str(model_dir), "--samples", str(folder)], ["report", str(tmp_path / "ev")]):
        r = runner.invoke(app, cmd + ["--out", str(tmp_path / "mine")])
        assert r.exit_code == 2 and "exists and was not written by `prefrec" in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1
    assert {p.name: p.read_text() for p in (tmp_path / "mine").iterdir()} == {"results.json": "the user's",
                                                                              "results.md": "the user's"}
    r = runner.invoke(app, ["eval", str(model_dir), "--samples", str(folder), "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output  # its own earlier results: replaced
    r = runner.invoke(app, ["eval", str(model_dir)])
    assert r.exit_code == 2


def test_evaluate_puts_a_model_object_in_eval_mode_and_restores_it(embedded_tokenizer, tmp_path):
    """With dropout on (train mode), two evaluations of the same model differed; evaluate() now scores in eval mode
    and gives the model back in the mode it had."""
    from conftest import make_tiny_lm

    model = make_tiny_lm(embedded_tokenizer, seed=4)
    model.config.attention_dropout = 0.5
    for m in model.modules():
        if hasattr(m, "attention_dropout"):
            m.attention_dropout = 0.5
    model.train()
    a = ev.evaluate((model, embedded_tokenizer), pairwise_samples(), out=tmp_path / "a", progress=False)
    assert model.training
    b = ev.evaluate((model, embedded_tokenizer), pairwise_samples(), out=tmp_path / "b", progress=False)
    assert _per_sample(tmp_path / "a") == _per_sample(tmp_path / "b") and a["metrics"] == b["metrics"]
    model.eval()
    ev.evaluate((model, embedded_tokenizer), pairwise_samples(), out=tmp_path / "c", progress=False)
    assert not model.training and _per_sample(tmp_path / "c") == _per_sample(tmp_path / "a")


@pytest.mark.parametrize("plain", [True, False])
def test_plain_format_answer_is_its_first_line(tiny_lm, monkeypatch, plain):
    """A base model (plain prompt format) runs on past its answer ("Alien (1979)\\n\\"Heat (1995)\\"..."): its
    answer is the first line. A chat model's answer ends at its end-of-turn token and is kept whole."""
    import copy

    model, tok = tiny_lm
    tok = copy.deepcopy(tok)
    if plain:
        tok.chat_template = None
    text = 'Alien (1979)\n"Heat (1995)", "Fargo (1996)"'
    new = tok(text, add_special_tokens=False)["input_ids"]

    def fake_generate(input_ids, **kw):
        return torch.cat([input_ids, torch.tensor([new] * input_ids.shape[0])], dim=1)

    monkeypatch.setattr(model, "generate", fake_generate)
    (answer,) = generation.generate_answers(model, tok, candidate_samples()[:1], progress=False)
    assert answer == ("Alien (1979)" if plain else text)


def test_an_adapter_folder_or_an_export_is_labelled_as_its_run_never_as_zero_shot(tmp_path, tiny_lm):
    """`prefrec eval RUN/adapter` and eval of an export used to write method "zero-shot" (issue 30)."""
    import json as _json

    from prefrec.results import RUN_JSON

    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / RUN_JSON).write_text(_json.dumps({"base_model": "embedded", "stages": ["sft", "dmpo"], "seed": 3,
                                            "stage_info": {"dmpo": {"k": 3, "train_samples": 40}}}))
    assert ev.evaluated(run)[0] == "run" and ev.evaluated(run)[1]["method"] == "dmpo"
    kind, info = ev.evaluated(run / "adapter")
    assert kind == "adapter" and info["method"] == "dmpo" and info["k"] == 3 and info["seed"] == 3
    export = tmp_path / "export"
    export.mkdir()
    (export / "export.json").write_text(_json.dumps({"kind": "export", "run": str(run)}))
    assert ev.evaluated(export)[1]["method"] == "dmpo"
    (export / "export.json").write_text(_json.dumps({"kind": "export", "run": str(tmp_path / "gone")}))
    assert ev.evaluated(export) == ("export", {"method": "export"})
    lone = tmp_path / "lone-adapter"
    lone.mkdir()
    (lone / "adapter_config.json").write_text("{}")
    assert ev.evaluated(lone) == ("adapter", {"method": "adapter"})
    assert ev.evaluated("embedded") == ("model", {})


def test_a_run_evaluated_on_another_task_or_answer_format_is_refused_unless_allowed(tmp_path, capsys):
    """Evaluating a run on samples unlike its training data is an error naming both; with --allow-mismatch it runs
    and says so: printed and kept in results.json."""
    data = tmp_path / "pw"
    data.mkdir()
    (data / "stats.json").write_text(json.dumps({"task": "pairwise", "protocol": {"answers": "letter"}}))
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"base_model": "embedded", "stages": ["sft"]}))
    (run / "config.yaml").write_text(f"data: {{dir: {data}}}\n")
    (run / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match="trained on the pairwise task and is evaluated on candidates samples; "
                                         "--allow-mismatch"):
        ev._mismatches(run, ev.evaluated(run)[1], "candidates", {"task": "candidates"}, allow=False)
    with pytest.raises(UserError, match="trained on letter answers and is evaluated on title answers"):
        ev._mismatches(run, ev.evaluated(run)[1], "pairwise", {"task": "pairwise"}, allow=False)
    # through the command: exit 2, one line, before any model is loaded
    from typer.testing import CliRunner

    from prefrec.cli import app

    samples = tmp_path / "titles"
    samples.mkdir()
    write_samples(samples / "test.jsonl", pairwise_samples())
    (samples / "stats.json").write_text(json.dumps({"task": "pairwise", "protocol": {"answers": "title"}}))
    res = CliRunner().invoke(app, ["eval", str(run), "--samples", str(samples), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--allow-mismatch" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
    got = ev._mismatches(run, ev.evaluated(run)[1], "candidates", {"task": "candidates"})
    assert got == [f"{run} was trained on the pairwise task and is evaluated on candidates samples"]
    assert "warning: " in capsys.readouterr().err
    got = ev._mismatches(run / "adapter", ev.evaluated(run / "adapter")[1], "pairwise",
                         {"task": "pairwise", "protocol": {}})
    assert got == [f"{run / 'adapter'} was trained on letter answers and is evaluated on title answers"]
    assert ev._mismatches(run, ev.evaluated(run)[1], "pairwise",
                          {"task": "pairwise", "protocol": {"answers": "letter"}}) == []
    assert ev._mismatches("embedded", ev.evaluated("embedded")[1], "candidates", {}) == []
