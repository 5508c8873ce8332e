"""prefrec.training.config: strict YAML -> dataclasses, errors that name the file and the key path, --set overrides."""

import re
from pathlib import Path

import pytest
import yaml

from prefrec.errors import UserError
from prefrec.training.config import (
    TrainConfig,
    apply_override,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

MINIMAL = """\
output_dir: out
data: {dir: samples}
stages:
  - kind: sft
    lr: 2.0e-4
  - kind: dmpo
    beta: 0.1
    k: 3
"""


def _write(tmp_path, text, name="config.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _error(tmp_path, text, overrides=()):
    with pytest.raises(UserError) as e:
        load_config(_write(tmp_path, text), list(overrides))
    return str(e.value)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, TrainConfig)
    assert cfg.stage_kinds()[0] == "sft" and cfg.stage_kinds()[1] in ("dpo", "dmpo", "sdpo")


def test_shipped_config_set():
    assert {p.name for p in CONFIGS.glob("*.yaml")} >= {"ml100k-sft-dmpo-k3.yaml", "ml100k-sft-sdpo-k3.yaml",
                                                        "ml100k-sft-dpo.yaml"}


def test_minimal_config_values_and_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(_write(tmp_path, MINIMAL))
    assert cfg.stages[0].lr == pytest.approx(2e-4)
    assert cfg.stages[1].kind == "dmpo" and cfg.stages[1].k == 3 and cfg.stages[1].beta == 0.1
    assert cfg.stages[1].ftx == 0.0 and cfg.stages[1].grad_accum == 1
    assert cfg.model.name == "embedded" and cfg.lora.r == 8
    # relative paths are read from the current directory and stored absolute
    assert cfg.output_dir == str(tmp_path / "out") and cfg.data.dir == str(tmp_path / "samples")


def test_wrong_type_names_file_and_key_path(tmp_path):
    msg = _error(tmp_path, MINIMAL.replace("beta: 0.1", "beta: abc"))
    assert msg == f"{tmp_path / 'config.yaml'}: stages[1].beta: expected float, got 'abc'"


@pytest.mark.parametrize("text,key,expected", [
    ("lora: {r: 8.5}", "lora.r", "expected int, got 8.5"),
    ("lora: {r: true}", "lora.r", "expected int, got True"),
    ("seed: '3'", "seed", "expected int, got '3'"),
    ("tensorboard: 1", "tensorboard", "expected bool"),
    ("lora: {target_modules: q_proj}", "lora.target_modules", "expected a list of str"),
    ("lora: {target_modules: [q_proj, 3]}", "lora.target_modules[1]", "expected str, got 3"),
    ("model: embedded", "model", "expected a mapping"),
    ("eval_every: -2", "eval_every", "expected a positive number"),
    ("best_metric: f1", "best_metric", "expected one of"),
    ("lora: {dropout: 1.5}", "lora.dropout", "expected a float in [0, 1)"),
    ("model: {attn_implementation: flash_attention_2}", "model.attn_implementation", "expected one of ['eager', "),
    ("model: {attn_implementation: fast}", "model.attn_implementation", "got 'fast'"),
    # #43: seed -5 and LoRA r 1e8 were tracebacks (numpy's seed, an out-of-memory LoRA)
    ("seed: -5", "seed", "expected an integer in [0, 4294967295], got -5"),
    ("seed: 99999999999", "seed", "expected an integer in [0, 4294967295]"),
    ("lora: {r: 100000000}", "lora.r", "100000000 is above 1024"),
    ("divergence_factor: 0", "divergence_factor", "expected a positive number"),
])
def test_wrong_values_name_the_key(tmp_path, text, key, expected):
    msg = _error(tmp_path, MINIMAL + text + "\n")
    assert f": {key}: " in msg and expected in msg


def test_int_is_accepted_where_float_is_expected(tmp_path):
    cfg = load_config(_write(tmp_path, MINIMAL.replace("beta: 0.1", "beta: 1")))
    assert cfg.stages[1].beta == 1.0 and isinstance(cfg.stages[1].beta, float)


def test_unknown_key_is_an_error(tmp_path):
    msg = _error(tmp_path, MINIMAL + "lora: {rank: 4}\n")
    assert "lora.rank: unknown key" in msg and "'r'" in msg
    msg = _error(tmp_path, MINIMAL.replace("k: 3", "k: 3\n    betta: 0.2"))
    assert "stages[1].betta: unknown key" in msg


def test_missing_and_empty(tmp_path):
    assert "stages[0].kind: missing" in _error(tmp_path, "data: {dir: x}\nstages:\n  - {lr: 0.1}\n")
    assert "stages: missing" in _error(tmp_path, "data: {dir: x}\n")
    assert "data:" in _error(tmp_path, "stages: [{kind: sft}]\n")


def test_exponent_floats_quoted_strings_and_duplicates(tmp_path):
    cfg = load_config(_write(tmp_path, MINIMAL.replace("lr: 2.0e-4", "lr: 1e-4")))
    assert cfg.stages[0].lr == pytest.approx(1e-4)
    assert "stages[0].lr: expected float, got '1e-4'" in _error(tmp_path, MINIMAL.replace("lr: 2.0e-4", "lr: '1e-4'"))
    assert "duplicate key 'seed'" in _error(tmp_path, MINIMAL + "seed: 1\nseed: 2\n")
    assert "not valid YAML" in _error(tmp_path, MINIMAL + "lora: {r: [\n")


@pytest.mark.parametrize("kinds,ok", [
    (["sft"], True), (["dmpo"], True), (["sft", "sdpo"], True), (["sft", "dpo"], True),
    (["dmpo", "sft"], False), (["sft", "sft"], False), (["sft", "dpo", "dmpo"], False), (["ppo"], False),
])
def test_stage_order(kinds, ok):
    raw = {"data": {"dir": "x"}, "stages": [{"kind": k} for k in kinds]}
    if ok:
        assert config_from_dict(raw).stage_kinds() == kinds
    else:
        with pytest.raises(UserError, match="stages"):
            config_from_dict(raw)


def test_ftx_only_for_alignment_and_best_metric_needs_alignment():
    with pytest.raises(UserError, match=r"stages\[0\].ftx"):
        config_from_dict({"data": {"dir": "x"}, "stages": [{"kind": "sft", "ftx": 1.0}]})
    with pytest.raises(UserError, match="best_metric"):
        config_from_dict({"data": {"dir": "x"}, "stages": [{"kind": "sft"}], "best_metric": "reward_accuracy"})


def test_overrides(tmp_path):
    path = _write(tmp_path, MINIMAL)
    cfg = load_config(path, ["stages[1].beta=0.5", "stages.0.epochs=3", "data.max_train_samples=50",
                             "lora.target_modules=[q_proj, v_proj]", "data.valid=null"], output_dir=str(tmp_path / "o"))
    assert cfg.stages[1].beta == 0.5 and cfg.stages[0].epochs == 3 and cfg.data.max_train_samples == 50
    assert cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.output_dir == str(tmp_path / "o")
    with pytest.raises(UserError, match=r"stages\[1\].beta: expected float, got 'x' \(set by --set\)"):
        load_config(path, ["stages[1].beta=x"])
    with pytest.raises(UserError, match=r"index 5 out of range \(2 items\)"):
        load_config(path, ["stages[5].beta=1"])
    with pytest.raises(UserError, match="expected key=value"):
        load_config(path, ["seed"])
    with pytest.raises(UserError, match=r"lora.rank: unknown key"):
        load_config(path, ["lora.rank=4"])


def test_apply_override_creates_sections():
    raw = {"stages": [{"kind": "sft"}]}
    assert apply_override(raw, "model.name=/x/y") == "model.name"
    assert raw["model"] == {"name": "/x/y"}


def test_one_set_dialect_for_train_and_experiment():
    """Issue 17: `prefrec train --set` and `prefrec experiment --set` read KEY=VALUE with one parser."""
    from prefrec import experiment
    from prefrec.training.config import apply_overrides

    assert experiment.apply_overrides is apply_overrides
    raw = {"seeds": [0, 1], "datasets": [{"label": "ml-100k", "prepare": {"n_train": 5}}], "stages": [{"kind": "sft"}]}
    out = apply_overrides(raw, ["seeds[1]=5", "datasets.ml-100k.prepare.n_train=50", "stages.0.lr=5e-5",
                                "align.lr=1e-4", "eval.generate=false", "seed=3"])
    assert out["seeds"] == [0, 5] and out["datasets"][0]["prepare"]["n_train"] == 50
    assert out["stages"][0]["lr"] == 5e-5 and out["align"]["lr"] == 1e-4 and out["eval"]["generate"] is False
    assert raw["seeds"] == [0, 1] and "align" not in raw  # the input is left alone
    assert apply_override(raw, "datasets.ml-100k.label=x") == "datasets[0].label"
    with pytest.raises(UserError, match="duplicate key"):
        apply_overrides(raw, ["eval={a: 1, a: 2}"])
    with pytest.raises(UserError, match="no dataset labelled 'nope'"):
        apply_overrides(raw, ["datasets.nope.prepare.n_train=2"])


def test_dump_round_trip(tmp_path):
    cfg = load_config(_write(tmp_path, MINIMAL), ["seed=7", "stages[1].ftx=1"])
    again = load_config(_write(tmp_path, dump_config(cfg), "again.yaml"))
    assert again == cfg
    assert yaml.safe_load(dump_config(cfg))["seed"] == 7


def test_unreadable_file(tmp_path):
    with pytest.raises(UserError, match="cannot read the config"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("key", ["stages[0].lr", "stages[0].max_grad_norm", "stages[0].weight_decay", "stages[0].ftx",
                                 "stages[0].beta", "lora.dropout", "stages[0].params.label_smoothing"])
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_floats_are_refused(key, value):
    """A NaN lr or max_grad_norm used to train a run of NaN weights to a "complete" end (issue 31)."""
    raw = {"data": {"dir": "d"}, "stages": [{"kind": "dmpo"}]}
    with pytest.raises(UserError, match=f"{re.escape(key)}: expected a finite number"):
        config_from_dict(apply_overrides(raw, [f"{key}={value}"]), "c.yaml")


def test_every_problem_is_reported_at_once():
    raw = {"data": {"dir": "d"}, "seed": "x", "lora": {"rank": 4},
           "stages": [{"kind": "sft", "lr": -1.0}, {"kind": "nope", "batch_size": 0}]}
    with pytest.raises(UserError) as e:
        config_from_dict(raw, "c.yaml")
    text = str(e.value)
    # the type problems first (values cannot be checked before the types are right)...
    assert text.startswith("2 problems in c.yaml") and "c.yaml: seed: expected int" in text
    assert "c.yaml: lora.rank: unknown key" in text
    raw.update(seed=0, lora={})
    with pytest.raises(UserError) as e:
        config_from_dict(raw, "c.yaml")
    text = str(e.value)  # ...then every value problem
    for part in ("stages[0].lr: expected a positive number", "stages[1].kind: expected one of",
                 "stages[1].batch_size: expected a positive number"):
        assert part in text


def test_beta_and_params_default_to_the_row():
    cfg = config_from_dict({"data": {"dir": "d"}, "stages": [{"kind": "simpo"}]}, "c")
    assert cfg.stages[0].beta == 2.0 and cfg.stages[0].params == {"gamma": 1.0}
    cfg = config_from_dict({"data": {"dir": "d"}, "stages": [{"kind": "sdpo-ls", "beta": 0.5}]}, "c")
    assert cfg.stages[0].beta == 0.5 and cfg.stages[0].params == {"label_smoothing": 0.1}


def test_a_config_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(MINIMAL.encode() + "# réglages\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1\.yaml: not UTF-8 text \(byte \d+\)"):
        load_config(path)


def test_the_items_section_is_typed_and_checked_like_the_rest(tmp_path):
    """Collaborative item tokens (prefrec.items): every problem at once, non-finite floats refused, paths resolved,
    and a config without the section is the text-only config of before (items: null)."""
    cfg = load_config(_write(tmp_path, MINIMAL + "items: {embeddings: baselines/sasrec, curriculum: {ramp: 0.5}}\n"))
    assert cfg.items.projector_hidden == 256 and cfg.items.curriculum.text_only == 0.0
    assert cfg.items.curriculum.ramp == 0.5 and Path(cfg.items.embeddings).is_absolute()
    assert load_config(_write(tmp_path, MINIMAL)).items is None
    raw = {"data": {"dir": "d"}, "stages": [{"kind": "sdpo"}],
           "items": {"embeddings": "", "projector_hidden": 0, "curriculum": {"text_only": 0.75, "ramp": 0.5}}}
    with pytest.raises(UserError) as e:
        config_from_dict(raw, "c.yaml")
    text = str(e.value)
    assert text.startswith("4 problems in c.yaml")
    for part in ("items.embeddings: must not be empty", "items.projector_hidden: expected a positive number",
                 "items.curriculum: text_only + ramp = 1.25", "items.curriculum: the curriculum runs in the sft stage"):
        assert part in text
    for key in ("items.curriculum.text_only", "items.curriculum.ramp"):
        with pytest.raises(UserError, match=f"{re.escape(key)}: expected a finite number"):
            config_from_dict(apply_overrides(raw, [f"{key}=.nan"]), "c.yaml")
    with pytest.raises(UserError, match="items.size: unknown key"):
        config_from_dict({**raw, "items": {"embeddings": "x", "size": 3}}, "c.yaml")



def test_an_unusual_lr_is_refused_unless_allowed(tmp_path):
    """#43: lr 1e30 trained to exit 0 with adapter weights of 1.7e30."""
    text = MINIMAL.replace("lr: 2.0e-4", "lr: 1.0e+30")
    msg = _error(tmp_path, text)
    assert ": stages[0].lr: 1e+30 is above 0.1" in msg and "allow_unusual: true" in msg
    cfg = load_config(_write(tmp_path, text + "allow_unusual: true\n"))
    assert cfg.stages[0].lr == 1e30 and cfg.allow_unusual
