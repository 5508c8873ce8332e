"""Experiment grids: methods × datasets × k × shots × β × seeds, resumable, one report at the end.

An experiment YAML (configs/experiments/*.yaml) names the datasets, the methods and the values to sweep. Each cell
of the grid is a folder under `output_dir/cells/` holding a `results.json` (the schema of prefrec.results); a cell
whose results.json exists is skipped, so re-running the same command after a kill continues where it stopped.
The report (`prefrec.evaluation.report.make_report`) is written to `report_dir` (docs/results/<name>/ by default) with a
results.md beside the plots.

Methods:
    zero-shot             the base model, untrained
    sft                   SFT only (TALLRec-style)
    dpo | dmpo | sdpo     SFT, then the alignment stage with k negatives (dpo always uses k = 1)
    dmpo-only | sdpo-only the alignment stage without SFT (reference = the base model)
    popularity, liked-share, bpr, sasrec, gru4rec, bert4rec, caser, cmf   traditional baselines, one cell per regime

The data of every seed is prepared with that seed (the sampled users, negatives and prompt orders change with it),
so "mean ± std over seeds" covers both data sampling and training randomness, and methods are paired by seed.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


from prefrec import io
from prefrec.errors import UserError, did_you_mean
from prefrec.launcher import Job, LauncherConfig, check_cluster, run_jobs
from prefrec.results import PER_SAMPLE, RESULTS, has_results, is_run_dir, write_results
from prefrec.tasks import task as task_row
from prefrec.training import methods
# the training config's checker and --set parser: one dialect for every config file
from prefrec.training.config import BAD, Checker, apply_override, apply_overrides, parse_yaml  # noqa: F401


@dataclass
class DatasetSpec:
    label: str  # the name shown in tables
    dataset: str | None = None  # reader name for `prefrec data prepare` (ml-100k, ml-1m, lastfm, ...)
    source: str = "auto"  # a path, or "auto" (../shared/data copy, the cache, or a fetch)
    task: str = "pairwise"
    prepare: dict = field(default_factory=dict)  # extra prepare() arguments (n_train, n_valid, n_test, negatives...)
    prepared: str | None = None  # use an already prepared folder instead (train/valid/test.jsonl); seeds reuse it
    evaluate: bool = True  # False: only a training source for another dataset's train_from (no cells of its own)
    train_from: str | None = None  # cross-domain: train on the dataset with this label, evaluate on this one
    # peer prompt files (e.g. the DMPO release) imported as the splits: {train: FILE, valid: FILE, test: FILE};
    # a path starting with "shared:" is read from ../shared/data
    imported: dict | None = None
    # the methods to run on this dataset (a subset of the experiment's `methods`); None = all of them. A grid with a
    # pairwise and a candidates dataset runs DMPO on the one and S-DPO on the other without the crossed cells
    methods: list[str] | None = None
    ks: list[int] | None = None  # this dataset's k values instead of the grid's `ks` (15 negatives on candidates)
    # this dataset's evaluate() options over the experiment's `eval:` (candidates without generation in a grid whose
    # pairwise datasets need none either way, or a smaller limit)
    eval: dict = field(default_factory=dict)
    # this dataset's training settings over the experiment's `train:` for the cells that train on it (a candidates
    # dataset picking its checkpoint by rank_mrr in a grid whose pairwise datasets pick by auc)
    train: dict = field(default_factory=dict)


@dataclass
class ExperimentConfig:
    name: str
    datasets: list[DatasetSpec]
    methods: list[str]
    ks: list[int] = field(default_factory=lambda: [3])
    shots: list[int | None] = field(default_factory=lambda: [None])  # None = the prepared train split as is
    betas: list[float | None] = field(default_factory=lambda: [0.1])  # None: each loss's own default β (its row)
    seeds: list[int] = field(default_factory=lambda: [0])
    regimes: list[str] = field(default_factory=lambda: ["few-shot", "full"])
    models: list[str] = field(default_factory=lambda: ["embedded"])
    train: dict = field(default_factory=dict)  # TrainConfig fields shared by every LLM cell (model, lora, ...)
    sft: dict = field(default_factory=dict)  # StageConfig fields of the SFT stage
    align: dict = field(default_factory=dict)  # StageConfig fields of the alignment stage
    eval: dict = field(default_factory=dict)  # evaluate() arguments (limit, generate, max_new_tokens, ...)
    baseline: dict = field(default_factory=dict)  # run_baseline() arguments (epochs, dim, ...)
    # named overlays of the LLM cells' training config, a grid axis (cell folders get "-var-NAME"): e.g. text-only
    # vs collaborative item tokens, {text: {}, hybrid: {items: {embeddings: "@sasrec", ...}}}. "@sasrec" in
    # items.embeddings is the sasrec-full cell of the same dataset and seed (listed in methods, so it runs first)
    variants: dict = field(default_factory=dict)
    # resources of each cell's job under `--launcher local|slurm` (launcher.LauncherConfig); the sequential run
    # ignores them
    launcher: dict = field(default_factory=dict)
    output_dir: str | None = None
    report_dir: str | None = None


@dataclass
class EvalConfig:
    """An experiment's `eval:` section: the keyword arguments of evaluation.evaluate.evaluate that a grid may set
    (tests/test_experiment.py checks they are evaluate()'s)."""
    split: str = "test"
    limit: int | None = None
    generate: bool = True
    constrained: bool = False
    gen_backend: str = "transformers"
    max_new_tokens: int = 64
    gen_batch_size: int = 8
    max_tokens_per_batch: int | None = None
    dtype: str | None = None
    progress: bool = True


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """The checked ExperimentConfig of a YAML file (with `--set` overrides applied first): every problem in one
    UserError, through the same checker as the training config."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such experiment config") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the experiment config ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); save the config as UTF-8") from None
    raw = parse_yaml(text, str(path))
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    overridden = {apply_override(raw, o) for o in overrides or []}
    ck = Checker(str(path), overridden)
    cfg = ck.dataclass(ExperimentConfig, raw, "")
    if cfg is not BAD:
        _check_experiment(cfg, ck)
    ck.raise_problems()
    cfg.output_dir = cfg.output_dir or f"experiments/{cfg.name}"
    cfg.report_dir = cfg.report_dir or f"docs/results/{cfg.name}"
    return cfg


def _prepare_options() -> set[str]:
    """The keyword options a dataset's `prepare:` may set (data.prepare.prepare's, less those the grid sets)."""
    import inspect

    from prefrec.data.prepare import prepare

    params = inspect.signature(prepare).parameters
    return {k for k, p in params.items() if p.kind is p.KEYWORD_ONLY} - {"seed", "warn"}


def _check_experiment(cfg: ExperimentConfig, ck: Checker) -> None:
    """What the types do not say: where each dataset comes from, known methods, an eval: of evaluate's options."""
    from prefrec.baselines.run import BASELINES

    known = list(methods.llm_methods()) + list(BASELINES)
    for i, m in enumerate(cfg.methods):
        if m not in known:
            ck.fail(f"methods[{i}]", f"{m!r} is not one of {known}")
    for i, d in enumerate(cfg.datasets):
        if not (d.prepared or d.dataset or d.imported):
            ck.fail(f"datasets[{i}]", "needs 'dataset' (to prepare), 'prepared' (a folder) or 'imported' (peer "
                    "files per split)")
        if d.methods is not None and not set(d.methods) <= set(cfg.methods):
            ck.fail(f"datasets[{i}].methods", f"{sorted(set(d.methods) - set(cfg.methods))} not in the "
                    f"experiment's methods {cfg.methods}")
    ck.dataclass(EvalConfig, cfg.eval, "eval")
    options = _prepare_options()
    for i, d in enumerate(cfg.datasets):
        if d.eval:
            ck.dataclass(EvalConfig, d.eval, f"datasets[{i}].eval")
        for key in d.prepare:
            if key not in options:
                ck.fail(f"datasets[{i}].prepare.{key}", f"unknown key; `prefrec data prepare` takes "
                        f"{sorted(options)}{did_you_mean(key, options)}")
    launcher = ck.dataclass(LauncherConfig, cfg.launcher, "launcher")
    if launcher is not BAD and launcher.max_jobs < 1:
        ck.fail("launcher.max_jobs", f"expected at least 1, got {launcher.max_jobs}")


# ---------------------------------------------------------------------------------------------------------------
# The grid

@dataclass(frozen=True)
class Cell:
    dataset: str
    method: str
    model: str
    k: int | None
    shots: int | None
    beta: float | None
    seed: int
    regime: str | None
    variant: str | None = None

    def folder(self) -> str:
        parts = [self.method] + ([f"var-{self.variant}"] if self.variant else [])
        if self.regime:
            parts.append(self.regime)
        if self.model != "embedded" and self.method in methods.llm_methods():
            parts.append("model-" + Path(self.model).name)
        if self.k is not None:
            parts.append(f"k{self.k}")
        if self.shots is not None:
            parts.append(f"shots{self.shots}")
        if self.beta is not None:
            parts.append(f"beta{self.beta:g}")
        parts.append(f"seed{self.seed}")
        return f"{self.dataset}/{'-'.join(parts)}"


def cells(cfg: ExperimentConfig) -> list[Cell]:
    """Every cell of the grid, without duplicates (a sweep value that does not apply to a method is dropped)."""
    out: list[Cell] = []
    grid = ((ds, *rest) for ds in cfg.datasets if ds.evaluate
            for rest in itertools.product(cfg.methods, cfg.models, ds.ks or cfg.ks, cfg.shots, cfg.betas, cfg.seeds))
    for ds, method, model, k, shots, beta, seed in grid:
        if ds.methods is not None and method not in ds.methods:
            continue
        aligned = methods.method_is_aligned(method)
        trained = method in methods.llm_methods() and method != methods.ZERO_SHOT
        regimes = cfg.regimes if method not in methods.llm_methods() else [None]
        variants = list(cfg.variants) if trained and cfg.variants else [None]
        for regime, variant in itertools.product(regimes, variants):
            out.append(Cell(dataset=ds.label, method=method, model=model if method in methods.llm_methods() else "-",
                            k=methods.cell_k(method, k), shots=shots if (trained or regime == "few-shot") else None,
                            beta=beta if aligned else None, seed=seed, regime=regime, variant=variant))
    return list(dict.fromkeys(out))


def _prepared_dir(cfg: ExperimentConfig, ds: DatasetSpec, seed: int, k: int | None) -> Path:
    """The prepared samples of one dataset and seed (made once, reused by every cell of that seed)."""
    if ds.prepared:
        return Path(ds.prepared)
    if ds.imported:
        return _imported_dir(cfg, ds)
    from prefrec.data.fetch import ensure_dataset
    from prefrec.data.prepare import prepare

    folder = Path(cfg.output_dir) / "data" / f"{ds.label}-{ds.task}-seed{seed}"
    if not (folder / "stats.json").exists():
        source = ensure_dataset(ds.dataset) if ds.source == "auto" else _shared_path(ds.source)
        kwargs = dict(ds.prepare)
        negatives = _negatives(cfg, ds)
        if negatives is not None:
            kwargs["negatives"] = negatives
        prepare(ds.dataset, source, ds.task, folder, seed=seed, **kwargs)
    return folder


def _negatives(cfg: ExperimentConfig, ds: DatasetSpec) -> int | None:
    """Negatives prepared per sample: `prepare.negatives` if given, else the largest k of the grid (every k then
    trains on the same users and uses the first k). Recorded in settings.json, so a grid whose largest k grows
    after its data were prepared is refused instead of training on too few negatives."""
    if ds.prepared or ds.imported or task_row(ds.task).defaults["negatives"] is None:  # a task without negatives
        return None
    return ds.prepare.get("negatives", max(cfg.ks))


def _shared_path(p: str) -> Path:
    from prefrec.paths import shared_data_dir

    if p.startswith("shared:"):
        root = shared_data_dir()
        if root is None:
            raise UserError(f"{p}: ../shared/data is absent, so the shared copy cannot be read")
        return root / p[len("shared:"):]
    return Path(p)


def _imported_dir(cfg: ExperimentConfig, ds: DatasetSpec) -> Path:
    """Import peer prompt files (one per split) into a prepared folder; the same for every seed (fixed files)."""
    from prefrec import io
    from prefrec.data.importers import import_file
    from prefrec.samples import write_samples

    folder = Path(cfg.output_dir) / "data" / f"{ds.label}-imported"
    if (folder / "stats.json").exists():
        return folder
    stats = {"dataset": ds.label, "task": ds.task, "imported": {}, "split_sizes": {}}
    for split, file in ds.imported.items():
        if split not in ("train", "valid", "test"):
            raise UserError(f"experiment {cfg.name}: datasets {ds.label}: imported.{split}: expected train, valid "
                            f"or test")
        samples, report = import_file(_shared_path(file))
        write_samples(folder / f"{split}.jsonl", samples)
        stats["imported"][split] = str(file)
        stats["split_sizes"][split] = len(samples)
    io.write_json(folder / "stats.json", stats)
    return folder


def _train_config(cfg: ExperimentConfig, cell: Cell, data_dir: Path, run_dir: Path, stages: list[str],
                  model: str):
    from prefrec.training.config import config_from_dict

    raw = _cell_train(cfg, cell)
    if "sft" not in stages and isinstance(raw.get("items"), dict):
        raw["items"].pop("curriculum", None)  # the curriculum is SFT's; an alignment stage trains on hybrid prompts
    raw["model"] = {**raw.get("model", {}), "name": model}
    raw["data"] = {**raw.get("data", {}), "dir": str(data_dir)}
    if cell.shots is not None:
        raw["data"]["max_train_samples"] = cell.shots
    raw["seed"] = cell.seed
    raw["output_dir"] = str(run_dir)
    raw.setdefault("progress", sys.stderr.isatty())
    raw["stages"] = [{"kind": "sft", **cfg.sft} if kind == "sft" else
                     {**cfg.align, "kind": kind, "k": cell.k, "beta": cell.beta} for kind in stages]
    return config_from_dict(raw, source=f"experiment {cfg.name} cell {cell.folder()}")


def _cell_train(cfg: ExperimentConfig, cell: Cell) -> dict:
    """A cell's training settings: the grid's `train`, then the own `train` of the dataset it trains on (its
    train_from source, if any: validation reads that dataset's samples), then its variant's overlay."""
    ds = next(d for d in cfg.datasets if d.label == cell.dataset)
    source = next((d for d in cfg.datasets if d.label == ds.train_from), ds)
    return _overlay(_overlay(copy.deepcopy(cfg.train), copy.deepcopy(source.train)), _variant(cfg, cell))


def _variant(cfg: ExperimentConfig, cell: Cell) -> dict:
    """The cell's training overlay, with "@sasrec" resolved to the item table of its dataset's and seed's SASRec
    cell."""
    overlay = copy.deepcopy(cfg.variants.get(cell.variant) or {})
    items = overlay.get("items")
    if isinstance(items, dict) and items.get("embeddings") == "@sasrec":
        items["embeddings"] = str(Path(cfg.output_dir) / "cells" / _sasrec_cell(cell).folder() / "eval")
    return overlay


def _sasrec_cell(cell: Cell) -> Cell:
    """The sasrec-full cell of a cell's dataset and seed (the item table "@sasrec" names)."""
    return Cell(dataset=cell.dataset, method="sasrec", model="-", k=None, shots=None, beta=None, seed=cell.seed,
                regime="full")


def _overlay(base: dict, over: dict) -> dict:
    """`base` with `over` laid on it, mapping by mapping."""
    for key, value in over.items():
        base[key] = _overlay(dict(base.get(key) or {}), value) if isinstance(value, dict) and \
            isinstance(base.get(key), dict) else value
    return base


def sft_cell_of(cell: Cell) -> Cell:
    """The `sft` cell whose run an alignment cell (dpo, dmpo, sdpo, ...) starts from: same dataset, model, shots,
    seed and variant."""
    return Cell(dataset=cell.dataset, method="sft", model=cell.model, k=None, shots=cell.shots, beta=None,
                seed=cell.seed, regime=None, variant=cell.variant)


def _train_cell(cfg: ExperimentConfig, cell: Cell, train_dir: Path, out: Path) -> Path:
    """Train the cell's model; returns its run folder.

    SFT is shared: dpo/dmpo/sdpo cells start from the run of the `sft` cell with the same dataset, model, shots and
    seed (trained here if it does not exist yet), so a grid over methods, k and β trains each SFT model once. The
    alignment stage then takes the SFT model, as it is when the stage starts, as its frozen reference.
    """
    from prefrec.training.recipe import train

    root = Path(cfg.output_dir) / "cells"
    run_dir = out / "run"
    kinds, after_sft = methods.method_stages(cell.method)
    if not after_sft:
        train(_train_config(cfg, cell, train_dir, run_dir, kinds, cell.model), resume=True)
        return run_dir
    sft_cell = sft_cell_of(cell)
    sft_run = root / sft_cell.folder() / "run"
    if not is_run_dir(sft_run):
        train(_train_config(cfg, sft_cell, train_dir, sft_run, ["sft"], cell.model), resume=True)
        if sft_cell.folder() in _committed(cfg):
            _check_reproduced(Path(cfg.report_dir) / "cells" / sft_cell.folder() / "run" / "metrics.jsonl",
                              sft_run / "metrics.jsonl")
    tc = _train_config(cfg, cell, train_dir, run_dir, kinds, str(sft_run))
    _borrow_reference(root / cell.dataset, run_dir, tc)
    train(tc, resume=True)
    return run_dir


# How far a retrained SFT model's validation figures may be from the committed ones: the same seed and data give the
# same figures on one machine; another CPU's bf16 kernels may round differently, which moves an AUC over a few
# hundred comparisons by a few thousandths.
REPRODUCE_TOL = 0.01


def _valid_rows(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("split") == "valid":
            rows.append(row)
    return rows


def _check_reproduced(committed: Path, retrained: Path) -> None:
    """An alignment cell whose SFT model was committed as a finished `sft` cell but is retrained here (its adapter
    is not committed) must start from the same model: every validation figure of the retrained run must match the
    committed run's at the same step, within REPRODUCE_TOL, or the cell would align a model the report never
    evaluated."""
    before, now = _valid_rows(committed), {r.get("step"): r for r in _valid_rows(retrained)}
    if not before:
        return  # the committed run validated nothing: nothing to compare
    for row in before:
        got = now.get(row.get("step"))
        keys = [k for k, v in row.items() if isinstance(v, float)]
        off = [k for k in keys if got is None or not isinstance(got.get(k), (int, float))
               or abs(got[k] - row[k]) > REPRODUCE_TOL]
        if off:
            k = off[0]
            raise UserError(f"{retrained}: the retrained SFT model does not reproduce the committed one ({committed}): "
                            f"validation {k} at step {row.get('step')} is "
                            f"{'missing' if got is None else got.get(k)}, committed {row[k]} (tolerance "
                            f"{REPRODUCE_TOL}); delete the committed sft cell to run it again with this model")
    print(f"prefrec experiment: the retrained SFT model reproduces the committed validation figures "
          f"({len(before)} validation(s), within {REPRODUCE_TOL})", file=sys.stderr)


def _reference_key(tc) -> tuple:
    """What a reference pass depends on besides k: the model and the training and validation samples (paths made
    absolute: a run's config.yaml keeps them as they were given)."""
    from prefrec.training.config import resolve_paths

    tc = resolve_paths(copy.deepcopy(tc))
    return (tc.model.name, tc.model.dtype, tc.data.dir, tc.data.train, tc.data.valid, tc.data.max_train_samples,
            tc.data.max_valid_samples, json.dumps(dataclasses.asdict(tc.items)) if tc.items else None)


def _borrow_reference(cells_dir: Path, run_dir: Path, tc) -> None:
    """Give an alignment cell the reference log-probs another cell already computed, instead of scoring every
    training sample again (a third of an alignment cell's time): a sibling run whose only stage aligned the same
    SFT model on the same data with at least as many negatives (reference.narrow_cache takes its first k)."""
    from prefrec.training.config import load_config
    from prefrec.training.reference import REF_CACHE, narrow_cache
    from prefrec.training.runfolder import RUN_MARKER

    if (run_dir / REF_CACHE).exists() or tc.stages[0].k is None or not methods.stage(tc.stages[0].kind).reference:
        return
    want = _reference_key(tc)
    for sib in sorted(cells_dir.glob(f"*/run/{REF_CACHE}")):
        if sib.parent == run_dir:
            continue
        try:  # the typed loader fills defaults, so a key written differently still compares equal
            other = load_config(sib.parent / "config.yaml")
        except UserError:
            continue
        if _reference_key(other) != want or len(other.stages) != 1 or \
                not methods.is_aligned(other.stages[0].kind):
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        io.write_text(run_dir / RUN_MARKER, "a prefrec run folder\n")  # the run that follows may start here
        if narrow_cache(sib, run_dir / REF_CACHE, tc.stages[0].k):
            print(f"prefrec experiment: reference log-probs from {sib} (first {tc.stages[0].k} negatives)",
                  file=sys.stderr)
            return


def _trunk_eval(cfg: ExperimentConfig, cell: Cell) -> dict:
    """evaluate()'s trunk-cache arguments for an LLM cell: with lora.layers N in the grid's training config, every
    cell, zero-shot included, scores from one cache of the dataset's test trees (the base's bottom layers are the
    same for all), in the config's trunk_cache_dir."""
    train_cfg = _cell_train(cfg, cell)
    layers = (train_cfg.get("lora") or {}).get("layers")
    if not layers or train_cfg.get("trunk_cache") is False or train_cfg.get("items"):
        return {"trunk_layers": 0}
    return {"trunk_layers": layers, "cache_dir": train_cfg.get("trunk_cache_dir")}


def _beta(cell: Cell) -> float | None:
    """The β a cell trained with: its grid value, or (betas: [null]) its loss's default."""
    if cell.beta is not None or not methods.method_is_aligned(cell.method):
        return cell.beta
    return methods.STAGES[methods.method_kind(cell.method)].beta


def run_cell(cfg: ExperimentConfig, cell: Cell, out: Path) -> dict:
    """Prepare, train and evaluate one cell; write out/results.json (skipped by the caller when it exists)."""
    ds = next(d for d in cfg.datasets if d.label == cell.dataset)
    eval_options = {**cfg.eval, **ds.eval}  # the dataset's own over the grid's
    data_dir = _prepared_dir(cfg, ds, cell.seed, cell.k)
    if ds.train_from:
        source = next((d for d in cfg.datasets if d.label == ds.train_from), None)
        if source is None:
            raise UserError(f"experiment {cfg.name}: {ds.label}.train_from: no dataset labelled {ds.train_from!r}")
        train_dir = _prepared_dir(cfg, source, cell.seed, cell.k)
    else:
        train_dir = data_dir
    if cell.method in methods.llm_methods():
        from prefrec.evaluation.evaluate import evaluate

        model = cell.model
        if cell.method != "zero-shot":
            model = str(_train_cell(cfg, cell, train_dir, out))
        res = evaluate(model, data_dir, out=out / "eval", method=cell.method, seed=cell.seed, dataset=cell.dataset,
                       **_trunk_eval(cfg, cell), **eval_options)
    else:
        from prefrec.baselines.run import run_baseline

        kwargs = dict(cfg.baseline)
        if ds.train_from:
            kwargs["train_samples"] = str(train_dir)
        if cell.shots is not None:
            kwargs["max_train_samples"] = cell.shots  # few-shot baselines see the same users as the LLM cells
        if eval_options.get("limit") is not None:
            kwargs.setdefault("limit", eval_options["limit"])  # and are scored on the same test samples
        res = run_baseline(cell.method, data_dir, regime=cell.regime, seed=cell.seed, out=out / "eval", **kwargs)
        res.pop("scores", None)
    # one results.json per cell, with the grid coordinates the report groups by
    res = {k: v for k, v in res.items() if k != "out"}
    res.update({"dataset": cell.dataset, "method": cell.method, "seed": cell.seed, "k": cell.k, "shots": cell.shots,
                "beta": _beta(cell), "regime": cell.regime, "experiment": cfg.name})
    if cell.variant:
        res["variant"] = cell.variant
    if cell.method in methods.llm_methods() and cell.model != "embedded":
        res["base_model"] = cell.model
    write_results(out, res)
    # the eval folder keeps its own copy for per-sample bootstrap; drop its results.json so the report counts once
    inner = out / "eval" / RESULTS
    if inner.exists():
        inner.rename(out / "eval" / "results.eval.json")
    per_sample = out / "eval" / PER_SAMPLE
    if per_sample.exists():
        per_sample.replace(out / PER_SAMPLE)
    return res


# Settings that change what a cell computes without changing its folder name: resuming with different values would
# silently mix results made two ways, so they are recorded on the first run and checked on every later one. The
# grid axes (methods, ks, shots, betas, seeds, regimes, models) name the cell folders and may grow between runs.
_SETTINGS = ("train", "sft", "align", "eval", "baseline", "variants")


def _settings(cfg: ExperimentConfig) -> dict:
    out = {key: getattr(cfg, key) for key in _SETTINGS}
    # a dataset's `methods` and `ks` are grid axes like the top-level ones: they may grow between runs
    # (a dataset's `eval` and `train` are recorded only when given: records written before they existed stay
    # comparable)
    out["datasets"] = {d.label: {**{k: v for k, v in vars(d).items()
                                    if k not in ("label", "methods", "ks") and not (k in ("eval", "train") and not v)},
                                 "negatives": _negatives(cfg, d)} for d in cfg.datasets}
    return json.loads(json.dumps(out))  # plain JSON types, comparable with what was read back


def _label_used(cfg: ExperimentConfig, folder: Path, label: str) -> bool:
    """Whether `folder` holds anything made for dataset `label`: a cell (finished or not) or its prepared samples.
    A label with nothing yet may change its settings: there is nothing to mix."""
    import glob

    task = next(d.task for d in cfg.datasets if d.label == label)
    return (folder / "cells" / label).exists() or any((folder / "data").glob(f"{glob.escape(label)}-{task}-seed*"))


def _check_settings(cfg: ExperimentConfig, record: Path, write: bool = True) -> None:
    """UserError when `record` holds other settings than cfg's; else (with `write`) record cfg's there."""
    now = _settings(cfg)
    if record.is_file():
        before = json.loads(record.read_text(encoding="utf-8"))
        shared, labels = _settings_diff(before, now)
        changed = shared + [f"datasets.{label}" for label in labels if _label_used(cfg, record.parent, label)]
        if changed:
            raise UserError(f"experiment {cfg.name}: {record.parent} holds cells made with different settings "
                            f"({', '.join(changed)}); reusing them would mix results. Choose another output "
                            f"folder (--set output_dir=...) or delete {record.parent}")
        now["datasets"] = {**_recorded_datasets(before), **now["datasets"]}
    if write:
        io.write_json(record, now)


def _settings_diff(before: dict, now: dict) -> tuple[list[str], list[str]]:
    """(the grid-wide settings that differ, the dataset labels of `now` recorded in `before` with other settings)
    between two settings records; a label new in `now` differs from nothing."""
    was = _recorded_datasets(before)
    shared = [k for k in _SETTINGS if before.get(k) != now.get(k)]
    labels = [label for label in now["datasets"] if label in was and was[label] != now["datasets"][label]]
    return shared, labels


def _recorded_datasets(before: dict) -> dict:
    """A settings record's per-label settings, without "methods" (recorded by earlier versions; a grid axis, not a
    setting)."""
    return {label: {k: v for k, v in d.items() if k != "methods"} for label, d in before.get("datasets", {}).items()}


def _publish(cfg: ExperimentConfig, folders: list[str]) -> Path:
    """Copy each cell's small files (results, per-sample scores, training logs) under report_dir/cells.

    The report then links to files beside it, and report_dir can be committed without the adapters and data.
    """
    import shutil

    src_root = Path(cfg.output_dir) / "cells"
    dst_root = Path(cfg.report_dir) / "cells"
    if dst_root.resolve() == src_root.resolve():  # report_dir = output_dir: the files are already there
        return dst_root
    for folder in folders:
        if not has_results(src_root / folder):  # a committed cell: an unfinished retrain of it must not replace it
            continue
        for rel in (RESULTS, PER_SAMPLE, "run/metrics.jsonl"):
            src, dst = src_root / folder / rel, dst_root / folder / rel
            if src.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
    return dst_root


def select(grid: list[Cell], only: list[str]) -> list[Cell]:
    """The cells matching `--only`: names of methods and of dataset labels; a cell is kept when its method is one of
    the methods named (if any) and its dataset one of the labels named (if any)."""
    methods = {c.method for c in grid}
    labels = {c.dataset for c in grid}
    unknown = [x for x in only if x not in methods and x not in labels]
    if unknown:
        raise UserError(f"--only {unknown[0]!r}: not a method or dataset label of this grid; methods "
                        f"{sorted(methods)}, datasets {sorted(labels)}")
    want_m = {x for x in only if x in methods}
    want_d = {x for x in only if x in labels}
    return [c for c in grid if (not want_m or c.method in want_m) and (not want_d or c.dataset in want_d)]


def run_experiment(path: str | Path, *, only: list[str] | None = None, dry_run: bool = False,
                   report: bool = True, overrides: list[str] | None = None,
                   report_only: bool = False, launcher: str | None = None) -> Path | None:
    """Run every unfinished cell of the experiment at `path`, then write the report; returns the results.md path.

    report_only: run nothing; report the finished cells of the selection (a grid whose remaining cells wait for
    another machine or session).

    overrides: `KEY=VALUE` strings applied to the YAML first (see apply_overrides); they are recorded, with the
    command, in report_dir/experiment.json.

    launcher: None runs the cells one after another in this process; "local" or "slurm" submits each unfinished
    cell as its own job through submitit (prefrec.launcher), with the resources of the config's `launcher:`.
    """
    if launcher is not None:
        check_cluster(launcher)
    cfg = load_experiment(path, overrides)
    grid = cells(cfg)
    if only:
        grid = select(grid, only)
    root = Path(cfg.output_dir) / "cells"
    committed = _committed(cfg)
    todo = [c for c in grid if not has_results(root / c.folder()) and c.folder() not in committed]
    print(f"prefrec experiment {cfg.name}: {len(grid)} cells, {len(grid) - len(todo)} done, {len(todo)} "
          f"{'not run (--report-only)' if report_only else 'to run'}", file=sys.stderr)
    if committed:
        print(f"prefrec experiment: {len(committed)} cell(s) finished earlier are read from {cfg.report_dir}/cells "
              f"(same settings), not run again", file=sys.stderr)
    if report_only:
        todo = []
    if dry_run:
        for c in todo:
            print(c.folder())
        return None
    log_path = Path(cfg.output_dir) / "cells.jsonl"
    if not report_only:  # a report writes nothing into the output folder (it wrote settings.json there)
        log_path.parent.mkdir(parents=True, exist_ok=True)
    _check_settings(cfg, Path(cfg.output_dir) / "settings.json", write=not report_only)
    failed = []
    if launcher is None:
        _run_cells(cfg, todo, root, log_path)
    else:  # each cell its own job; the report below gathers what they wrote
        _prepare_data(cfg, todo)
        failed = run_jobs(_cell_jobs(cfg, todo, root, log_path), Path(cfg.output_dir) / "jobs",
                          LauncherConfig(**cfg.launcher), launcher)
    md = None
    done = [c for c in grid if has_results(root / c.folder()) or c.folder() in committed]
    if report:
        md = _report(cfg, path, done, log_path, overrides, only, report_only, committed)
    else:  # the finished cells' small files beside the report all the same, ready to commit (scripts/cells.sh)
        _publish(cfg, _all_finished(cfg, done))
    if failed:
        raise UserError(f"experiment {cfg.name}: {len(failed)} cell(s) failed ({', '.join(failed)}); their logs "
                        f"are under {Path(cfg.output_dir) / 'jobs'}. Run the same command again to resubmit them")
    return md


def _run_cells(cfg: ExperimentConfig, todo: list[Cell], root: Path, log_path: Path) -> None:
    """Run each cell under its lock (two runners on one output folder share the work instead of writing the same
    cell twice), logging its wall time and metrics to cells.jsonl."""
    from tqdm.auto import tqdm

    for cell in tqdm(todo, desc=f"experiment {cfg.name}", unit="cell"):
        run_logged(cfg, cell, root, log_path)


def _prepare_data(cfg: ExperimentConfig, todo: list[Cell]) -> None:
    """Prepare every dataset and seed the cells need here, before their jobs start: jobs of one dataset and seed
    running at once would otherwise prepare the same folder together."""
    for label, seed in dict.fromkeys((c.dataset, c.seed) for c in todo):
        ds = next(d for d in cfg.datasets if d.label == label)
        for d in [ds] + [x for x in cfg.datasets if x.label == ds.train_from]:
            _prepared_dir(cfg, d, seed, None)


def _cell_jobs(cfg: ExperimentConfig, todo: list[Cell], root: Path, log_path: Path) -> list[Job]:
    """Each cell as a launcher job running run_logged. An alignment cell whose SFT run is unfinished waits for the
    job that makes it: its sft cell when that is to run too, else the first alignment cell needing it (which trains
    the SFT run first, as in the sequential run); two jobs training one SFT run would collide on its lock. A cell
    that makes its model from a variant's "@sasrec" item table waits for that SASRec cell when it is to run too
    (the sequential run has it first by the order of `methods`)."""
    in_todo = {c.folder() for c in todo}
    makers: dict[str, str] = {}  # sft cell folder -> the job that makes its run
    jobs = []
    for cell in todo:
        after = None
        sft = sft_cell_of(cell).folder()
        if methods.method_stages(cell.method)[1] and not is_run_dir(root / sft / "run"):
            after = sft if sft in in_todo else makers.setdefault(sft, cell.folder())
        if after in (None, cell.folder()):  # this job trains its own model
            after = _sasrec_source(cfg, cell)
        jobs.append(Job(cell.folder(), run_logged, (cfg, cell, root, log_path),
                        after if after in in_todo and after != cell.folder() else None))
    return jobs


def _sasrec_source(cfg: ExperimentConfig, cell: Cell) -> str | None:
    """The folder of the SASRec cell whose item table the cell's variant reads ("@sasrec"), or None."""
    items = (cfg.variants.get(cell.variant) or {}).get("items") if cell.variant else None
    if not isinstance(items, dict) or items.get("embeddings") != "@sasrec":
        return None
    return _sasrec_cell(cell).folder()


def run_logged(cfg: ExperimentConfig, cell: Cell, root: Path, log_path: Path) -> dict | None:
    """One cell under its lock, its wall time and metrics appended to cells.jsonl; None when another runner holds
    it or finished it meanwhile. The sequential run calls it in turn; under --launcher it is each job's body."""
    t0 = time.time()
    try:
        with io.exclusive(root / cell.folder(), "experiment cell"):
            if has_results(root / cell.folder()):
                return None  # finished by another runner meanwhile
            res = run_cell(cfg, cell, root / cell.folder())
    except io.Locked as e:
        print(f"prefrec experiment: skipped: {e}", file=sys.stderr)
        return None
    with open(log_path, "a", encoding="utf-8") as f:  # one short line per write: concurrent jobs append whole lines
        f.write(json.dumps({"cell": cell.folder(), "seconds": round(time.time() - t0, 1),
                            "metrics": res.get("metrics")}) + "\n")
    return res


def _report(cfg: ExperimentConfig, path, done: list[Cell], log_path: Path, overrides, only, report_only,
            committed: dict) -> Path:
    """The report of the finished cells, with the command that made it and each cell's wall time (the run log's,
    else the one recorded when a committed cell was made)."""
    from prefrec.evaluation.report import make_report

    finished = _all_finished(cfg, done)
    published = _publish(cfg, finished)
    command = " ".join(["prefrec", "experiment", str(path)] + [f"--set '{o}'" for o in overrides or []]
                       + [f"--only {o}" for o in only or []] + (["--report-only"] if report_only else []))
    seconds = {**{k: v for k, v in committed.items() if v is not None}, **_cell_seconds(log_path)}
    # the committed cells outside this selection stay in the record (the report reads every cell beside it)
    listed = list(dict.fromkeys(finished + list(committed)))
    io.write_json(Path(cfg.report_dir) / "experiment.json",
                  {"config": str(path), "overrides": list(overrides or []), "only": list(only or []),
                   "command": command, "cells": listed,
                   "seconds": {c: seconds.get(c) for c in listed}, "settings": _settings(cfg)})
    preamble = [f"Experiment `{cfg.name}`, made by:", "", f"    {command}", ""]
    preamble += _wall_time_lines(seconds, listed)
    return make_report([published], cfg.report_dir, preamble=preamble, variants=list(cfg.variants))


def _all_finished(cfg: ExperimentConfig, done: list[Cell]) -> list[str]:
    """The folders of the selection's finished cells, then the output folder's other finished cells (another seed
    or size run with --only/--set, by cells.sh): made under the same settings.json, they are published and recorded
    too, so that a later session counts them as committed."""
    return list(dict.fromkeys([c.folder() for c in done] + _finished_cells(Path(cfg.output_dir))))


def _wall_time_lines(seconds: dict, listed: list[str]) -> list[str]:
    """The preamble's wall-time line: the sum over the cells with a recorded time, and how many have none (a cell
    whose output folder and run log were lost before its time was recorded) rather than a sum that hides them."""
    timed = [seconds[c] for c in listed if seconds.get(c) is not None]
    if not timed:
        return []
    untimed = len(listed) - len(timed)
    missing = (f"; {untimed} of the {len(listed)} cells have no recorded time, not counted" if untimed else "")
    return [f"Wall time of the cells: {sum(timed) / 60:.1f} min in all (each cell's time, with the SFT it trained "
            f"when it was the first to need it, is in experiment.json{missing}).", ""]


def _finished_cells(output_dir: Path) -> list[str]:
    """The folders (label/cell) of the finished cells in an output folder, whatever grid made them."""
    return sorted(f"{p.parent.parent.name}/{p.parent.name}" for p in (output_dir / "cells").glob(f"*/*/{RESULTS}"))


def _committed(cfg: ExperimentConfig) -> dict[str, float | None]:
    """Cells finished in an earlier session and committed under report_dir/cells (results.json, per-sample scores,
    training log), keyed by cell folder, with the wall time recorded then: they count as done when the report's
    experiment.json was made with the same settings as this grid, so a grid whose output folder is gone (another
    machine, a new session) continues from its committed cells instead of running them again. Cells made with other
    settings are never reused (they are run again, and their committed copies replaced)."""
    record = Path(cfg.report_dir) / "experiment.json"
    if Path(cfg.report_dir).resolve() == Path(cfg.output_dir).resolve() or not record.is_file():
        return {}
    try:
        made = json.loads(record.read_text(encoding="utf-8"))
    except ValueError:
        return {}
    before, now = made.get("settings") if isinstance(made, dict) else None, _settings(cfg)
    if not isinstance(before, dict):
        return {}
    # per dataset label, as _check_settings allows: a label added to the grid leaves the others' cells theirs
    shared, changed = _settings_diff(before, now)
    if shared:
        return {}
    same = {label for label in now["datasets"] if label in before.get("datasets", {}) and label not in changed}
    seconds = made.get("seconds") or {}
    cells_dir = Path(cfg.report_dir) / "cells"
    return {folder: seconds.get(folder) for folder in made.get("cells") or []
            if isinstance(folder, str) and folder.split("/")[0] in same and has_results(cells_dir / folder)}


def _cell_seconds(log_path: Path) -> dict:
    """Wall time per cell from the run log (the last run of each cell), for the report's preamble."""
    out = {}
    if log_path.is_file():
        for line in log_path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                out[row["cell"]] = row["seconds"]
            except (ValueError, KeyError, TypeError):
                continue
    return out
