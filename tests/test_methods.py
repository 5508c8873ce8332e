"""prefrec.training.methods: the one table of stage kinds. A new loss is one function + one row, and everything derives."""

import json
import math

import pytest
import torch.nn.functional as F
from conftest import make_tiny_lm

from prefrec.errors import UserError
from prefrec.samples import Comparison, Sample, write_samples
from prefrec.training import losses, methods
from prefrec.training.config import config_from_dict, resolve_paths

CALLS = []


def hinge_loss(batch, beta, margin=1.0):
    """The worked example of docs/dev/extending.md: max(0, margin - (r_w - max_i r_l,i))."""
    CALLS.append(batch.rejected.shape)
    chosen, rejected = losses.dpo_rewards(batch, beta)
    chosen = chosen.mean(dim=1) if chosen.dim() == 2 else chosen
    return F.relu(margin - (chosen - rejected.max(dim=1).values)), chosen.detach(), rejected.detach()


@pytest.fixture
def with_hinge(monkeypatch):
    table = dict(methods.STAGES)
    table["hinge"] = methods.StageKind("hinge", hinge_loss, params={"margin": methods.Param(1.0, 0.0)},
                                       only_variant=True)
    monkeypatch.setattr(methods, "STAGES", table)
    CALLS.clear()


PAPERS = ("sft", "dpo", "dmpo", "sdpo")
MORE = ("simpo", "orpo", "pl", "lipo", "infonca", "dmpo-ls", "sdpo-ls")


def test_the_table_gives_the_lists():
    assert methods.stage_kinds() == PAPERS + MORE
    assert methods.alignment_kinds() == PAPERS[1:] + MORE
    only = tuple(f"{k}-only" for k in ("dmpo", "sdpo") + MORE)
    assert methods.llm_methods() == ("zero-shot",) + PAPERS + MORE + only
    assert methods.table_order()[:7] == ["zero-shot", "sft", "dpo", "dmpo-only", "dmpo", "sdpo-only", "sdpo"]
    assert [methods.cell_k(m, 3) for m in methods.llm_methods()][:7] == [None, None, 1, 3, 3, 3, 3]
    assert {methods.stage(k).reference for k in ("simpo", "orpo")} == {False}
    assert all(methods.stage(k).reference for k in ("dpo", "dmpo", "sdpo", "pl", "lipo", "infonca", "dmpo-ls"))
    assert methods.method_stages("dmpo") == (["dmpo"], True)
    assert methods.method_stages("dmpo-only") == (["dmpo"], False)
    assert methods.method_stages("sft") == (["sft"], False)
    assert methods.stage("dpo").loss_fn() is losses.dpo_loss


def test_a_registered_loss_reaches_config_experiment_and_report(with_hinge):
    from prefrec.evaluation.report import _row_order

    cfg = config_from_dict({"data": {"dir": "d"}, "stages": [{"kind": "sft"}, {"kind": "hinge", "ftx": 0.5}]}, "test")
    assert cfg.stages[1].dropout_off()
    assert cfg.stages[1].params == {"margin": 1.0} and cfg.stages[1].beta == 0.1  # the row's defaults
    with pytest.raises(UserError, match=r"stages\[1\]\.params\.margin: expected a number in \[0, inf\)"):
        config_from_dict({"data": {"dir": "d"}, "stages": [{"kind": "sft"},
                                                           {"kind": "hinge", "params": {"margin": -1.0}}]}, "test")
    with pytest.raises(UserError, match=r"params\.gamma: unknown for hinge; expected one of \['margin'\]"):
        config_from_dict({"data": {"dir": "d"}, "stages": [{"kind": "hinge", "params": {"gamma": 1.0}}]}, "test")
    assert "hinge" in methods.llm_methods() and "hinge-only" in methods.llm_methods()
    assert methods.method_is_aligned("hinge-only") and methods.cell_k("hinge", 2) == 2
    # the report places the new rows after the paper's methods and before the baselines
    rank = [_row_order({"method": m})[0] for m in ("sdpo", "hinge-only", "hinge", "popularity")]
    assert rank == sorted(rank) and len(set(rank)) == 4
    with pytest.raises(UserError, match="nope"):
        config_from_dict({"data": {"dir": "d"}, "stages": [{"kind": "nope"}]}, "test")


def test_a_registered_loss_trains_through_train(with_hinge, tmp_path, embedded_tokenizer):
    from prefrec.training.recipe import train

    model = tmp_path / "model"
    make_tiny_lm(embedded_tokenizer, seed=1).save_pretrained(model)
    embedded_tokenizer.save_pretrained(model)
    samples = [Sample(id=f"s{i}", task="candidates", domain="movies", prefix=f"Seen: Heat {i}.",
                      comparisons=[Comparison(question=" Pick one.", chosen="Alien", rejected=["Jaws", "Up"])])
               for i in range(2)]
    write_samples(tmp_path / "data" / "train.jsonl", samples)
    raw = {"output_dir": str(tmp_path / "run"), "progress": False, "model": {"name": str(model)},
           "lora": {"r": 2, "alpha": 4}, "data": {"dir": str(tmp_path / "data"), "max_valid_samples": 0},
           "stages": [{"kind": "hinge", "max_steps": 1, "batch_size": 2, "beta": 0.5, "params": {"margin": 1.0}}]}
    run = train(resolve_paths(config_from_dict(raw, "test")))
    assert CALLS and CALLS[0][1] == 2  # called on the 2 rejected responses of each sample
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert len(train_rows) == 1 and train_rows[0]["stage"] == "hinge"
    # a fresh LoRA policy equals its reference: every reward is 0, so the hinge is exactly 1
    assert train_rows[0]["loss"] == pytest.approx(1.0, abs=1e-5)
    assert json.loads((run / "run.json").read_text())["stages"] == ["hinge"]


@pytest.mark.parametrize("kind", MORE)
def test_every_loss_trains_with_k_negatives_on_the_packed_path(kind, tmp_path, embedded_tokenizer):
    """Each new row trains through `train` on trees of one prompt + k = 3 negatives, with graded labels from the
    samples' ratings; the reference pass runs exactly for the rows that need one, and the loss is finite."""
    from prefrec.training.recipe import train
    from prefrec.training.reference import REF_CACHE

    model = tmp_path / "model"
    make_tiny_lm(embedded_tokenizer, seed=2).save_pretrained(model)
    embedded_tokenizer.save_pretrained(model)
    titles = ["Alien", "Jaws", "Up", "Heat", "Fargo"]
    samples = [Sample(id=f"s{i}", task="candidates", domain="movies", prefix=f"Seen: Heat {i}.",
                      comparisons=[Comparison(question=" Pick one.", chosen="Alien", rejected=titles[1:4])],
                      candidates=titles, candidate_ratings=[5.0, 2.0, None, 1.0, None], target="Alien")
               for i in range(2)]
    write_samples(tmp_path / "data" / "train.jsonl", samples)
    raw = {"output_dir": str(tmp_path / "run"), "progress": False, "model": {"name": str(model)},
           "lora": {"r": 2, "alpha": 4}, "data": {"dir": str(tmp_path / "data"), "max_valid_samples": 0},
           "stages": [{"kind": kind, "max_steps": 1, "batch_size": 2}]}
    run = train(resolve_paths(config_from_dict(raw, "test")))
    row = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][0]
    assert row["stage"] == kind and math.isfinite(row["loss"]) and row["loss"] > 0
    assert (run / REF_CACHE).is_file() == methods.stage(kind).reference
