"""Fuzzing the config loaders (prefrec.training.config.load_config and prefrec.experiment.load_experiment, issue #43
point 5): what `prefrec train` and `prefrec experiment` read first.

Each example starts from a shipped config (configs/*.yaml, configs/experiments/*.yaml) and changes it: a value set
anywhere (an existing key or a new one) to any YAML value (nulls, booleans, huge or negative numbers, NaN, strings
with NUL, lists, mappings), a key removed, a `--set KEY=VALUE` of random text, or the file's bytes changed. The
properties:
- the loader raises UserError, each of whose lines names the file, or returns a config that is what the file says:
  a training config dumps and loads back to itself, every checked range holds, and a value that was set reads
  back as set; an experiment config lists its cells; never another exception (a traceback in `prefrec train`);
- loading writes nothing.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import yaml
from fuzzing import fuzz, snapshot
from hypothesis import example, given
from hypothesis import strategies as st

from prefrec.errors import UserError
from prefrec.experiment import cells, load_experiment
from prefrec.training.config import MAX_SEED, UNUSUAL, config_to_dict, dump_config, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRAIN = {p.name: p.read_text(encoding="utf-8") for p in sorted(CONFIGS.glob("*.yaml"))}
EXPERIMENTS = {p.name: p.read_text(encoding="utf-8") for p in sorted((CONFIGS / "experiments").glob("*.yaml"))}
WORDS = ["sft", "dpo", "dmpo", "sdpo", "auto", "embedded", "fp32", "1e-4", "ml-100k", "pairwise", "candidates",
         "q_proj", "loss", "auc", "seed", "stages", "label", "\x00", "", " ", "~", "../x"]
LEAF = (st.none() | st.booleans() | st.integers(-3, 5) | st.integers() | st.sampled_from([2**64, -(2**70), 10**30])
        | st.floats() | st.sampled_from([0.0, 1e-4, 0.5, 1e30]) | st.text(max_size=6) | st.sampled_from(WORDS))
VALUE = st.recursive(LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5)
                     | st.sampled_from(WORDS), inner, max_size=3), max_leaves=6)
# paths hold machine-dependent text after loading (made absolute); params and beta are filled in from the method
FILLED = {"dir", "train", "valid", "output_dir", "name", "embeddings", "trunk_cache_dir", "beta", "params"}


def _places(node, path=()) -> list[tuple]:
    """The key path of every value in a parsed YAML tree (mapping keys and list positions)."""
    out = [path]
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        out += _places(v, path + (k,))
    return out


def edit(raw: dict, data) -> tuple[tuple, object]:
    """Set one value somewhere in `raw` (an existing key, a new key below one, a list item), or remove a key, in
    place; returns (its key path, the value set, or ... when removed)."""
    path = data.draw(st.sampled_from(_places(raw)[1:] or [()]), label="at")
    if path and data.draw(st.booleans(), label="a new key below"):
        node = raw
        for k in path:
            node = node[k]
        if isinstance(node, dict):
            path = path + (data.draw(st.sampled_from(sorted(map(str, node)) + WORDS) | st.text(max_size=5)),)
    if not path:
        return path, ...
    parent = raw
    for k in path[:-1]:
        parent = parent[k]
    if data.draw(st.booleans(), label="remove") and isinstance(parent, dict) and path[-1] in parent:
        del parent[path[-1]]
        return path, ...
    value = data.draw(VALUE, label="value")
    parent[path[-1]] = value
    return path, value


def _in_range(cfg) -> None:
    """The ranges _check_values promises, on a config it let through."""
    assert isinstance(cfg.seed, int) and not isinstance(cfg.seed, bool) and 0 <= cfg.seed <= MAX_SEED
    assert 1 <= cfg.lora.r and (cfg.allow_unusual or cfg.lora.r <= UNUSUAL["lora.r"]) and 0 <= cfg.lora.dropout < 1
    assert cfg.stages and cfg.keep_last >= 1
    for s in cfg.stages:
        assert math.isfinite(s.lr) and 0 < s.lr and (cfg.allow_unusual or s.lr <= UNUSUAL["lr"])
        assert 0 <= s.warmup_ratio < 1 and s.epochs >= 1 and s.batch_size >= 1 and s.grad_accum >= 1
        assert all(isinstance(v, float) and math.isfinite(v) for v in s.params.values())


def _at(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def load_or_error(load, path: Path, overrides: list[str]):
    """load(path, overrides), or None after a UserError whose every line names the file (or the --set at fault);
    nothing written."""
    before = snapshot(path.parent)
    try:
        return load(path, overrides)
    except UserError as e:
        lines = str(e).split("\n")  # terminal lines (a key may hold other line separators, echoed as typed)
        assert lines and all(str(path) in x or x.startswith("--set ") for x in lines), str(e)
        return None
    finally:
        assert snapshot(path.parent) == before


def train_outcome(folder: Path, text: str | bytes, overrides=(), set_at=None):
    """load_config of `text`: None after a UserError whose every line names the file, else the config, checked as
    the module docstring says; nothing written."""
    path = folder / "config.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    cfg = load_or_error(load_config, path, list(overrides))
    if cfg is None:
        return None
    _in_range(cfg)
    again = folder / "again.yaml"
    again.write_text(dump_config(cfg), encoding="utf-8")
    assert config_to_dict(load_config(again)) == config_to_dict(cfg)  # RUN/config.yaml reads back as itself
    path, value = set_at or ((), ...)
    plain = not isinstance(value, dict) and not (isinstance(value, list) and any(isinstance(v, dict) for v in value))
    if path and value is not ... and plain and not FILLED & {str(k) for k in path}:  # mappings get defaults added
        assert _at(config_to_dict(cfg), path) == value
    return cfg


@fuzz(200)
@given(name=st.sampled_from(sorted(TRAIN)), data=st.data())
@example(name="ml100k-sft-dpo.yaml", data=None).via("model.revision: '1e-4'")
def test_an_edited_training_config_gives_one_clear_error_or_what_it_says(name, data):
    raw = yaml.safe_load(TRAIN[name])
    if data is None:
        raw["model"]["revision"], where = "1e-4", ((("model", "revision"), "1e-4"))
    else:
        where = edit(raw, data)
    with tempfile.TemporaryDirectory(prefix="wt-fuzz-") as tmp:
        train_outcome(Path(tmp), yaml.safe_dump(raw, allow_unicode=True), set_at=where)


CHECKED = [("seed",), ("keep_last",), ("divergence_factor",), ("lora", "r"), ("lora", "alpha"), ("lora", "dropout"),
           ("stages", 0, "lr"), ("stages", 1, "lr"), ("stages", 0, "warmup_ratio"), ("stages", 0, "epochs"),
           ("stages", 0, "batch_size"), ("stages", 1, "beta")]


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: ".".join(map(str, p)))
@fuzz(15)
@given(value=st.one_of(st.sampled_from([1e30, 0.5, 2.0, -1, 0, 2**64, float("nan"), True, "3", None]), LEAF))
def test_each_checked_value_set_to_anything_gives_one_clear_error_or_what_it_says(path, value):
    """The values _check_values guards, one at a time, set to anything (far above or below its range included)."""
    raw = yaml.safe_load(TRAIN["ml100k-sft-dpo.yaml"])
    _at(raw, path[:-1])[path[-1]] = value
    with tempfile.TemporaryDirectory(prefix="wt-fuzz-") as tmp:
        train_outcome(Path(tmp), yaml.safe_dump(raw, allow_unicode=True), set_at=(path, value))


KEYS = st.sampled_from(["seed", "lora.r", "stages[0].lr", "stages.1.beta", "stages[1].params.alpha", "data.dir",
                        "model", "stages[9].lr", "stages", "lora..r", "[0]", "a[x]", "", "seed.x", "stages[0]"])


@fuzz(150)
@given(sets=st.lists(st.tuples(KEYS | st.text(max_size=8), st.sampled_from(["=", "", "=="]),
                                st.sampled_from(WORDS + ["3", "[1, 2]", "{a: 1}", "nan", "1e30", "-1", "[", "&a [*a]"])
                                | st.text(max_size=8)), max_size=3))
def test_any_set_overrides_give_one_clear_error_or_what_they_say(sets):
    overrides = [f"{k}{sep}{v}" for k, sep, v in sets]
    with tempfile.TemporaryDirectory(prefix="wt-fuzz-") as tmp:
        train_outcome(Path(tmp), TRAIN["ml100k-sft-dpo.yaml"], overrides)


NASTY_YAML = ["[" * 5000 + "]" * 5000, "? [a]\n: 1\n", "&a [*a]", "output_dir: \"a\\0b\"\n", "\x00",
              "a: !!python/object:os.system x\n", "data: {dir: \"\\0\"}\n", "%YAML 9.9\n---\n", "--- 1\n--- 2\n",
              "a: 1\na: 2\n", "\ufeffseed: 1\n"]


def _bytes_changed(text: str, data) -> bytes:
    raw = text.encode("utf-8")
    kind = data.draw(st.sampled_from(["splice", "append", "nasty", "latin-1", "cut"]), label="kind")
    at = data.draw(st.integers(0, len(raw)), label="at")
    if kind == "splice":
        return raw[:at] + data.draw(st.binary(max_size=6), label="bytes") + raw[at + data.draw(st.integers(0, 6)):]
    if kind == "append":
        return raw + data.draw(st.sampled_from(NASTY_YAML), label="nasty").encode("utf-8")
    if kind == "nasty":
        return data.draw(st.sampled_from(NASTY_YAML), label="nasty").encode("utf-8")
    if kind == "latin-1":
        return raw[:at] + "é".encode("latin-1") + raw[at:]
    return raw[:at]


@fuzz(150)
@given(name=st.sampled_from(sorted(TRAIN)), data=st.data())
def test_a_training_config_with_changed_bytes_gives_one_clear_error_or_a_config(name, data):
    with tempfile.TemporaryDirectory(prefix="wt-fuzz-") as tmp:
        train_outcome(Path(tmp), _bytes_changed(TRAIN[name], data))


def experiment_outcome(folder: Path, raw: bytes, overrides=()):
    path = folder / "experiment.yaml"
    path.write_bytes(raw)
    cfg = load_or_error(load_experiment, path, list(overrides))
    if cfg is not None:
        cells(cfg)  # the grid it describes can be listed
    return cfg


@fuzz(200)
@given(name=st.sampled_from(sorted(EXPERIMENTS)), data=st.data(), raw_bytes=st.booleans())
def test_an_edited_experiment_config_gives_one_clear_error_or_its_cells(name, data, raw_bytes):
    if raw_bytes:
        text = _bytes_changed(EXPERIMENTS[name], data)
    else:
        raw = yaml.safe_load(EXPERIMENTS[name])
        edit(raw, data)
        text = yaml.safe_dump(raw, allow_unicode=True).encode("utf-8", "surrogatepass")
    with tempfile.TemporaryDirectory(prefix="wt-fuzz-") as tmp:
        experiment_outcome(Path(tmp), text)


@pytest.mark.parametrize("raw", [x.encode("utf-8") for x in NASTY_YAML] + [b"seed: [1\n", b"seed: \xe9\n"])
def test_nasty_yaml_is_one_clear_error_for_both_loaders(tmp_path, raw):
    """The fuzzer's finds: deep nesting (RecursionError), a list as a mapping key (TypeError), a NUL in a path
    (ValueError from resolving it), latin-1 bytes: tracebacks or unclear lines in `prefrec train` and `prefrec
    experiment`."""
    assert train_outcome(tmp_path, raw) is None
    assert experiment_outcome(tmp_path, raw) is None


def test_a_folder_as_experiment_config_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        load_experiment(tmp_path)
