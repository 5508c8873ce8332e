"""prefrec.items end to end on a tiny prepared folder: a SASRec baseline writes its item table, a hybrid run
(SFT with the curriculum, then S-DPO) trains the projector with LoRA, and evaluation, rank, explain, export and the
card use it; a killed run resumes to the same weights; missing or mismatched tables are refused.

Independent checks: the id map against the baseline's vocabulary built from the samples and items.tsv's SHA-256
from hashlib; the reference cache against naive_response_logps of the SFT-end checkpoint (adapter + projector) loaded
from disk; evaluation's rank scores against naive scores of the unmerged adapter; the export's standalone loader
against the run's own hybrid forward.
"""

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import save_tiny_model, train_two_processes
from fastapi.testclient import TestClient
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from prefrec import io, prompts
from prefrec.baselines.common import training_data
from prefrec.data.prepared import load_prepared
from prefrec.baselines.run import make_model, run_baseline
from prefrec.errors import UserError
from prefrec.evaluation.evaluate import evaluate
from prefrec.tasks.candidates import candidate_trees
from prefrec.export import export_run
from prefrec.items import (
    IDS_FILE,
    PROJECTOR_FILE,
    TABLE_FILE,
    ItemTokens,
    attach,
    attached,
    load_projector,
    read_table,
)
from prefrec.model import load_model
from prefrec.samples import Comparison, Sample, read_jsonl, write_samples
from prefrec.scoring.budget import token_budget
from prefrec.scoring.packing import chunked_response_logps as score_steps
from prefrec.scoring.packing import naive_response_logps, response_logps
from prefrec.scoring.soft import embed
from prefrec.serving.explain import explain_sample, render_html
from prefrec.serving.rank import budgeted_tree, missing_items_note, rank, run_steps
from prefrec.serving.serve import create_app
from prefrec.training.batches import encode_trees, with_k_negatives
from prefrec.training.config import config_from_dict, resolve_paths
from prefrec.training.recipe import train
from prefrec.training.runfolder import checkpoints
from prefrec.tasks import candidates as task_candidates

TITLES = ["Alien (1979)", "Heat (1995)", "Fargo (1996)", "Casino (1995)", "Rocky (1976)", "Jaws (1975)", "Up (2009)",
          "Cars (2006)", "Brazil (1985)", "Ran (1985)", "Babe (1995)", "Big (1988)"]
SIZES = {"train": 8, "valid": 3, "test": 4}
BASELINE = {"dim": 8, "epochs": 2, "examples_per_epoch": 300, "progress": False}


def _prepared(path: Path, dataset: str = "toy", seed: int = 0) -> Path:
    """A candidates folder in the layout of `prefrec data prepare`: history 3, 4 candidates (target + 3), the
    protocol's own prompt wording, items.tsv, interactions.tsv, stats.json."""
    g = torch.Generator().manual_seed(seed)
    items = {f"m{i}": t for i, t in enumerate(TITLES)}
    rows, samples, n = [], {s: [] for s in SIZES}, 0
    for split, count in SIZES.items():
        for _ in range(count):
            user = f"u{n}"
            n += 1
            perm = [f"m{j}" for j in torch.randperm(len(TITLES), generator=g).tolist()]
            if split == "train":  # the training users' histories and targets cover every item (a full table)
                perm = [f"m{(4 * n + j) % len(TITLES)}" for j in range(len(TITLES))]
            hist, target, negs = perm[:3], perm[3], perm[4:7]
            cands = [perm[3 + j] for j in torch.randperm(4, generator=g).tolist()]
            rows += [f"{user}\t{k}\t4\t{t}\t{split}" for t, k in enumerate(hist + [target])]
            h, c = [items[k] for k in hist], [items[k] for k in cands]
            samples[split].append(Sample(
                id=f"{dataset}-{user}", task="candidates", domain="movies", prefix=prompts.history_prefix("movies", h),
                comparisons=[Comparison(task_candidates.title_question("movies", c), items[target],
                                        [items[k] for k in negs])],
                user=user, history=h, history_items=hist, candidates=c, candidate_items=cands, target=items[target],
                target_item=target))
    for split, ss in samples.items():
        write_samples(path / f"{split}.jsonl", ss)
    io.write_tsv(path / "items.tsv", "item_id\ttitle", (f"{k}\t{t}\n" for k, t in items.items()))
    io.write_tsv(path / "interactions.tsv", "user\titem\trating\ttimestamp\tsplit", (r + "\n" for r in rows))
    io.write_json(path / "stats.json", {"dataset": dataset, "task": "candidates", "seed": seed,
                                        "split_sizes": SIZES, "protocol": {"name": "toy"}})
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, embedded_tokenizer):
    """The tiny model folder, the prepared data, and a SASRec baseline run on it (its table)."""
    root = tmp_path_factory.mktemp("items")
    data = _prepared(root / "data")
    run_baseline("sasrec", data, regime="few-shot", out=root / "sasrec", **BASELINE)
    return {"root": root, "tiny": save_tiny_model(root / "tiny", embedded_tokenizer, seed=3), "data": data,
            "table": root / "sasrec", "tok": embedded_tokenizer}


def _raw(world, out, **items):
    return {
        "output_dir": str(out), "seed": 5, "progress": False, "save_every": 2, "eval_every": 2, "keep_last": 100,
        "model": {"name": str(world["tiny"])}, "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "data": {"dir": str(world["data"])},
        "items": {"embeddings": str(world["table"]), "projector_hidden": 16,
                  "curriculum": {"text_only": 0.25, "ramp": 0.5}, **items},
        "stages": [{"kind": "sft", "epochs": 2, "lr": 5e-3, "batch_size": 4},
                   {"kind": "sdpo", "epochs": 2, "lr": 5e-3, "batch_size": 4, "beta": 0.5}],
    }


def _cfg(raw):
    return resolve_paths(config_from_dict(raw, "test"))


@pytest.fixture(scope="module")
def hybrid_run(world):
    """SFT 4 steps (text-only, text-only, mixed, hybrid), then S-DPO k = 3, 4 steps; checkpoints every 2 steps."""
    raw = _raw(world, world["root"] / "run")
    return train(_cfg(raw)), raw


def _rows(run, split="train"):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


# ---- the baseline's table ----------------------------------------------------------------------------------------

def test_a_sequential_baseline_writes_its_table_and_id_map(world):
    table = read_table(world["table"])
    prep = load_prepared(world["data"])
    vocab = training_data(prep, "few-shot").vocab  # built from the training samples: the map must be its items
    assert table.ids == {k: i for i, k in enumerate(vocab.keys[2:])}
    assert table.dataset == "toy" and table.model == "sasrec"
    assert table.items_sha256 == hashlib.sha256((world["data"] / "items.tsv").read_bytes()).hexdigest()
    assert table.titles == {k: prep.titles[k] for k in table.ids}
    refit = make_model("sasrec", max_len=3, cap=300, seed=0, lr=None, batch_size=None, dim=8, epochs=2,
                       progress=False)
    refit.fit(training_data(prep, "few-shot"))  # the same seed trains the same weights
    assert torch.allclose(table.embeddings, refit.model.item.weight[2:].detach(), atol=1e-6)
    result = json.loads((world["table"] / "results.json").read_text())
    assert result["config"]["item_embeddings"] == TABLE_FILE


# ---- training ----------------------------------------------------------------------------------------------------

def test_a_hybrid_run_folder(hybrid_run, world):
    run, _ = hybrid_run
    for name in (TABLE_FILE, IDS_FILE):  # byte copies of the frozen table
        assert (run / name).read_bytes() == (world["table"] / name).read_bytes()
    assert (run / "adapter" / PROJECTOR_FILE).is_file() and (run / "best" / PROJECTOR_FILE).is_file()
    info = json.loads((run / "run.json").read_text())["items"]
    assert info["rows"] == len(read_table(world["table"]).ids) and info["projector_hidden"] == 16
    assert info["dataset"] == "toy" and info["item_coverage"] == 1.0
    assert info["curriculum"] == {"text_only": 0.25, "ramp": 0.5}
    # the curriculum: share clamp((s/4 - 0.25) / 0.5, 0, 1) = 0, 0, 0.5, 1 at SFT steps 0..3
    shares = [r["hybrid_share"] for r in _rows(run) if r["stage"] == "sft"]
    assert shares[:2] == [0.0, 0.0] and shares[3] == 1.0 and "hybrid_share" not in _rows(run)[-1]
    # the projector trained in both stages
    p = [load_file(str(c / "adapter" / PROJECTOR_FILE)) for c in checkpoints(run)]
    assert len(p) == 4 and all((p[i]["2.weight"] - p[i + 1]["2.weight"]).abs().max() > 0 for i in range(1, 3))
    card = (run / "README.md").read_text()
    assert "Collaborative item tokens" in card and "Linear 8 -> 16" in card


def _checkpoint_model(world, folder: Path):
    """The tiny base + an adapter folder + its projector, assembled from the files (not through load_model)."""
    base = AutoModelForCausalLM.from_pretrained(world["tiny"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(folder)).eval()
    items = ItemTokens(read_table(world["table"]), base.config.hidden_size, 16)
    attach(model, items)
    load_projector(items, folder)
    return model


def test_the_reference_is_the_sft_end_model_with_its_projector(hybrid_run, world):
    run, _ = hybrid_run
    sft_end = checkpoints(run)[1]  # step 4: the last SFT step
    assert json.loads((sft_end / "trainer_state.json").read_text())["stage_done"]
    model = _checkpoint_model(world, sft_end / "adapter")
    samples = read_jsonl(world["data"] / "train.jsonl")
    trees = encode_trees(world["tok"], samples, "sdpo", 3, attached(model).ids)
    assert all(len(t.soft) == 3 for t in trees)
    with torch.no_grad():
        nested = naive_response_logps(model, trees).nested()
    cache = load_file(str(run / "ref_logps.safetensors"))
    want_rejected = torch.stack([b[0][1:] for b in nested])
    assert torch.allclose(cache["train.rejected"], want_rejected, atol=1e-4)
    assert torch.allclose(cache["train.chosen"][:, 0], torch.stack([b[0][0] for b in nested]), atol=1e-4)


def _killed_copy(run: Path, dest: Path, step: int) -> None:
    """The run folder as a kill right after checkpoint `step` leaves it (test_train.py's pattern)."""
    shutil.copytree(run, dest)
    for p in checkpoints(dest):
        if int(p.name[5:]) > step:
            shutil.rmtree(p)
    for name in ("adapter", "best"):
        shutil.rmtree(dest / name, ignore_errors=True)
    for name in ("run.json", TABLE_FILE, IDS_FILE):
        (dest / name).unlink()
    if step <= 4:
        (dest / "ref_logps.safetensors").unlink()


@pytest.mark.parametrize("step", [2, 6])  # inside the SFT curriculum, inside S-DPO
def test_resume_after_a_kill_ends_equal_to_the_uninterrupted_run(hybrid_run, tmp_path, step):
    run, raw = hybrid_run
    dest = tmp_path / "resumed"
    _killed_copy(run, dest, step)
    train(_cfg({**raw, "output_dir": str(dest)}), resume=True)
    for name in ("adapter_model.safetensors", PROJECTOR_FILE):
        a, b = load_file(str(dest / "adapter" / name)), load_file(str(run / "adapter" / name))
        assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6, name
    assert [r["loss"] for r in _rows(dest)] == pytest.approx([r["loss"] for r in _rows(run)], abs=1e-6)
    assert [r.get("hybrid_share") for r in _rows(dest)] == [r.get("hybrid_share") for r in _rows(run)]


def test_alignment_from_a_hybrid_sft_run_continues_its_projector(hybrid_run, tmp_path):
    _, raw = hybrid_run
    sft = tmp_path / "sft"
    train(_cfg({**raw, "output_dir": str(sft), "stages": raw["stages"][:1], "eval_every": None}))
    align = {**raw, "output_dir": str(tmp_path / "align"), "model": {"name": str(sft)}, "stages": raw["stages"][1:],
             "items": {k: v for k, v in raw["items"].items() if k != "curriculum"}, "eval_every": None}
    out = train(_cfg(align))
    assert load_file(str(out / "adapter" / PROJECTOR_FILE)).keys() == load_file(str(sft / "adapter" /
                                                                                     PROJECTOR_FILE)).keys()
    with pytest.raises(UserError, match="trained with item tokens"):  # its items section may not be dropped
        train(_cfg({**align, "output_dir": str(tmp_path / "no-items"), "items": None}))
    with pytest.raises(UserError, match="is not the table and projector"):
        train(_cfg({**align, "output_dir": str(tmp_path / "other-h"), "items": {**align["items"],
                                                                               "projector_hidden": 32}}))


def test_two_processes_match_one_process(world, tmp_path):
    """DDP over 2 CPU processes (gloo; tests/test_train.py's pattern) vs 1 process with the same global batch of 4.
    SFT step 0 is all text-only (the projector takes part with a zero gradient, or DDP would stop), step 1 mixed;
    S-DPO accumulates 2 micro-batches of 1 per process. Same losses and weights, projector included, up to float
    summation order (1e-5). LoRA dropout is 0: each process draws its own masks."""
    def raw_for(out, batch, accum):
        raw = _raw(world, out, curriculum={"text_only": 0.0, "ramp": 1.0})
        raw.update(save_every=None, eval_every=None, lora={"r": 4, "alpha": 8, "dropout": 0.0})
        raw["stages"] = [{**raw["stages"][0], "epochs": 1, "batch_size": batch},
                         {**raw["stages"][1], "epochs": 1, "batch_size": 1, "grad_accum": accum}]
        return raw

    one = train(_cfg(raw_for(tmp_path / "one", 4, 4)))
    cfg_path = tmp_path / "two.yaml"
    cfg_path.write_text(yaml.safe_dump(raw_for(tmp_path / "two", 2, 2)))
    proc = train_two_processes(cfg_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = tmp_path / "two"
    assert json.loads((two / "run.json").read_text())["num_processes"] == 2
    a, b = _rows(one), _rows(two)
    assert [r.get("hybrid_share") for r in a] == [r.get("hybrid_share") for r in b] and a[0]["hybrid_share"] == 0
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], abs=1e-5)
    for name in ("adapter_model.safetensors", PROJECTOR_FILE):
        x, y = load_file(str(one / "adapter" / name)), load_file(str(two / "adapter" / name))
        assert max((x[k] - y[k]).abs().max().item() for k in x) <= 1e-5, name


# ---- downstream ----------------------------------------------------------------------------------------------------

def test_evaluation_scores_with_the_item_tokens(hybrid_run, world, tmp_path):
    run, _ = hybrid_run
    res = evaluate(str(run), world["data"], out=tmp_path / "eval", max_new_tokens=4, progress=False)
    assert 0.0 <= res["metrics"]["valid_ratio"] <= 1.0 and res["n_samples"] == SIZES["test"]
    assert res["config"]["run"]["items"]["projector_hidden"] == 16  # the results say the run was hybrid
    rows = [json.loads(x) for x in (tmp_path / "eval" / "per_sample.jsonl").read_text().splitlines()]
    model = _checkpoint_model(world, run / "adapter")  # unmerged, from the files
    samples = read_jsonl(world["data"] / "test.jsonl")
    trees = candidate_trees(world["tok"], samples, attached(model).ids)
    assert all(len(t.soft) == 3 and len(t.branches[0].soft) == 4 for t in trees)
    with torch.no_grad():
        want = [b[0] for b in naive_response_logps(model, trees).nested()]
    for r, w in zip(rows, want):
        assert r["rank_scores"] == pytest.approx(w.tolist(), abs=1e-4)


def test_rank_for_a_new_user_falls_back_to_text_with_a_note(hybrid_run, world):
    run, _ = hybrid_run
    model, tok = load_model(str(run), device="cpu")
    items = attached(model)
    history, cands = TITLES[:3], [TITLES[5], TITLES[7], "Nope (2020)"]
    tree, _, _ = budgeted_tree(tok, history, cands, budget=token_budget(model), items=items)
    assert len(tree.soft) == 3 and len(tree.branches[0].soft) == 2  # the unknown title stays text
    chunked = run_steps(score_steps(model, tree, chunk_tokens=16))  # KV-cache chunks over the embeddings
    with torch.no_grad():
        assert chunked == pytest.approx(response_logps(model, [tree]).summed.tolist(), abs=1e-4)
    ranking = rank(model, tok, history, cands)
    assert sorted(r["score"] for r in ranking) == pytest.approx(sorted(chunked), abs=1e-3)
    note = missing_items_note(items, history, cands)
    assert "0 of 3 history titles and 1 of 3 candidates" in note and "Nope (2020)" in note
    assert missing_items_note(items, history, cands[:2]) is None


def test_serve_answers_with_the_item_tokens_and_the_note(hybrid_run):
    run, _ = hybrid_run
    model, tok = load_model(str(run), device="cpu")
    history, cands = TITLES[:3], [TITLES[5], "Nope (2020)"]
    with TestClient(create_app((model, tok)), base_url="http://127.0.0.1") as c:
        body = c.post("/rank", json={"history": history, "candidates": cands}).json()
        assert "1 of 2 candidates" in body["note"]
        assert "note" not in c.post("/rank", json={"history": history, "candidates": cands[:1]}).json()
    want = rank(model, tok, history, cands)
    assert [r["title"] for r in body["ranking"]] == [r["title"] for r in want]
    assert [r["score"] for r in body["ranking"]] == pytest.approx([r["score"] for r in want], abs=1e-3)


def test_explain_shows_each_item_token_as_one_cell(hybrid_run, world):
    run, _ = hybrid_run
    model, tok = load_model(str(run), device="cpu")
    sample = read_jsonl(world["data"] / "test.jsonl")[0]
    out = explain_sample(model, tok, sample)
    cells = [c for c in out["prefix_cells"] if "item" in c]
    assert [c["item"] for c in cells] == sample.history_items and out["item_tokens"]["n"] == 3 + 4
    assert sum("item" in c for c in out["groups"][0]["question_cells"]) == 4
    assert render_html([out]).count("title='collaborative item token") == 7


def test_export_carries_the_projector_table_and_a_loader(hybrid_run, world, tmp_path):
    run, _ = hybrid_run
    out = export_run(run, tmp_path / "export")
    for name in (PROJECTOR_FILE, TABLE_FILE, IDS_FILE, "item_tokens.py"):
        assert (out / name).is_file(), name
    assert "what else this model needs" in (out / "README.md").read_text()
    merged = AutoModelForCausalLM.from_pretrained(out)  # plain transformers: no prefrec_items weights in it
    assert not any("prefrec_items" in k for k in load_file(str(out / "model.safetensors")))
    spec = importlib.util.spec_from_file_location("item_tokens", out / "item_tokens.py")
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    tokens = loader.load_item_tokens(out)
    model, tok = load_model(str(run), device="cpu", merge_adapter=True)
    tree = candidate_trees(tok, read_jsonl(world["data"] / "test.jsonl")[:1], attached(model).ids)[0]
    ids = torch.tensor([tree.prefix + tree.branches[0].question])
    soft = tree.prompt_soft(0)
    with torch.no_grad():
        got = merged(inputs_embeds=tokens.inputs_embeds(merged, ids, [(0, p) for p, _ in soft],
                                                        [r for _, r in soft])).logits
        rows = torch.zeros(len(soft), dtype=torch.long)
        want = model(inputs_embeds=embed(model, ids, rows, torch.tensor([p for p, _ in soft]),
                                         torch.tensor([r for _, r in soft]))).logits
    assert torch.allclose(got, want, atol=1e-5)


# ---- refusals ------------------------------------------------------------------------------------------------------

def _broken_copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("checkpoints"))
    return dest


def test_a_run_with_a_missing_or_mismatched_table_is_refused(hybrid_run, tmp_path):
    run, _ = hybrid_run
    missing = _broken_copy(run, tmp_path / "missing")
    (missing / TABLE_FILE).unlink()
    with pytest.raises(UserError, match=f"{TABLE_FILE}: missing"):
        load_model(str(missing), device="cpu")
    swapped = _broken_copy(run, tmp_path / "swapped")  # a valid table of the same shape, other values
    emb = load_file(str(swapped / TABLE_FILE))["embeddings"]
    meta = {"format": "prefrec-item-embeddings/1", "dataset": "toy",
            "items_tsv_sha256": json.loads((run / IDS_FILE).read_text())["items_tsv_sha256"]}
    save_file({"embeddings": emb + 1.0}, str(swapped / TABLE_FILE), metadata=meta)
    with pytest.raises(UserError, match="trained with another item table"):
        load_model(str(swapped), device="cpu")
    other = _broken_copy(run, tmp_path / "other-dataset")  # the map of another dataset
    doc = json.loads((other / IDS_FILE).read_text())
    (other / IDS_FILE).write_text(json.dumps({**doc, "dataset": "lastfm"}))
    with pytest.raises(UserError, match=f"{IDS_FILE}: dataset is 'lastfm'.*different datasets"):
        load_model(str(other), device="cpu")
    with pytest.raises(UserError, match="load its run folder"):
        load_model(str(run / "adapter"), device="cpu")


def test_training_refuses_a_table_of_other_data(world, tmp_path):
    other = _prepared(tmp_path / "other", dataset="other", seed=1)
    run_baseline("sasrec", other, regime="few-shot", out=tmp_path / "other-sasrec", **BASELINE)
    raw = _raw(world, tmp_path / "run", embeddings=str(tmp_path / "other-sasrec"))
    with pytest.raises(UserError, match="learnt on dataset 'other'.*training data .* is 'toy'"):
        train(_cfg(raw))
    with pytest.raises(UserError, match=f"{TABLE_FILE}: missing"):
        train(_cfg(_raw(world, tmp_path / "run2", embeddings=str(tmp_path / "nowhere"))))


def test_k_negatives_trees_keep_their_item_tokens(world):
    """with_k_negatives drops rejected responses only: the prompt, and its soft tokens, stay."""
    s = read_jsonl(world["data"] / "train.jsonl")[0]
    ids = read_table(world["table"]).ids
    full, narrow = (encode_trees(world["tok"], [x], "sdpo", None, ids)[0] for x in (s, with_k_negatives(s, 1)))
    assert full.soft == narrow.soft and full.branches[0].soft == narrow.branches[0].soft
