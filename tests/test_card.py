"""Model cards (prefrec.card) of hand-written run folders: Hub metadata through huggingface_hub, the counts used."""

import json

import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from prefrec.card import model_card


def _run(tmp_path, *, stage_info, results=()):
    """A run folder as `prefrec train` leaves it (only the files the card reads), and its prepared data folder."""
    data, run = tmp_path / "data", tmp_path / "sft-dmpo"
    data.mkdir()
    (data / "stats.json").write_text(json.dumps({"dataset": "ml-100k", "task": "pairwise", "domain": "movies",
                                                 "seed": 0, "protocol": {"name": "DMPO pairwise", "negatives": 1},
                                                 "split_sizes": {"train": 4, "valid": 3, "test": 9}}))
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({
        "seed": 1, "data": {"dir": str(data), "max_train_samples": 2}, "lora": {"r": 4, "alpha": 8},
        "stages": [{"kind": "sft", "lr": 0.01, "epochs": 1}, {"kind": "dmpo", "lr": 0.01, "epochs": 1, "beta": 0.2}]}))
    (run / "run.json").write_text(json.dumps({"base_model": "embedded", "stages": ["sft", "dmpo"], "seed": 1,
                                              "stage_info": stage_info, "git_commit": "abc", "versions": {}}))
    for i, r in enumerate(results):
        folder = run / "eval" / f"e{i}"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(r))
    return run


PLAN = {"k": 1, "global_batch": 2, "steps": 1, "train_samples": 2, "valid_samples": 3}


def test_card_says_the_samples_training_used_not_the_prepared_count(tmp_path):
    text = model_card(_run(tmp_path, stage_info={"sft": PLAN, "dmpo": PLAN}))
    assert "Samples used in training: train 2 of 4 prepared, valid 3; test split: 9 prepared" in text
    assert "train 4" not in text


def test_card_without_stage_info_says_the_counts_are_unknown(tmp_path):
    text = model_card(_run(tmp_path, stage_info={}))
    assert "did not record how many it used" in text


def test_model_index_carries_the_test_results(tmp_path):
    result = {"kind": "eval", "dataset": "ml-100k", "task": "pairwise", "split": "test", "n_samples": 9,
              "metrics": {"auc": 0.61234, "pairwise_accuracy": 0.5, "n": 9}}
    text = model_card(_run(tmp_path, stage_info={"sft": PLAN}, results=[result]))
    card = ModelCard(text)  # huggingface_hub parses what it would show on the Hub
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.library_name == "peft"
    name, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert name == "sft-dmpo"
    got = {(r.dataset_type, r.dataset_split, r.metric_type): r.metric_value for r in results}
    assert got == {("ml-100k", "test", "auc"): 0.61234, ("ml-100k", "test", "pairwise_accuracy"): 0.5}
    assert "ml-100k pairwise test (n=9)" in card.text


def test_no_results_no_model_index(tmp_path):
    card = ModelCard(model_card(_run(tmp_path, stage_info={"sft": PLAN})))
    assert "model-index" not in card.data.to_dict() and "No test metrics yet" in card.text
