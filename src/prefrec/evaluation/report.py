"""`prefrec report RUN…`: many results.json files -> one results.md with tables, significance tests and plots.

What it does, top to bottom:
1. find every results.json with "kind": "eval" under the given folders (LLM evaluations and baselines alike);
2. group runs by (dataset, task, method, regime, k, shots); each group is one configuration over several seeds;
3. per group: mean ± sample standard deviation (ddof=1) of every metric over seeds;
4. per pair of configurations of the same dataset and task: paired t-test over the seeds both have
   (scipy.stats.ttest_rel, two-sided), and the Wilcoxon signed-rank test beside it (exact for small n);
5. per run: percentile bootstrap 95 % CI of each metric, resampling the run's test samples (per_sample.jsonl) with
   replacement and recomputing the metric with prefrec.tasks.metrics, so pooled metrics such as AUC are handled right;
5b. per trained run (and baseline): a paired comparison with the zero-shot run of the same dataset, task and seed
   on their common test samples: the metric difference with a paired bootstrap CI and p-value (one seed is enough);
   and per alignment run (DPO, DMPO, S-DPO after SFT) the same against the SFT run it started from: does the
   preference stage add anything? Where a configuration has two or more seeds, both comparisons are also pooled
   over them: the mean of the per-seed differences, resampling each seed's users within that seed;
6. PNG plots (prefrec.evaluation.plots): training curves from every RUN/metrics.jsonl found (loss, reward accuracy,
   chosen log-prob; validation rows as points), metric vs number of negatives k, shots or β, and every dataset ·
   task's main metric by configuration (evaluation-only reports too);
7. OUT/results.md (human) and OUT/results.json (machine, "kind": "report").

per_sample.jsonl: one JSON object per test sample. The report recomputes metrics from these fields:
    s_first, s_second      number or list (one per comparison)   -> auc, pairwise_accuracy
    p_yes, label           number, 0/1                           -> auc, accuracy
    valid, hit             booleans (generated answer)            -> hr@1, valid_ratio
    {P}scores, target_index  list of C candidate scores, int      -> {P}hr@1, {P}hr@5, {P}ndcg@5, {P}ndcg@10, {P}mrr
where {P} is any prefix ("" for a baseline's "scores", "rank_" for the LLM's likelihood ranking "rank_scores").
Only metrics that also appear in the run's results.json get a CI.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from scipy import stats

from prefrec import io
from prefrec.errors import UserError
from prefrec.evaluation import prior
from prefrec.evaluation.facts import added_to_facts
from prefrec.evaluation.stats import (metric_families, metric_fn, paired_user_bootstrap, pooled_user_bootstrap,
                                     resample, user_groups)
from prefrec.evaluation.plots import (
    plot_metric_bars,
    plot_metric_vs,
    plot_training_curves,
)
from prefrec.model import EMBEDDED
from prefrec.provenance import provenance
from prefrec.samples import read_jsonl
from prefrec.results import find_results, per_sample_path, read_per_sample  # noqa: F401 (find_results: public here too)
from prefrec.tasks import TASKS
from prefrec.training import methods

REPORT_MD, REPORT_JSON = "results.md", "results.json"  # what a report writes into its folder, beside plots/
GROUP_KEYS = ("dataset", "task", "method", "variant", "base_model", "regime", "k", "shots", "beta")


def key_metrics(task: str) -> list[str]:
    """The metrics shown in a task's Markdown tables and plots, in this order (all numeric metrics go to
    results.json): its row of the task table says which."""
    return TASKS[task].key_metrics() if task in TASKS else []


COUNT_KEYS = {"n", "n_samples", "n_comparisons", "n_candidates", "ties"}  # counts, not metrics: never averaged or tested


# ---- 1. finding results ----

def find_training_logs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    out = set()
    for p in map(Path, paths):
        if p.is_dir():
            out.update(f.resolve() for f in p.rglob("metrics.jsonl"))
    return sorted(out)


def _numeric_metrics(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if k not in COUNT_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


# ---- 2-3. groups, mean ± std ----

def group_label(g: dict) -> str:
    parts = [str(g["method"])] + ([f"[{g['variant']}]"] if g.get("variant") else [])
    if g.get("k") is not None:
        parts.append(f"k={g['k']}")
    if g.get("shots") is not None:
        parts.append(f"shots={g['shots']}")
    if g.get("beta") is not None:
        parts.append(f"β={g['beta']:g}")
    if g.get("base_model"):
        parts.append(f"model={Path(str(g['base_model'])).name}")
    if g.get("regime"):
        parts.append(str(g["regime"]))
    return " ".join(parts)


def summarize(results: list[tuple[Path, dict]]) -> tuple[list[dict], list[str]]:
    """Groups of runs with mean ± std per metric over seeds, and warnings (e.g. two runs with the same seed)."""
    by_key: dict[tuple, list[tuple[Path, dict]]] = defaultdict(list)
    for path, r in results:
        by_key[tuple(r.get(k) for k in GROUP_KEYS)].append((path, r))
    groups, warns = [], []
    for key in sorted(by_key, key=lambda t: tuple("" if v is None else str(v).zfill(8) for v in t)):
        runs = by_key[key]
        g = dict(zip(GROUP_KEYS, key))
        g["label"] = group_label(g)
        per_seed: dict = {}
        for path, r in sorted(runs, key=lambda pr: str(pr[1].get("created", ""))):
            if r.get("seed") in per_seed:
                warns.append(f"{g['dataset']}/{g['task']}/{g['label']}: two runs with seed {r.get('seed')}; "
                             f"keeping the newer {path}")
            per_seed[r.get("seed")] = (path, r)
        g["seeds"] = list(per_seed)
        g["runs"] = [str(p) for p, _ in per_seed.values()]
        g["n_samples"] = sorted({r.get("n_samples") for _, r in per_seed.values()} - {None})
        values: dict[str, dict] = defaultdict(dict)
        for seed, (_, r) in per_seed.items():
            for name, v in _numeric_metrics(r["metrics"]).items():
                values[name][seed] = v
        g["values"] = {m: v for m, v in values.items()}
        g["metrics"] = {}
        for m, v in values.items():
            arr = np.array(list(v.values()))
            g["metrics"][m] = {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else None,
                               "n_seeds": int(arr.size)}
        groups.append(g)
    return groups, warns


# ---- 4. significance over seeds ----

def paired_tests(groups: list[dict]) -> list[dict]:
    """Paired tests between every two configurations of the same dataset and task, per metric both have, over the
    seeds both have (needs at least 2). p values are None where undefined (identical differences)."""
    out = []
    by_dt = defaultdict(list)
    for g in groups:
        by_dt[(g["dataset"], g["task"])].append(g)
    for (dataset, task), gs in by_dt.items():
        for a, b in itertools.combinations(gs, 2):
            for m in sorted(set(a["values"]) & set(b["values"])):
                seeds = [s for s in a["values"][m] if s in b["values"][m]]
                if len(seeds) < 2:
                    continue
                seeds.sort(key=str)
                x = np.array([a["values"][m][s] for s in seeds])
                y = np.array([b["values"][m][s] for s in seeds])
                with warnings.catch_warnings(), np.errstate(all="ignore"):
                    warnings.simplefilter("ignore")
                    t = stats.ttest_rel(x, y)
                    try:
                        pw = float(stats.wilcoxon(x, y).pvalue)
                    except ValueError:  # all differences zero
                        pw = None
                p_t = float(t.pvalue) if np.isfinite(t.pvalue) else None
                out.append({"dataset": dataset, "task": task, "a": a["label"], "b": b["label"], "metric": m,
                            "seeds": seeds, "n": len(seeds), "mean_diff": float(np.mean(x - y)),
                            "t": float(t.statistic) if np.isfinite(t.statistic) else None, "p_ttest": p_t,
                            "p_wilcoxon": pw if pw is None or np.isfinite(pw) else None})
    return out


# ---- 5. bootstrap CIs per run ----

def _user_draws(rows: list[dict], n_boot: int, seed: int) -> tuple[list[np.ndarray], str]:
    """n_boot resamples of row indices that resample **users** (prefrec.evaluation.stats: all rows of each drawn
    user), and the unit's name; rows written before per-sample rows carried a user are each their own unit."""
    groups = user_groups([r.get("user") for r in rows], [r.get("id") for r in rows])
    rng = np.random.default_rng(seed)
    unit = "users" if any(r.get("user") is not None for r in rows) else "samples"
    return [resample(groups, rng) for _ in range(n_boot)], unit


def bootstrap_ci(rows: list[dict], names: Iterable[str] | None = None, *, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> dict[str, dict]:
    """{metric: {"value", "lo", "hi", "n_boot", "unit"}}: percentile bootstrap that resamples users (a user's test
    samples together: the candidates protocol has many per user), recomputing each metric family on the resampled
    rows, so pooled metrics such as AUC stay right. A metric a resample cannot define (AUC with one class only) is
    left out of that metric's percentiles (n_boot says how many remained)."""
    fams = metric_families(rows)
    n = len(rows)
    if not fams or n < 2 or n_boot < 1:
        return {}
    names = None if names is None else set(names)
    draws, unit = _user_draws(rows, n_boot, seed)
    alpha = (1 - level) / 2
    out = {}
    for f in fams:
        full = _numeric_metrics(f(np.arange(n)))
        wanted = [m for m in full if names is None or m in names]
        for m in wanted:
            got = (f(idx).get(m) for idx in draws)
            d = np.array([float(v) for v in got if isinstance(v, (int, float)) and math.isfinite(v)])
            if d.size:
                out[m] = {"value": full[m], "lo": float(np.quantile(d, alpha)), "hi": float(np.quantile(d, 1 - alpha)),
                          "n_boot": int(d.size), "unit": unit}
    return out


def paired_bootstrap(rows_a: list[dict], rows_b: list[dict], metric: str, *, n_boot: int = 1000, level: float = 0.95,
                     seed: int = 0) -> dict | None:
    """Paired comparison of two runs on the same test samples (joined on "id"): metric(A) − metric(B), with a
    percentile bootstrap CI that resamples users (each resample draws the same users, hence the same samples, for
    both runs) and a two-sided p-value, 2 × the smaller share of resampled differences on either side of 0 (at least
    1 / n_boot). None when the runs share no sample or do not both have the metric."""
    a_rows, b_rows = _joined(rows_a, rows_b)
    if not a_rows:
        return None

    fa, fb = metric_fn(a_rows, metric), metric_fn(b_rows, metric)
    if fa is None or fb is None:
        return None
    n = len(a_rows)
    users = [r.get("user") for r in a_rows]
    got = paired_user_bootstrap(fa, fb, users, n_boot=n_boot, level=level, seed=seed)
    if got["diff"] is None:
        return None
    unit = "users" if any(u is not None for u in users) else "samples"
    return {"metric": metric, "n": n, "a": got["a"], "b": got["b"], "diff": got["diff"], "lo": got["lo"],
            "hi": got["hi"], "p": got["p"], "n_boot": got["n_boot"], "unit": unit}


def _zero_shot_of(run: dict, runs: list[dict]) -> dict | None:
    """The zero-shot run that `run` is compared with: same dataset, task and seed, and for an LLM run the same base
    model (a baseline has none: the first zero-shot of its dataset and seed)."""
    if run.get("method") == "zero-shot":
        return None
    key = (run["dataset"], run["task"], run.get("seed"))
    same = [z for z in runs if z.get("method") == "zero-shot" and (z["dataset"], z["task"], z.get("seed")) == key]
    if run.get("regime") is None:
        same = [z for z in same if z.get("base_model") == run.get("base_model")]
    return same[-1] if same else None


def _sft_of(run: dict, runs: list[dict]) -> dict | None:
    """The SFT run an alignment run started from (an experiment grid shares one per dataset, shots and seed): same
    dataset, task, seed, shots and base model. None for a run that does not start from SFT."""
    if not methods.method_stages(str(run.get("method")))[1]:
        return None
    key = ("dataset", "task", "seed", "shots", "base_model", "variant")
    same = [s for s in runs if s.get("method") == "sft" and all(s.get(k) == run.get(k) for k in key)]
    return same[-1] if same else None


def _first_variant_of(run: dict, runs: list[dict], order: Sequence[str] = ()) -> dict | None:
    """For a run of an experiment variant (e.g. hybrid item tokens), the same configuration in the first variant
    among the runs (e.g. text; first in `order`, the experiment's, then by name), on the same samples. None for runs
    without variants or of the first."""
    rank = {v: i for i, v in enumerate(order)}
    names = sorted({r["variant"] for r in runs if r.get("variant")}, key=lambda v: (rank.get(v, len(rank)), v))
    if len(names) < 2 or not run.get("variant") or run["variant"] == names[0]:
        return None
    key = ("dataset", "task", "method", "seed", "k", "shots", "beta", "base_model")
    same = [s for s in runs if s.get("variant") == names[0] and all(s.get(k) == run.get(k) for k in key)]
    return same[-1] if same else None


def _first_model_of(run: dict, runs: list[dict]) -> dict | None:
    """For a run on a second base model, the same configuration (dataset, task, method, seed, k, shots, β) on the
    report's first base model: the embedded one when present, else the first by name (DMPO Figure 5's comparison of
    base models, here on the same test samples). None for baselines, for runs on the first model, or with one model."""
    models = {r["base_model"] for r in runs if r.get("base_model")}
    if len(models) < 2 or not run.get("base_model"):
        return None

    first = min(models, key=lambda m: (m != EMBEDDED, str(m)))
    if run["base_model"] == first:
        return None
    key = ("dataset", "task", "method", "seed", "k", "shots", "beta")
    same = [s for s in runs if s.get("base_model") == first and all(s.get(k) == run.get(k) for k in key)]
    return same[-1] if same else None


def paired_against(runs: list[dict], partner_of, *, n_boot: int, seed: int) -> list[dict]:
    """Every run against its partner (`partner_of(run, runs)`; None skips the run) on their common test samples:
    paired_bootstrap on the task's first key metric both have. Each partner's rows are read once."""
    partner_rows: dict[str, list[dict]] = {}
    out = []
    for r in runs:
        z = partner_of(r, runs)
        if z is None:
            continue
        pa, pz = per_sample_path(r["path"]), per_sample_path(z["path"])
        metric = next((m for m in key_metrics(r["task"]) if m in r["metrics"] and m in z["metrics"]), None)
        if metric is None or not (pa.is_file() and pz.is_file()):
            continue
        if z["path"] not in partner_rows:
            partner_rows[z["path"]] = read_per_sample(pz)
        t = paired_bootstrap(read_per_sample(pa), partner_rows[z["path"]], metric, n_boot=n_boot, seed=seed)
        if t is not None:
            out.append({"run": r["path"], "against": z["path"], "against_label": group_label(z),
                        "dataset": r["dataset"], "task": r["task"], "label": group_label(r), "seed": r.get("seed"),
                        **t})
    return out


def pooled_over_seeds(tests: list[dict], *, n_boot: int, seed: int) -> list[dict]:
    """The per-seed comparisons of paired_against (each run against its partner on that seed's test samples) pooled
    over the seeds of each configuration: the mean of the per-seed differences, with a CI that resamples every seed's
    users within that seed (stats.pooled_user_bootstrap). Only configurations with two or more seeds."""
    by_config = defaultdict(list)
    for t in tests:
        by_config[(t["dataset"], t["task"], t["label"], t["against_label"], t["metric"])].append(t)
    out = []
    for (dataset, task, label, against, metric), ts in by_config.items():
        ts = sorted(ts, key=lambda t: str(t["seed"]))
        seeds = {str(t["seed"]) for t in ts}
        if len(seeds) < 2 or len(seeds) != len(ts):  # one seed, or two runs of one seed: nothing to pool
            continue
        parts, n = [], 0
        for t in ts:
            rows_a, rows_b = _joined(read_per_sample(per_sample_path(t["run"])), read_per_sample(per_sample_path(t["against"])))
            parts.append((metric_fn(rows_a, metric), metric_fn(rows_b, metric), [r.get("user") for r in rows_a]))
            n += len(rows_a)
        got = pooled_user_bootstrap(parts, n_boot=n_boot, seed=seed)
        if got["diff"] is not None:
            out.append({"dataset": dataset, "task": task, "label": label, "against_label": against, "metric": metric,
                        "seeds": [t["seed"] for t in ts], "n": n, **got})
    return out


def _joined(rows_a: list[dict], rows_b: list[dict]) -> tuple[list[dict], list[dict]]:
    """The rows of both runs on their common samples (joined on "id"), in rows_a's order."""
    by_id = {r["id"]: r for r in rows_b if "id" in r}
    a_rows = [r for r in rows_a if r.get("id") in by_id]
    return a_rows, [by_id[r["id"]] for r in a_rows]


# ---- 6. plots: prefrec.evaluation.plots ----


# ---- 7. Markdown ----

def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _fmt_p(p) -> str:
    if p is None:
        return "–"
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(path, base).replace(os.sep, "/")


# Table rows: LLM methods in the order of the papers' tables (prefrec.training.methods), then the traditional baselines,
# few-shot before full
_BASELINE_ORDER = ["popularity", "liked-share", "bpr", "sasrec", "gru4rec", "bert4rec", "caser", "stamp", "core",
                   "gcsan", "shan", "cmf"]


def _row_order(g: dict) -> tuple:
    m = str(g.get("method"))
    order = [*methods.table_order(), *_BASELINE_ORDER]  # read now: a loss registered after import has its place
    rank = order.index(m) if m in order else len(order)
    regime = {"few-shot": 0, "full": 1}.get(g.get("regime"), -1)
    return (rank, m, str(g.get("base_model") or ""), regime,
            *((g.get(k) is not None, g.get(k) or 0) for k in ("k", "shots", "beta")))


def _log_name(log: Path, paths: list) -> str:
    """A training log's name in the report: its run folder relative to the input it was found under, without the
    trailing `run` folder of experiment cells ("ml-100k/dmpo-k3-beta0.1-seed0", not "run")."""
    folder = log.parent
    for p in paths:
        root = Path(p).resolve()
        if root.is_dir() and folder.is_relative_to(root) and folder != root:
            rel = folder.relative_to(root)
            if rel.name == "run" and len(rel.parts) > 1:
                rel = rel.parent
            return rel.as_posix()
    return folder.name


def _runs(results: list[tuple[Path, dict]], n_boot: int, seed: int) -> list[dict]:
    """One entry per results.json: its configuration, metrics and per-run bootstrap CIs."""
    runs = []
    for path, r in results:
        ps = per_sample_path(path)
        ci = {}
        if ps.is_file() and n_boot > 0:
            ci = bootstrap_ci(read_per_sample(ps), names=_numeric_metrics(r["metrics"]), n_boot=n_boot, seed=seed)
        runs.append({"path": str(path), **{k: r.get(k) for k in GROUP_KEYS + ("seed", "model", "n_samples")},
                     "metrics": r["metrics"], "ci95": ci})
    return runs


def _llm_runs(results: list[tuple[Path, dict]], runs: list[dict], test) -> list[dict]:
    """test(samples source, per-sample rows) for every LLM run (results.json config.samples says where its test
    samples are); a run whose samples or rows are gone, or that the test refuses, gets a row that says why."""
    out = []
    for (path, r), run in zip(results, runs):
        src = (r.get("config") or {}).get("samples")
        if r.get("method") not in methods.llm_methods() or not src:
            continue
        head = {"run": str(path), "label": group_label(run), "dataset": r["dataset"], "task": r["task"],
                "seed": r.get("seed")}
        ps = per_sample_path(path)
        if not (Path(src).is_file() and ps.is_file()):
            out.append({**head, "skipped": f"{src if not Path(src).is_file() else ps} is not there"})
            continue
        try:
            out.append({**head, **test(src, read_per_sample(ps))})
        except (UserError, ValueError) as e:
            out.append({**head, "skipped": str(e)})
    return out


def beyond_facts(results: list[tuple[Path, dict]], runs: list[dict], *, n_boot: int, seed: int) -> list[dict]:
    """For every LLM run: does its score add to what the prompt prints? facts.added_to_facts on its test samples
    (read from results.json config.samples), the bootstrap resampling users. Runs whose samples file is gone, or
    whose prompts show no quoted titles (imported prompts), get a row that says why instead."""
    samples_of = functools.lru_cache(maxsize=None)(read_jsonl)
    return _llm_runs(results, runs, lambda src, rows: added_to_facts(samples_of(src), rows, n_boot=n_boot, seed=seed))


def _priors():
    """prior.prior_of per samples source, each read once; a source without an item prior raises its UserError on
    every call."""
    cache: dict[str, object] = {}

    def get(src: str):
        if src not in cache:
            try:
                cache[src] = prior.prior_of(src)
            except UserError as e:
                cache[src] = e
        if isinstance(cache[src], UserError):
            raise cache[src]
        return cache[src]
    return get


def beyond_floor(results: list[tuple[Path, dict]], runs: list[dict], *, n_boot: int, seed: int,
                 prior_of=None) -> list[dict]:
    """For every LLM run: does its score add to what it could know without the user, `prompt-facts` ∪ `item-prior`
    (prior.floor_task: both feature sets, cross-fit over users, paired bootstrap over users)? prior_of: a shared
    _priors() cache."""
    prior_of = prior_of or _priors()

    def test(src, rows):
        item_prior, samples = prior_of(src)
        task = prior.floor_task(item_prior, samples[0].task) if samples else None
        return added_to_facts(samples, rows, n_boot=n_boot, seed=seed, task=task)
    return _llm_runs(results, runs, test)


def prior_matched(results: list[tuple[Path, dict]], runs: list[dict], *, n_boot: int, seed: int,
                  prior_of=None) -> list[dict]:
    """For every run of a task with a prior-matched slice (pairwise; LLM or baseline): AUC on the slice (prior.matched_rows: the comparisons
    whose smoothed mean ratings differ by at most the slice threshold of its samples file), with a bootstrap CI
    over users. Runs without samples or item prior are left out (the beyond-facts table says why for LLM runs)."""
    prior_of, out = prior_of or _priors(), []
    for (path, r), run in zip(results, runs):
        src, ps = (r.get("config") or {}).get("samples"), per_sample_path(path)
        task = TASKS.get(r.get("task"))
        if task is None or not task.prior_slice or not src or not Path(src).exists() or not ps.is_file():
            continue
        try:
            item_prior, samples = prior_of(src)
            threshold = prior.slice_threshold(item_prior, samples)
            rows = read_per_sample(ps)
            cut = prior.matched_rows(rows, samples, item_prior, threshold)
        except (UserError, ValueError):
            continue
        n = sum(len(x["s_first"]) for x in cut)
        total = sum(len(np.atleast_1d(x["s_first"])) for x in rows)
        ci = bootstrap_ci(cut, names=["auc"], n_boot=n_boot, seed=seed).get("auc") or {}
        out.append({"run": str(path), **{k: run.get(k) for k in GROUP_KEYS}, "label": group_label(run),
                    "seed": r.get("seed"), "threshold": threshold, "prior": item_prior.kind, "n_comparisons": n,
                    "share": n / total if total else None, "n_users": len({x.get("user") for x in cut}),
                    "auc": task.metrics(cut).get("auc") if cut else None,
                    "lo": ci.get("lo"), "hi": ci.get("hi")})
    return out


_BEYOND = ("Beyond the prompt's facts: each LLM's score added to `prompt-facts` (a logistic model of the numbers the "
           "prompt prints and the order it shows its options), against `prompt-facts` alone, both cross-fit over 10 "
           "folds of test users; paired bootstrap over users ({n_boot} resamples). \"yes\" = a gain with p < 0.05:",
           "facts", "facts + LLM", "learnt beyond its prompt?")
_FLOOR = ("Beyond what it could know without the user: each LLM's score added to `prompt-facts` ∪ `item-prior` (the "
          "prompt's numbers and order, and each item's smoothed mean rating and rater count among non-test users), "
          "against both alone, cross-fit over 10 folds of test users; paired bootstrap over users ({n_boot} "
          "resamples). \"yes\" = a gain with p < 0.05:", "facts ∪ prior", "facts ∪ prior + LLM",
          "beyond what it could know without the user?")


def _beyond_lines(rows: list[dict], n_boot: int, words: tuple[str, str, str, str] = _BEYOND) -> list[str]:
    """The table of an added-to-facts test; `words`: its intro, the two models' column names and the verdict's."""
    if not rows:
        return []
    intro, alone, both, verdict = words
    if all("skipped" in t for t in rows):  # one line, not a table of dashes
        return [f"{intro.split(':')[0]}: not tested ({'; '.join(sorted({t['skipped'] for t in rows}))}).", ""]
    table = []
    for t in rows:
        if "skipped" in t:
            table.append([t["label"], _fmt(t["seed"]), "–", "–", "–", "–", "–", f"not tested: {t['skipped']}"])
            continue
        table.append([t["label"], _fmt(t["seed"]), t["metric"], _fmt(t["facts"]), _fmt(t["facts_plus_llm"]),
                      f"{t['diff']:+.4f} [{t['lo']:+.4f}, {t['hi']:+.4f}]", _fmt_p(t["p"]),
                      "yes" if t["beyond"] else "no"])
    return [intro.format(n_boot=n_boot), ""] + _table(["configuration", "seed", "metric", alone, both,
                                                       "difference [95 % CI]", "p", verdict], table) + [""]


def _slice_lines(rows: list[dict], n_boot: int) -> list[str]:
    """The prior-matched slice's table (pairwise): every cell's and baseline's AUC where the prior cannot tell."""
    if not rows:
        return []
    md = [f"Prior-matched slice: AUC on the comparisons whose two items' smoothed {rows[0]['prior']}s (among non-test "
          "users) differ by at most the threshold, the 25th percentile of |Δ| over the samples file's test "
          "comparisons: where item quality cannot tell, above 0.5 means the method reads the user (bootstrap 95 % CI "
          f"over users, {n_boot} resamples):", ""]
    table = [[t["label"], _fmt(t["seed"]), _fmt(t["threshold"], 3), str(t["n_comparisons"]), _fmt(t["share"], 2),
              str(t["n_users"]), _fmt(t["auc"]) + (f" [{_fmt(t['lo'])}, {_fmt(t['hi'])}]" if t["lo"] is not None
                                                   else "")]
             for t in sorted(rows, key=lambda t: (_row_order(t), t.get("seed") if t.get("seed") is not None else -1))]
    return md + _table(["configuration", "seed", "threshold", "comparisons", "share", "users", "AUC [95 % CI]"],
                       table) + [""]


def _knows_lines(where: tuple, beyond: list[dict], floor: list[dict], matched: list[dict], n_boot: int) -> list[str]:
    """One dataset · task's tables of what its runs know: beyond the prompt, beyond the floor, the slice."""
    here = lambda rows: [b for b in rows if (b["dataset"], b["task"]) == where]  # noqa: E731
    return (_beyond_lines(here(beyond), n_boot) + _beyond_lines(here(floor), n_boot, _FLOOR)
            + _slice_lines(here(matched), n_boot))


def _what_it_knows(results, runs, n_boot: int, seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """(beyond the prompt's facts, beyond the floor: LLM runs only, with n_boot > 0; the prior-matched slice: every
    pairwise run), the item priors read once per samples folder."""
    if n_boot <= 0:
        return [], [], prior_matched(results, runs, n_boot=n_boot, seed=seed)
    prior_of = _priors()
    return (beyond_facts(results, runs, n_boot=n_boot, seed=seed),
            beyond_floor(results, runs, n_boot=n_boot, seed=seed, prior_of=prior_of),
            prior_matched(results, runs, n_boot=n_boot, seed=seed, prior_of=prior_of))


def _training_plots(logs: list[Path], paths: list, plots_dir: Path) -> list[tuple[str, Path, Path]]:
    """(name, metrics.jsonl, PNG) for every training log that has something to plot; names made unique."""
    train_plots = []
    names_seen: dict[str, int] = defaultdict(int)
    for log in logs:
        name = _log_name(log, paths)
        names_seen[name] += 1
        if names_seen[name] > 1:
            name = f"{name}-{names_seen[name]}"
        p = plot_training_curves(log, plots_dir, name)
        if p:
            train_plots.append((name, log, p))
    return train_plots


def _section(dataset, task, gs: list[dict], tests, runs, against: list[tuple[str, list[dict]]], sweep_plots,
             out_dir: Path, n_boot: int) -> list[str]:
    """The Markdown of one dataset · task: the seed-group table, paired tests, runs with CIs, the paired
    comparisons on the same samples (`against`: title, tests; against zero-shot, SFT, the first base model), and the
    sweep plots."""
    md = []
    gs = sorted(gs, key=_row_order)
    have = {m for g in gs for m in g["metrics"]}
    cols = [m for m in key_metrics(task) if m in have] or sorted(have)
    md += [f"## {dataset} · {task}", ""]
    rows = []
    models = {g.get("base_model") for g in gs if g.get("base_model")}
    show_model = len(models) > 1
    for g in gs:
        cells = [str(g["method"]) + (f" [{g['variant']}]" if g.get("variant") else "")] + ([Path(str(g["base_model"])).name if g.get("base_model") else "–"]
                                      if show_model else [])
        cells += [_fmt(g.get("k")), _fmt(g.get("shots")), ("–" if g.get("beta") is None else f"{g['beta']:g}"), _fmt(g.get("regime")),
                  str(len(g["seeds"])), "/".join(map(str, g.get("n_samples") or [])) or "–"]
        for m in cols:
            s = g["metrics"].get(m)
            cells.append("–" if s is None else
                         _fmt(s["mean"]) + (f" ± {_fmt(s['std'])}" if s["std"] is not None else ""))
        rows.append(cells)
    md += _table(["method"] + (["model"] if show_model else []) + ["k", "shots", "β", "regime", "seeds", "samples"] + cols,
                 rows) + [""]
    ts = [t for t in tests if t["dataset"] == dataset and t["task"] == task and t["metric"] in cols]
    if ts:
        md += ["Paired tests over seeds:", ""]
        md += _table(["A", "B", "metric", "seeds", "mean(A−B)", "t", "p (t-test)", "p (Wilcoxon)"],
                     [[t["a"], t["b"], t["metric"], str(t["n"]), _fmt(t["mean_diff"]), _fmt(t["t"], 3),
                       _fmt_p(t["p_ttest"]), _fmt_p(t["p_wilcoxon"])] for t in ts]) + [""]
    rs = sorted((r for r in runs if r["dataset"] == dataset and r["task"] == task),
                key=lambda r: (_row_order(r), r.get("seed") if r.get("seed") is not None else -1))
    md += ["Runs (value [bootstrap 95 % CI]):", ""]
    rows = []
    for r in rs:
        cells = [group_label(r), _fmt(r.get("seed")), _fmt(r.get("n_samples"))]
        for m in cols:
            v = r["metrics"].get(m)
            c = r["ci95"].get(m)
            cells.append(_fmt(v) + (f" [{_fmt(c['lo'])}, {_fmt(c['hi'])}]" if c else ""))
        cells.append(f"`{_rel(Path(r['path']), out_dir)}`")
        rows.append(cells)
    md += _table(["configuration", "seed", "samples"] + cols + ["file"], rows) + [""]
    for title, tests_of in against:
        zs = [t for t in tests_of if t["dataset"] == dataset and t["task"] == task]
        if not zs:
            continue
        md += [f"{title} (paired bootstrap over test users, {n_boot} resamples; p two-sided):", ""]
        md += _table(["configuration", "seed", "samples", "metric", "value", "compared with", "its value",
                      "difference [95 % CI]", "p"],
                     [[t["label"], _fmt(t["seed"]), str(t["n"]), t["metric"], _fmt(t["a"]), t["against_label"],
                       _fmt(t["b"]), f"{t['diff']:+.4f} [{t['lo']:+.4f}, {t['hi']:+.4f}]", _fmt_p(t["p"])]
                      for t in zs]) + [""]
    for d, t, m, p, field in sweep_plots:
        if (d, t) == (dataset, task):
            md += [f"![{m} vs {field}]({_rel(p, out_dir)})", ""]
    return md


def _pooled_lines(where: tuple, pooled: list[tuple[str, list[dict]]], n_boot: int) -> list[str]:
    """The comparisons pooled over seeds (pooled_over_seeds) of one dataset · task, a table per partner."""
    md = []
    for title, rows in pooled:
        rows = [t for t in rows if (t["dataset"], t["task"]) == where]
        if not rows:
            continue
        md += [f"{title}, pooled over seeds (the mean of the per-seed differences on each seed's own test samples; "
               f"{n_boot} resamples of users within each seed; p two-sided):", ""]
        md += _table(["configuration", "compared with", "seeds", "samples", "metric", "per seed",
                      "mean difference [95 % CI]", "p"],
                     [[t["label"], t["against_label"], ", ".join(map(str, t["seeds"])), str(t["n"]), t["metric"],
                       " / ".join(f"{d:+.4f}" for d in t["diffs"]),
                       f"{t['diff']:+.4f} [{t['lo']:+.4f}, {t['hi']:+.4f}]", _fmt_p(t["p"])] for t in rows]) + [""]
    return md


def _header(results, paths, prov: dict, n_boot: int, preamble, warns: list[str]) -> list[str]:
    md = ["# prefrec results", "",
          f"{len(results)} evaluation result(s) from {', '.join(f'`{p}`' for p in paths)}; "
          f"generated {prov['created']} by prefrec {prov['versions'].get('prefrec')} (commit {prov['git_commit']}).",
          "",
          "Mean ± sample standard deviation over seeds; paired tests over the seeds two configurations share "
          "(t-test: scipy.stats.ttest_rel; Wilcoxon signed-rank beside it); per-run 95 % CIs: percentile bootstrap "
          f"over test users, all of a user's samples together ({n_boot} resamples). Metric definitions: "
          "docs/evaluate.md.", ""]
    md += list(preamble or [])
    md += [f"> warning: {w}" for w in warns] + ([""] if warns else [])
    return md


AGAINST_KEYS = ("tests_vs_zero_shot", "tests_vs_sft", "tests_vs_first_model", "tests_vs_first_variant",
                "pooled_vs_zero_shot", "pooled_vs_sft")  # results.json's names of _comparisons' lists, in order


AGAINST_TITLES = ("Against zero-shot on the same test samples",
                  "Alignment against the SFT model it started from, on the same test samples",
                  "Against the same configuration on the first base model, on the same test samples",
                  "Against the same configuration in the first variant, on the same test samples")
POOLED_TITLES = ("Against zero-shot", "Alignment against the SFT model it started from")


def _comparisons(runs: list[dict], variants: Sequence[str], n_boot: int, seed: int):
    """(against, pooled): each run against its zero-shot, its SFT model, the first base model and the first variant
    on the same test samples (paired_against), each a (title, tests) pair; and the first two pooled over seeds."""
    if n_boot <= 0:
        return [(t, []) for t in AGAINST_TITLES], [(t, []) for t in POOLED_TITLES]
    first_variant = functools.partial(_first_variant_of, order=list(variants))
    partners = (_zero_shot_of, _sft_of, _first_model_of, first_variant)
    against = [(t, paired_against(runs, f, n_boot=n_boot, seed=seed)) for t, f in zip(AGAINST_TITLES, partners)]
    pooled = [(t, pooled_over_seeds(tests_of, n_boot=n_boot, seed=seed))
              for t, (_, tests_of) in zip(POOLED_TITLES, against)]
    return against, pooled


def make_report(paths: Iterable[str | os.PathLike], out_dir: str | os.PathLike, *, n_boot: int = 1000,
                seed: int = 0, preamble: list[str] | None = None, variants: Sequence[str] = ()) -> Path:
    """Write OUT/results.md, OUT/results.json and OUT/plots/*.png from the results under `paths`; return the .md.

    preamble: Markdown lines under the title (the experiment runner's command and cell times). variants: the
    experiment's variants in its config's order, each compared with the first (default: name order)."""
    paths = list(paths)
    out_dir = Path(out_dir)
    results = find_results(paths)
    logs = find_training_logs(paths)
    if not results and not logs:
        raise UserError(f"no results.json with \"kind\": \"eval\" (and no metrics.jsonl) under {', '.join(map(str, paths))}")
    plots_dir = out_dir / "plots"
    groups, warns = summarize(results)
    tests = paired_tests(groups)
    results = [(p, r) for p, r in results if any(str(p) in g["runs"] for g in groups)]  # older same-seed runs out
    runs = _runs(results, n_boot, seed)

    train_plots = _training_plots(logs, paths, plots_dir)
    sweep_plots = [p for field in ("k", "shots", "beta")
                   for p in plot_metric_vs(groups, field, plots_dir, keys=GROUP_KEYS, label=group_label,
                                           preferred=key_metrics)]
    sweep_plots += plot_metric_bars(groups, plots_dir, preferred=key_metrics)
    against, pooled = _comparisons(runs, variants, n_boot, seed)
    beyond, floor, matched = _what_it_knows(results, runs, n_boot, seed)

    prov = provenance()
    md = _header(results, paths, prov, n_boot, preamble, warns)
    by_dt = defaultdict(list)
    for g in groups:
        by_dt[(g["dataset"], g["task"])].append(g)
    for (dataset, task), gs in sorted(by_dt.items(), key=lambda kv: tuple(map(str, kv[0]))):
        md += _section(dataset, task, gs, tests, runs, against, sweep_plots, out_dir, n_boot)
        md += _pooled_lines((dataset, task), pooled, n_boot)
        md += _knows_lines((dataset, task), beyond, floor, matched, n_boot)
    if train_plots:
        md += ["## Training curves", ""]
        for name, log, p in train_plots:
            md += [f"`{name}` (`{_rel(log, out_dir)}`)", "", f"![training curves of {name}]({_rel(p, out_dir)})", ""]

    summary = {"kind": "report", "inputs": [str(p) for p in paths],
               "groups": [{k: v for k, v in g.items() if k != "values"} for g in groups],
               "tests": tests, **{key: tests_of for key, (_, tests_of) in zip(AGAINST_KEYS, against + pooled)},
               "beyond_facts": beyond,
               "beyond_floor": floor, "prior_matched": matched, "runs": runs, "warnings": warns,
               "plots": {"training": [str(p) for _, _, p in train_plots],
                         **{f: [str(p) for *_, p, pf in sweep_plots if pf == f]
                            for f in ("k", "shots", "beta", "configuration")}},
               "config": {"n_boot": n_boot, "seed": seed}, **prov}
    io.write_json(out_dir / REPORT_JSON, summary)
    md_path = out_dir / REPORT_MD
    io.write_text(md_path, "\n".join(md).rstrip() + "\n")
    return md_path
