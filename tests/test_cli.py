"""Conventions every `prefrec` command keeps (prefrec.cli): one error prefix, one meaning of --limit, the --out
rule, and a start-up that loads no model library."""

import subprocess
import sys

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from prefrec.cli import _limit, app
from prefrec.errors import UserError


@pytest.mark.parametrize("args,needle", [
    (["serve", "x", "--port", "abc"], "Invalid value for '--port'"),
    (["data", "prepare"], "Missing option '--dataset'"),
    (["no-such-command"], "No such command"),
    (["data", "stats", "/no/such/folder"], "no stats.json"),
    (["cache", "prune"], "give --older-than DAYS or --all"),
    (["cache", "prune", "--all", "--older-than", "3"], "give --older-than DAYS or --all"),
    (["cache", "prune", "--older-than", "-1"], "expected a number of days ≥ 0"),
])
def test_every_error_is_one_line_starting_with_error(args, needle):
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2
    assert r.output.startswith("error: ") and needle in r.output and "Traceback" not in r.output
    assert "Error:" not in r.output  # click's own prefix


def test_limit_means_the_first_n_samples_everywhere():
    assert _limit(None) is None and _limit(None, default=200) == 200
    assert _limit("all", default=200) is None and _limit("5") == 5
    for bad in ("0", "-3", "five"):
        with pytest.raises(UserError, match="--limit"):
            _limit(bad)


@pytest.mark.parametrize("args", [["eval", "embedded", "--samples", "x.jsonl", "--limit", "0"],
                                  ["explain", "embedded", "--samples", "x.jsonl", "--compare", "--limit", "0"]])
def test_limit_zero_is_the_same_error_in_eval_and_explain(args):
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "error: --limit must be at least 1 (or 'all' for every sample), got 0" in r.output


def _out_options():
    """{command path: the --out option} for every command that has one."""
    found = {}

    def walk(cmd, path):
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, path + [name])
        for p in getattr(cmd, "params", []):
            if "--out" in getattr(p, "opts", []):
                found[" ".join(path)] = p

    walk(get_command(app), [])
    return found


def test_out_is_required_for_conversions_and_defaults_to_the_command_name_elsewhere():
    outs = _out_options()
    assert {c for c, p in outs.items() if p.required} == {"data prepare", "data import", "data export",
                                                          "data swap-histories", "export"}
    assert str(outs["report"].default) == "report" and str(outs["explain"].default) == "explain"
    # the others default to None: a folder derived from the input (train: output_dir; eval: RUN/eval/... or
    # eval/...; baseline: baselines/DATASET-TASK) or stdout (rank)
    assert {c for c, p in outs.items() if not p.required and p.default is None} == {"train", "eval", "baseline", "rank"}


def test_start_up_loads_no_model_library():
    code = "import sys, prefrec.cli; print(sorted(m for m in ('torch', 'transformers', 'scipy', 'matplotlib') " \
           "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr
