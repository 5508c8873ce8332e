"""Fuzzing the command line (prefrec.cli, issue #43 point 5): random argument lists for every command that cannot
start long work, in a sandbox folder of small inputs (a raw MovieLens-100K log, samples, a peer file, a training
config, titles, an empty folder, paths that do not exist), and `prefrec data import` / `data prepare` on mutated
inputs. The properties, for every argument list:
- the exit code is 0, or 2 with one line on stderr starting "error: ", the last (after any progress lines; a
  config with several problems adds one indented line per problem), click's usage errors included; never a
  traceback, never another exception;
- files that were there before are left byte for byte as they were (a command writes new files only, and never
  touches its inputs); after an error nothing new is there either, except the import report of `data import`
  (which says why nothing was imported).
Model arguments name no model that loads (and the Hub is off), so no command ever starts a model; `quickstart`,
`experiment` (its config is fuzzed in test_fuzz_config.py) and `data fetch` (network) are left out.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from fuzzing import fuzz, snapshot
from hypothesis import given
from hypothesis import strategies as st
from typer.main import get_command
from typer.testing import CliRunner

from prefrec.cli import app
from prefrec.samples import Comparison, Sample, read_jsonl, write_samples

LEFT_OUT = {"quickstart", "experiment", "data fetch"}


def _commands() -> dict[str, tuple[int, list[tuple[str, bool]]]]:
    """{command path: (its positional arguments, [(option, whether a flag)])} for every command fuzzed."""
    out = {}

    def walk(cmd, path):
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, path + [name])
        if not getattr(cmd, "commands", None) and " ".join(path) not in LEFT_OUT:
            args = sum(p.param_type_name == "argument" for p in cmd.params)
            opts = [(o, bool(getattr(p, "is_flag", False))) for p in cmd.params if p.param_type_name == "option"
                    for o in p.opts + p.secondary_opts]
            out[" ".join(path)] = (args, opts)

    walk(get_command(app), [])
    return out


COMMANDS = _commands()
PATHS = ["raw", "raw/u.data", "samples.jsonl", "peer.jsonl", "bad.jsonl", "config.yaml", "titles.txt", "empty",
         "missing", "missing/x.jsonl", "out", ".", "raw/u.item"]
WORDS = ["0", "1", "-1", "3", "20", "0.5", "nan", "inf", "-inf", "1e400", "99999999999999999999", "", " ", "all",
         "ml-100k", "recbole", "pairwise", "candidates", "yesno", "title", "letter", "number", "movies", "trl",
         "alpaca", "keep", "drop", "file", "sum", "mean", "fp32", "bf16", "few-shot", "popularity", "wt-fuzz-no-such",
         "test", "-", "--", "--help", "é", "a b"]
VALUE = st.sampled_from(PATHS + WORDS) | st.text(max_size=6).filter(lambda t: "\x00" not in t)
# --out names no input, and no folder below a new one: a command's output over an existing file or folder, and the
# parent folders a failed run leaves, have tests of their own below
OUT = st.sampled_from(["out", "r.json", "x.jsonl", "", "-"])


@st.composite
def argvs(draw, path: str) -> list[str]:
    n_args, opts = COMMANDS[path]
    argv = path.split() + [draw(VALUE) for _ in range(n_args)]
    for _ in range(draw(st.integers(0, 6))):
        opt, flag = draw(st.sampled_from(opts))
        argv += [opt] if flag else [opt, draw(OUT if opt == "--out" else VALUE)]
    if draw(st.integers(0, 9)) == 0:  # a stray token anywhere
        argv.insert(draw(st.integers(0, len(argv))), draw(VALUE))
    return argv


TRAIN_CONFIG = ("output_dir: {out}\nmodel: {{name: wt-fuzz-no-such}}\ndata: {{train: samples.jsonl}}\n"
                "stages: [{{kind: sft, max_steps: 1}}]\n")  # 3 samples, a batch of 4: refused before any model loads


def _sample(i: int) -> Sample:
    return Sample(id=f"s{i}", task="pairwise", domain="movies", prefix=f"The user watched Movie {i}.\n",
                  comparisons=[Comparison(question="Rank A (1995) and B (1996).", chosen="A (1995), B (1996)",
                                          rejected=["B (1996), A (1995)"])],
                  user=str(i), history=[f"Movie {i}"], candidates=["A (1995)", "B (1996)"], target="A (1995)")


def build_sandbox(root: Path) -> Path:
    """The inputs every argument list may name (PATHS), in `root`."""
    raw = root / "raw"
    raw.mkdir(parents=True)
    genres = "|".join("0" * 19)
    (raw / "u.item").write_text("".join(f"{i}|Movie {i} (199{i % 10})|01-Jan-1995||http://x|{genres}\n"
                                        for i in range(1, 26)), encoding="latin-1")
    (raw / "u.data").write_text("".join(f"{u}\t{i}\t{1 + (u * i) % 5}\t{880000000 + 1000 * i + u}\n"
                                        for u in range(1, 31) for i in range(1, 26) if (u + i) % 3))
    write_samples(root / "samples.jsonl", [_sample(i) for i in range(3)])
    (root / "peer.jsonl").write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "a", "rejected": "b"}) + "\n"
                                             for i in range(3)))
    (root / "config.yaml").write_text(TRAIN_CONFIG.format(out="run"))
    (root / "titles.txt").write_text("Toy Story (1995)\nHeat (1995)\n")
    (root / "bad.jsonl").write_text('{"neither": "a prompt"}\n[1, 2]\n')  # every row refused
    (root / "empty").mkdir()
    return root


@pytest.fixture
def offline(monkeypatch):
    """No Hub look-up (a name like owner/x would be tried online): HF_HUB_OFFLINE, and the flag huggingface_hub
    read from it when it was imported."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def template():
    with tempfile.TemporaryDirectory(prefix="wt-fuzz-cli-") as tmp:
        yield build_sandbox(Path(tmp) / "sandbox")


def invoke(argv: list[str], template: Path):
    """Run `prefrec ARGV` in a fresh copy of the sandbox and check the module docstring's properties."""
    with tempfile.TemporaryDirectory(prefix="wt-fuzz-") as tmp:
        box = Path(tmp) / "box"
        shutil.copytree(template, box)
        before, cwd = snapshot(box), os.getcwd()
        os.chdir(box)
        try:
            r = CliRunner().invoke(app, argv)
        finally:
            os.chdir(cwd)
        after = snapshot(box)
    assert r.exit_code in (0, 2) and (r.exception is None or isinstance(r.exception, SystemExit)), \
        (argv, r.exit_code, r.exception, r.output[-2000:])
    assert "Traceback" not in r.output
    changed = sorted(k for k, v in before.items() if after.get(k, b"gone") != v)
    assert changed == [], (argv, changed)
    if r.exit_code == 2:  # one error line, last (after any progress lines); several config problems: one each
        lines = r.stderr.rstrip("\n").split("\n")  # terminal lines: an argument echoed may hold "\r" or "\x85"
        at = [i for i, x in enumerate(lines) if x.startswith("error: ")]
        assert len(at) == 1 and (at[0] == len(lines) - 1 or " problems in " in lines[at[0]]
                                 and all(x.startswith("  ") for x in lines[at[0] + 1:])), (argv, r.stderr)
        new = sorted(k for k in after if k not in before)
        if argv[:2] == ["data", "import"]:  # the report of why nothing was imported, in its --out folder
            new = [k for k in new if after[k] is not None
                   and not k.endswith(("import_report.json", ".prefrec-files.json"))]  # and its manifest
        assert new == [], (argv, new)
    return r, after


@pytest.mark.parametrize("command", sorted(COMMANDS))
@fuzz(25)
@given(data=st.data())
def test_any_arguments_give_one_clear_error_or_a_result_and_touch_no_input(command, data, template, offline):
    invoke(data.draw(argvs(command), label="argv"), template)


def _changed(raw: bytes, data) -> bytes:
    at = data.draw(st.integers(0, len(raw)), label="at")
    return raw[:at] + data.draw(st.binary(max_size=5), label="bytes") + raw[at + data.draw(st.integers(0, 5)):]


@fuzz(40)
@given(data=st.data(), name=st.sampled_from(["peer.jsonl", "samples.jsonl"]))
def test_data_import_of_a_changed_file_gives_one_clear_error_or_readable_samples(data, name, template):
    with tempfile.TemporaryDirectory(prefix="wt-fuzz-") as tmp:
        box = Path(tmp) / "box"
        shutil.copytree(template, box)
        (box / name).write_bytes(_changed((box / name).read_bytes(), data))
        r, after = invoke(["data", "import", name, "--out", "imported"], box)
        out = Path(tmp) / "imported.jsonl"
        if r.exit_code == 0:  # what it wrote, every stage reads
            out.write_bytes(after[f"imported/{Path(name).stem}.jsonl"])
            assert read_jsonl(out)


@fuzz(40)
@given(data=st.data(), name=st.sampled_from(["u.data", "u.item"]), task=st.sampled_from(["pairwise", "yesno"]))
def test_data_prepare_of_a_changed_log_gives_one_clear_error_or_samples(data, name, task, template):
    with tempfile.TemporaryDirectory(prefix="wt-fuzz-") as tmp:
        root = Path(tmp) / "t"
        shutil.copytree(template, root)
        (root / "raw" / name).write_bytes(_changed((root / "raw" / name).read_bytes(), data))
        invoke(["data", "prepare", "--dataset", "ml-100k", "--source", "raw", "--task", task, "--out", "prep",
                "--min-history", "2", "--min-positives", "1", "--min-negatives", "1"], root)


@pytest.mark.parametrize("argv", [
    # issue #43 point 1: `data import peer.jsonl --out .` rewrote its own input; with every row refused it deleted
    # it; `data export --out FILE` overwrote a file it did not write
    ["data", "import", "peer.jsonl", "--out", "."],
    ["data", "import", "bad.jsonl", "--out", "."],
    ["data", "export", "samples.jsonl", "--format", "trl", "--out", "peer.jsonl"],
    pytest.param(["data", "prepare", "--dataset", "ml-100k", "--source", "raw", "--task", "pairwise", "--out", "raw",
                  "--min-history", "2", "--min-positives", "1", "--min-negatives", "1"], id="prepare-into-input")])
def test_an_output_over_an_input_leaves_the_input_alone(argv, template, offline):
    invoke(argv, template)


def test_a_training_run_that_fails_at_once_leaves_no_folder(tmp_path, offline):
    box = build_sandbox(tmp_path / "box")
    (box / "config.yaml").write_text(TRAIN_CONFIG.format(out="runs/x"))
    r, _ = invoke(["train", "config.yaml"], box)  # the fuzzer's find: exit 2, and runs/ left behind
    assert r.exit_code == 2


def test_a_huge_number_in_a_titles_file_is_one_line_naming_the_file(tmp_path, offline):
    box = build_sandbox(tmp_path / "box")
    (box / "big.json").write_text("[" + "9" * 5000 + "]\n")
    r, _ = invoke(["rank", "wt-fuzz-no-such", "--history", "big.json", "--candidates", "titles.txt"], box)
    assert "big.json" in r.stderr, r.stderr
