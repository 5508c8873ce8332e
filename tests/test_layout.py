"""The source layout the architecture promises (issues 17, 32): short functions, imports that go one way, a test
module for every module (or the stated reason why another covers it)."""

import ast
import re
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
    "scoring/generation.py": "test_evaluate.py, test_trie.py, test_vllm_generate.py (greedy answers, the trie)",
    "tasks/base.py": "test_tasks.py and test_tasks_extend.py (a toy task built from the row type)",
    "tasks/formats.py": "test_answers.py (every shipped row, and a toy row in test_tasks_extend.py)",
    **{f"tasks/{m}.py": "test_data_protocols.py (the protocol), test_answers.py and test_evaluate.py (scoring), "
                        "test_facts.py and test_prior.py (facts), test_rank.py, test_baselines.py"
       for m in ("pairwise", "candidates", "yesno")},
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


# The layers, lowest first: a module imports only from its own layer and the ones below it. Function-level imports
# count too (ast.walk reads every import), so laziness never hides a cycle. A module's layer is its longest prefix.
LAYERS = [
    ("data", ["prefrec.errors", "prefrec.paths", "prefrec.io", "prefrec.provenance", "prefrec.results",
              "prefrec.samples", "prefrec.prompts", "prefrec.items", "prefrec.data"]),
    ("scoring", ["prefrec.scoring", "prefrec.model"]),  # packed forwards, generation, loading a model
    ("tasks", ["prefrec.tasks"]),  # each task's protocol, wording, formats, scoring, metrics, facts, ranking
    # building samples of a task: a protocol from a log (prepare), other projects' prompt files in and out
    ("building", ["prefrec.data.prepare", "prefrec.data.importers", "prefrec.data.peer", "prefrec.data.exporters"]),
    ("training", ["prefrec.training", "prefrec.card"]),  # the trainer writes its run's model card
    ("evaluation", ["prefrec.evaluation"]),
    ("baselines", ["prefrec.baselines"]),  # they report through evaluation's facts and item prior
    ("serving", ["prefrec.serving"]),
    ("commands", ["prefrec.api", "prefrec.cli", "prefrec.experiment", "prefrec.launcher", "prefrec.quickstart",
                  "prefrec.export", "prefrec.__main__"]),
]


def _name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(("prefrec",) + (parts[:-1] if parts[-1] == "__init__" else parts))


def _layer(module: str) -> int:
    best = max(((len(prefix), i) for i, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), default=None)
    assert best is not None, f"{module} is in no layer of LAYERS"
    return best[1]


def _imports(path: Path) -> set[str]:
    """Every prefrec module a module imports, at its top and inside functions alike."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prefrec"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("prefrec"))
    return out


def test_imports_go_down_the_layers():
    names = {_name(p) for p in SRC.rglob("*.py")} - {"prefrec"}
    upward = []
    for p in SRC.rglob("*.py"):
        me = _name(p)
        if me == "prefrec":
            continue
        for m in _imports(p) & names:
            if _layer(m) > _layer(me):
                upward.append(f"{me} ({LAYERS[_layer(me)][0]}) imports {m} ({LAYERS[_layer(m)][0]})")
    assert sorted(upward) == []


def test_only_the_commands_import_prefrec_inside_functions():
    """A command loads what it needs when it runs, so that `prefrec --help` starts without torch (test_cli.py);
    below the commands every prefrec import is at the top of its module, where a reader sees it."""
    lazy = []
    for p in SRC.rglob("*.py"):
        if _name(p) == "prefrec" or _layer(_name(p)) == len(LAYERS) - 1:
            continue
        tree = ast.parse(p.read_text(encoding="utf-8"))
        top = {id(node) for node in tree.body}
        lazy += [f"{p.relative_to(SRC)}:{node.lineno}" for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and id(node) not in top and (node.module or "").startswith("prefrec")]
    assert lazy == []


def test_module_imports_have_no_cycle():
    name = {p: _name(p) for p in SRC.rglob("*.py")}
    known = set(name.values()) - {"prefrec"}
    graph = {n: {m for m in _imports(p) if m in known and m != n and not n.startswith(m + ".")}
             for p, n in name.items()}
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


def test_no_task_or_format_name_outside_the_tasks():
    """Code above the tasks asks the task's row; only prefrec/tasks names a task or an answer format."""
    pattern = re.compile(r"""(==|!=|\bin)\s*\(?["'](pairwise|candidates|yesno|title|letter|number)["']""")
    hits = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py") if "tasks" not in p.relative_to(SRC).parts
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if pattern.search(line.split("#")[0])]
    assert hits == []
