"""The source layout the architecture promises (issues 17, 32): short functions, imports that go one way, a test
module for every module (or the stated reason why another covers it)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "prefrec"
TESTS = Path(__file__).resolve().parent

# modules whose tests live in a module named for the job they serve, and why
COVERED_BY = {
    "errors.py": "test_cli.py (the one-line error every command prints)",
    "paths.py": "test_data_fetch.py (the cache and the offline copies)",
    "provenance.py": "test_results.py (every results file carries it)",
    "samples.py": "test_data_samples.py",
    "training/recipe.py": "test_train.py (the recipe end to end: resume, DDP, stages)",
    "training/batches.py": "test_train.py (k selection, epoch order, shards)",
    "training/stages.py": "test_train.py and test_methods.py (each stage's loss and metrics)",
    "training/reference.py": "test_train.py (the reference cache against the naive path)",
    "training/runfolder.py": "test_train.py (checkpoints, resume, folder rules)",
    "scoring/trees.py": "test_packing.py (trees are what packing packs)",
    "scoring/encoding.py": "test_packing.py and test_model_families.py (chat templates, end of turn)",
    "evaluation/scores.py": "test_evaluate.py, test_answers.py, test_trie.py",
    "data/exporters.py": "test_data_importers.py (every export imports back)",
    "baselines/common.py": "test_baselines.py", "baselines/bpr.py": "test_baselines.py",
    "baselines/popularity.py": "test_baselines.py", "baselines/run.py": "test_baselines.py",
    "baselines/cmf.py": "test_baselines.py", "baselines/sequential.py": "test_baselines.py",
    **{f"data/readers/{m}.py": "test_data_readers.py" for m in ("base", "movielens", "recbole", "amazon", "lastfm",
                                                                 "goodreads")},
}
MAX_LINES = 60


def _modules():
    return [p for p in SRC.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")]


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


def test_no_function_over_60_lines():
    long = {f"{p.relative_to(SRC)}:{name}": n for p in _modules() for name, n in _functions(p) if n > MAX_LINES}
    assert long == {}


def test_every_module_has_a_test_module_or_a_stated_reason():
    missing = []
    for p in _modules():
        rel = str(p.relative_to(SRC))
        names = {f"test_{p.stem}.py", f"test_{p.parent.name}_{p.stem}.py"}
        if not any((TESTS / n).is_file() for n in names) and rel not in COVERED_BY:
            missing.append(rel)
    assert missing == []
    stale = [m for m in COVERED_BY if not (SRC / m).is_file()]
    assert stale == []  # a reason for a module that is gone says nothing


def _imports(path: Path) -> set[str]:
    """prefrec modules a module imports at its top level (imports inside functions are deliberate laziness)."""
    out = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prefrec"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("prefrec"))
    return out


def test_module_imports_have_no_cycle():
    name = {p: "prefrec." + ".".join(p.relative_to(SRC).with_suffix("").parts) for p in _modules()}
    known = set(name.values())
    graph = {n: {m for m in _imports(p) if m in known and m != n} for p, n in name.items()}
    state: dict[str, int] = {}

    def visit(n, path):
        if state.get(n) == 1:
            raise AssertionError(f"import cycle: {' -> '.join(path + [n])}")
        if state.get(n) == 2:
            return
        state[n] = 1
        for m in graph[n]:
            visit(m, path + [n])
        state[n] = 2

    for n in graph:
        visit(n, [])
