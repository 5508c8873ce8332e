"""The PNG plots of `prefrec report` (matplotlib Figure objects, no pyplot: no display, and no backend switched for
the process that imports this, a notebook say).

    plot_training_curves   one figure per RUN/metrics.jsonl: a panel per quantity (loss, reward accuracy, chosen
                           log-prob), a line per stage over optimizer steps, validation rows as larger points
    plot_metric_vs         metric vs k, shots or β per dataset · task (configurations that differ in that field)
    plot_metric_bars       the task's main metric per configuration, per dataset · task: every report, an
                           evaluation-only one included, gets a picture of its table

Every line is drawn with markers, so a run of one or two logged steps shows points instead of an empty panel.
This module knows nothing of how report.py groups runs: the grouping keys, the label of a group and each task's
preferred metrics come from the caller, so the two modules do not import each other.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Callable

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullLocator

from prefrec import io

TRAIN_PANELS = [  # (title, keys a trainer may log it under, first found wins)
    ("loss", ["loss", "train_loss", "train/loss"]),
    ("reward accuracy", ["reward_accuracy", "rewards/accuracies", "reward_acc", "rewards/accuracy"]),
    ("chosen log-prob", ["chosen_logp", "logps/chosen", "policy_chosen_logps", "chosen_logps"]),
]
_AXIS_LABEL = {"k": "number of negatives k", "shots": "number of training samples (shots)", "beta": "β"}
_CHANCE = ("auc", "pairwise_accuracy")  # metrics whose chance level, 0.5, is drawn


def _save(fig, path: Path) -> Path:
    io.write_figure(fig, path, dpi=110, bbox_inches="tight")
    return path


def _file_stem(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(str(p) for p in parts if p not in (None, ""))).strip("-")


def primary_metric(preferred: list[str], groups: list[dict]) -> str | None:
    """The first of `preferred` that some group has, else the first metric by name."""
    have = {m for g in groups for m in g["metrics"]}
    return next((m for m in preferred if m in have), sorted(have)[0] if have else None)


def read_training_log(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written while we read
            if isinstance(d, dict):
                rows.append(d)
    return rows


def _points(rows: list[dict], stage, key: str) -> tuple[list, list]:
    pts = [(r.get("step", i), r[key]) for i, r in enumerate(rows)
           if r.get("stage") == stage and isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return (list(xs) for xs in zip(*pts)) if pts else ([], [])


def plot_training_curves(log: Path, out_dir: Path, name: str) -> Path | None:
    """One PNG per run: a panel per training quantity found, a line per stage (sft, dpo, ...) with a marker at
    every step, and the validation rows of that stage as larger points of the same colour."""
    rows = read_training_log(log)
    train = [r for r in rows if r.get("split", "train") == "train"]
    valid = [r for r in rows if r.get("split") == "valid"]
    panels = []
    for title, keys in TRAIN_PANELS:
        key = next((k for k in keys if any(isinstance(r.get(k), (int, float)) for r in rows)), None)
        if key:
            panels.append((title, key))
    if not panels:
        return None
    fig = Figure(figsize=(4.2 * len(panels), 3.2))
    axes = fig.subplots(1, len(panels), squeeze=False)
    stages = list(dict.fromkeys(r.get("stage") for r in rows))
    for ax, (title, key) in zip(axes[0], panels):
        for si, st in enumerate(stages):  # one colour per stage in every panel
            name_st = str(st) if st is not None else "train"
            xs, ys = _points(train, st, key)
            if xs:
                ax.plot(xs, ys, label=name_st, lw=1.2, color=f"C{si}", marker="o", markersize=2.5)
            xs, ys = _points(valid, st, key)
            if xs:
                ax.plot(xs, ys, label=f"{name_st} (valid)", ls="none", color=f"C{si}", marker="D", markersize=6,
                        markeredgecolor="black", markeredgewidth=0.6)
        ax.set_title(title)
        ax.set_xlabel("step")
        lo, hi = ax.get_xlim()
        if hi - lo < 2:  # one logged step: give the point whole steps around it, not fractional ticks
            ax.set_xlim((lo + hi) / 2 - 1, (lo + hi) / 2 + 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(name, fontsize=10, y=1.03)
    path = _save(fig, out_dir / f"train-{_file_stem(name)}.png")
    return path


def _by_dataset_task(groups: list[dict]) -> list[tuple[tuple, list[dict]]]:
    by_dt = defaultdict(list)
    for g in groups:
        by_dt[(g["dataset"], g["task"])].append(g)
    return sorted(by_dt.items(), key=lambda kv: tuple(map(str, kv[0])))


def plot_metric_vs(groups: list[dict], field: str, out_dir: Path, *, keys: tuple[str, ...],
                   label: Callable[[dict], str], preferred: Callable[[str], list[str]]
                   ) -> list[tuple[str, str, str, Path, str]]:
    """Metric vs k, shots or β (`field`), one PNG per dataset/task with at least one line of ≥ 2 distinct values.
    Lines: configurations that differ only in `field` (the other grouping `keys`; mean ± std over seeds; one run at
    a single value is a point); configurations without a value for `field` (zero-shot, say) as dashed horizontal
    references. `label(group)` names a line, `preferred(task)` lists the metrics to plot first. Returns
    (dataset, task, metric, path, field)."""
    others = [k for k in keys if k not in ("dataset", "task", field)]
    made = []
    for (dataset, task), gs in _by_dataset_task(groups):
        metric = primary_metric(preferred(task), gs)
        lines = defaultdict(list)
        refs = []
        for g in gs:
            if metric not in g["metrics"]:
                continue
            if g.get(field) is None:
                refs.append(g)
            else:
                lines[tuple(g.get(k) for k in others)].append(g)
        # a plot needs one line of >= 2 values; configurations run at one value only (DMPO at one size of a curve
        # of SFT sizes, say) are drawn on it as single points
        lines = {k: sorted(v, key=lambda g: g[field]) for k, v in lines.items()}
        if not any(len({g[field] for g in v}) >= 2 for v in lines.values()):
            continue
        fig = Figure(figsize=(5.5, 3.6))
        ax = fig.subplots()
        for _, gl in sorted(lines.items(), key=lambda kv: tuple(map(str, kv[0]))):
            xs = [g[field] for g in gl]
            ys = [g["metrics"][metric]["mean"] for g in gl]
            es = [g["metrics"][metric]["std"] or 0.0 for g in gl]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label({**gl[0], field: None}))
        for g in refs:
            ax.axhline(g["metrics"][metric]["mean"], ls="--", lw=1, color="gray")
            ax.annotate(g["label"], (ax.get_xlim()[0], g["metrics"][metric]["mean"]), fontsize=7, color="gray",
                        va="bottom")
        if metric in _CHANCE:
            # chance on the plot keeps a zoomed-in y axis from making noise look like an effect
            ax.axhline(0.5, color="black", lw=0.8, ls=":", label="chance")
        _x_axis(ax, field, sorted({g[field] for gl in lines.values() for g in gl}))
        ax.set_xlabel(_AXIS_LABEL[field])
        ax.set_ylabel(metric)
        ax.set_title(f"{dataset} · {task}: {metric} vs {field}", fontsize=10)
        ax.legend(fontsize=8)
        path = _save(fig, out_dir / f"{_file_stem(dataset, task, metric.replace('@', 'at'), 'vs', field)}.png")
        made.append((dataset, task, metric, path, field))
    return made


def _x_axis(ax, field: str, values: list) -> None:
    """β on a log axis; training sizes too when they span a factor of 5 or more (a curve doubling to 10,000 samples
    would crowd its small sizes into the left edge), ticked at the sizes run; k and small ranges linear, integers."""
    if field == "beta":
        ax.set_xscale("log")
    elif field == "shots" and values[0] > 0 and values[-1] / values[0] >= 5:
        ax.set_xscale("log")
        ax.set_xticks(values, [f"{v:,}" for v in values])
        ax.xaxis.set_minor_locator(NullLocator())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_metric_bars(groups: list[dict], out_dir: Path, *, preferred: Callable[[str], list[str]]
                     ) -> list[tuple[str, str, str, Path, str]]:
    """The main metric of each configuration (a horizontal bar at the mean over seeds, ± std when there are
    several), one PNG per dataset/task, in the groups' order. Returns (dataset, task, metric, path,
    "configuration")."""
    made = []
    for (dataset, task), gs in _by_dataset_task(groups):
        metric = primary_metric(preferred(task), gs)
        gs = [g for g in gs if metric in g["metrics"]]
        if not gs:
            continue
        fig = Figure(figsize=(6.0, 0.9 + 0.38 * len(gs)))
        ax = fig.subplots()
        ys = list(range(len(gs)))[::-1]  # first configuration on top, as in the table
        means = [g["metrics"][metric]["mean"] for g in gs]
        errs = [g["metrics"][metric]["std"] or 0.0 for g in gs]
        ax.barh(ys, means, xerr=errs, color=[f"C{i % 10}" for i in range(len(gs))], capsize=3, height=0.6)
        ax.set_yticks(ys, [g["label"] for g in gs], fontsize=8)
        for y, m, e in zip(ys, means, errs):  # the value, right of its error bar
            ax.annotate(f"{m:.3f}", (m + e, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=7)
        ax.set_xlim(0, max(m + e for m, e in zip(means, errs)) * 1.15 or 1.0)
        if metric in _CHANCE:
            ax.axvline(0.5, color="black", lw=0.8, ls=":", label="chance")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xlabel(f"{metric} (mean over seeds; ± std with ≥ 2 seeds)")
        ax.set_title(f"{dataset} · {task}: {metric} by configuration", fontsize=10)
        path = _save(fig, out_dir / f"{_file_stem(dataset, task, metric.replace('@', 'at'), 'by', 'configuration')}.png")
        made.append((dataset, task, metric, path, "configuration"))
    return made
