"""The source layout the architecture promises (issue 17): a short recipe, small functions."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "prefrec"


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


def test_the_recipe_reads_on_one_screen():
    """train() is plan -> stages -> finalise; the stage loop, batches, reference cache and run folder live apart."""
    lengths = dict(_functions(SRC / "training" / "recipe.py"))
    assert lengths["train"] <= 60, lengths["train"]
    assert max(lengths.values()) <= 80, {k: v for k, v in lengths.items() if v > 80}


def test_no_function_over_80_lines():
    long = {f"{p.relative_to(SRC)}:{name}": n for p in SRC.rglob("*.py") for name, n in _functions(p) if n > 80}
    assert long == {}


def test_names_that_meant_two_things_mean_one():
    """load_samples, read_records and _slug each named two different readers/formatters (issue 17); each meaning
    now has its own name, so none of these is defined in more than one module."""
    where: dict[str, list[str]] = {}
    for p in SRC.rglob("*.py"):
        for node in ast.parse(p.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef):
                where.setdefault(node.name, []).append(str(p.relative_to(SRC)))
    names = ("load_samples", "read_records", "_slug", "read_samples_and_stats", "read_test_samples",
             "read_peer_records", "read_import_records", "_out_dir_name", "_file_stem")
    assert {n: where[n] for n in names if len(where.get(n, [])) > 1} == {}
