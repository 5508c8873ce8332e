"""Does the model read the user? Test samples scored with another user's history (issue #40):

    python docs/results/ml1m-curve/swap.py run candidates 2   # from the checkout whose experiments/ml1m-curve
    python docs/results/ml1m-curve/swap.py run pairwise 2     #   holds the runs
    python docs/results/ml1m-curve/swap.py                    # writes swap.md beside this file from the committed files

`run POINT SEED` gives every test sample of that point and seed another user's history (`prefrec data
swap-histories`: a seeded permutation of the test histories, none holding one of the receiver's candidates; same ids,
candidates and targets) and scores the swapped file with the base model (zero-shot), each trained model of the seed
still under experiments/ml1m-curve (the candidates point: SFT and S-DPO in both training orders, the same test
samples; the pairwise point: SFT and DMPO at 3,000 samples) and the baselines retrained as their cells were
(`prefrec baseline --test`: the folder's training, the swapped samples scored). Each result's small files go under
swap/<label>/<cell>-seed<S>/. Two controls come first, and the run stops unless both reproduce the committed cells:
one model re-scores the first 100 own-history samples, and SASRec (full) is retrained and re-scores every one
(the swapped side of a baseline is a retrain, so it must be the committed model). Their figures go to
swap/controls.json.

The report pairs each swapped result with its committed own-history cell by sample id: own − swapped (candidates:
HR@1 and MRR; pairwise: AUC and pairwise accuracy), 95 % CIs resampling test users, and pooled over the seeds that
have both (each seed's users resampled within it). No choice is made here (each checkpoint was chosen on validation).
"""

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prefrec.evaluation.report import paired_bootstrap
from prefrec.results import PER_SAMPLE, read_per_sample
from prefrec.evaluation.stats import metric_fn, paired_user_bootstrap, pooled_user_bootstrap

HERE = Path(__file__).parent
EXP = Path("experiments/ml1m-curve")
SWAP = Path("experiments/ml1m-curve-swap")
TIME, USERS, TITLE = "ml-1m-candidates", "ml-1m-candidates-users", "ml-1m-text-title"
TRUNK_LAYERS = 4  # the runs' lora.layers, as their cells
SCORE_FIELDS = ("rank_scores", "scores", "s_first", "s_second")  # per-sample scores: LLM/baseline, candidates/pairwise


@dataclass(frozen=True)
class Point:
    data: str  # the prepared folder's name under experiments/ml1m-curve/data, without -seed<S>
    llm: tuple  # (label, cell) of the LLM cells; the first trained one is the control
    baselines: tuple  # (label, name, regime)
    shots: int  # the few-shot baselines' training samples (the LLMs')
    metrics: tuple  # the two metrics of the table, as the baselines name them
    title: str


POINTS = {
    "candidates": Point(
        f"{USERS}-candidates",
        ((TIME, "zero-shot"), (USERS, "sft-shots1000"), (TIME, "sft-shots1000"), (TIME, "sdpo-k3-shots1000-beta0.1"),
         (USERS, "sdpo-k3-shots1000-beta0.1")),
        tuple((USERS, n, r) for n in ("sasrec", "popularity", "item-prior") for r in ("full", "few-shot")),
        1000, ("hr@1", "mrr"), "The candidates point (1,000 training samples; the time order's test is the same)"),
    "pairwise": Point(
        f"{TITLE}-pairwise",
        ((TITLE, "zero-shot"), (TITLE, "sft-shots3000"), (TITLE, "dmpo-k3-shots3000-beta0.1")),
        tuple((TITLE, n, r) for n in ("sasrec", "popularity", "item-prior") for r in ("full", "few-shot")),
        3000, ("auc", "pairwise_accuracy"), "The pairwise point (title answer, 3,000 training samples)"),
}


def _cell(name: str, regime: str, shots: int) -> str:
    return f"{name}-full" if regime == "full" else f"{name}-few-shot-shots{shots}"


def rows(folder: Path) -> list[dict]:
    return read_per_sample(folder / PER_SAMPLE)  # refuses a file cut short


def largest_difference(mine: list[dict], committed: list[dict]) -> float:
    """The largest absolute difference of any score between two runs' per-sample rows, joined by id."""
    theirs = {r["id"]: r for r in committed}
    return max(abs(a - b) for r in mine for k in SCORE_FIELDS if k in r for a, b in zip(r[k], theirs[r["id"]][k]))


def swapped_file(point: Point, seed: int) -> Path:
    """The point's test samples, each with another test user's history (made once, seeded)."""
    dst = SWAP / f"{point.data}-seed{seed}.jsonl"
    if not dst.is_file():
        SWAP.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "prefrec", "data", "swap-histories", str(EXP / "data" / f"{point.data}"
                        f"-seed{seed}"), "--out", str(dst), "--seed", str(seed)], check=True)
    return dst


def controls(name: str, point: Point, seed: int) -> None:
    """Own histories: one LLM (the first 100 samples) and SASRec full (retrained) give the committed scores, or stop."""
    from prefrec.baselines.run import run_baseline
    from prefrec.evaluation.evaluate import evaluate

    label, cell = point.llm[1]
    out = SWAP / "control" / f"{name}-seed{seed}"
    evaluate(str(EXP / "cells" / label / f"{cell}-seed{seed}" / "run"), EXP / "data" / f"{point.data}-seed{seed}",
             out=out / "llm", limit=100, generate=False, dtype="bf16", seed=seed, dataset=label,
             trunk_layers=TRUNK_LAYERS)
    blabel = point.baselines[0][0]
    run_baseline("sasrec", EXP / "data" / f"{point.data}-seed{seed}", regime="full", seed=seed, out=out / "sasrec",
                 progress=False)
    mine = {f"{label}/{cell}": (out / "llm", HERE / "cells" / label / f"{cell}-seed{seed}"),
            f"{blabel}/sasrec-full": (out / "sasrec", HERE / "cells" / blabel / f"sasrec-full-seed{seed}")}
    found = {k: largest_difference(rows(new), rows(old)) for k, (new, old) in mine.items()}
    record = HERE / "swap" / "controls.json"
    done = json.loads(record.read_text()) if record.is_file() else {}
    done[f"{name}-seed{seed}"] = {"samples": {k: len(rows(new)) for k, (new, _) in mine.items()},
                                  "largest_score_difference": found}
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(done, indent=1, sort_keys=True) + "\n")
    print("controls:", found)
    if max(found.values()) > 1e-3:
        sys.exit("the own-history scores do not reproduce the committed cells'; not comparing")


def run(name: str, seed: int) -> None:
    from prefrec.baselines.run import run_baseline
    from prefrec.evaluation.evaluate import evaluate

    point = POINTS[name]
    controls(name, point, seed)
    swapped = swapped_file(point, seed)
    for label, cell in point.llm:
        run_dir = EXP / "cells" / label / f"{cell}-seed{seed}" / "run"
        model = "embedded" if cell == "zero-shot" else str(run_dir)
        dst = HERE / "swap" / label / f"{cell}-seed{seed}"
        if (model == "embedded" or run_dir.is_dir()) and not (dst / "results.json").is_file():
            res = evaluate(model, swapped, out=dst, generate=False, dtype="bf16", seed=seed, dataset=label,
                           method=cell.split("-shots")[0].split("-k")[0], trunk_layers=TRUNK_LAYERS)
            print(label, cell, {k: v for k, v in res["metrics"].items() if isinstance(v, float)})
    for label, base, regime in point.baselines:
        dst = HERE / "swap" / label / f"{_cell(base, regime, point.shots)}-seed{seed}"
        if not (dst / "results.json").is_file():
            res = run_baseline(base, EXP / "data" / f"{point.data}-seed{seed}", regime=regime, seed=seed, out=dst,
                               progress=False, test_file=swapped,
                               max_train_samples=point.shots if regime == "few-shot" else None)
            print(label, base, regime, res["metrics"][point.metrics[0]])


def fmt(d: dict | None) -> str:
    if d is None or d["diff"] is None:
        return "—"
    return f"{d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}], p = {d['p']:.3f}"


def both_sides(label: str, cell: str):
    """(seed, own rows, swapped rows) for each seed the cell was swapped on, row i of both the same sample."""
    for seed in range(10):
        own_dir, swap_dir = (HERE / kind / label / f"{cell}-seed{seed}" for kind in ("cells", "swap"))
        if (swap_dir / "per_sample.jsonl").is_file():
            swapped = {r["id"]: r for r in rows(swap_dir)}
            own = [r for r in rows(own_dir) if r["id"] in swapped]
            yield seed, own, [swapped[r["id"]] for r in own]


def compare(label: str, cell: str, point: Point) -> list[str]:
    """One row per seed with both sides, then a row pooled over those seeds."""
    out, parts = [], ([], [])
    for seed, own, other in both_sides(label, cell):
        names = [("rank_" + m) if "rank_scores" in own[0] else m for m in point.metrics]
        cells = []
        for j, m in enumerate(names):
            t = paired_bootstrap(own, other, m)
            parts[j].append((metric_fn(own, m), metric_fn(other, m), [r.get("user") for r in own]))
            cells.append(f"{t['a']:.3f} → {t['b']:.3f} | {fmt(t)}")
        out.append(f"| {label} | {cell} | {seed} | {len(own)} | " + " | ".join(cells) + " |")
    if len(parts[0]) > 1:
        pooled = [fmt(pooled_user_bootstrap(p)) for p in parts]
        out.append(f"| {label} | {cell} | pooled over {len(parts[0])} seeds | | | {pooled[0]} | | {pooled[1]} |")
    return out


def margin(row: dict) -> float:
    """How far the model puts the user's item above the others: the target's score minus the other candidates' mean
    (candidates), the positive's minus the negative's averaged over the comparisons (pairwise)."""
    if "s_first" in row:
        return float(np.mean(np.subtract(row["s_first"], row["s_second"])))
    scores = np.asarray(row.get("rank_scores", row.get("scores")), dtype=float)
    t = row["target_index"]
    return float(scores[t] - np.delete(scores, t).mean())


def correlation(a: dict, b: dict) -> float:
    """The correlation of one sample's scores under the two histories (1: the history moved nothing)."""
    keys = [k for k in SCORE_FIELDS if k in a]
    x, y = (np.concatenate([np.asarray(r[k], dtype=float) for k in keys]) for r in (a, b))
    return float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else 1.0


def shift(label: str, cell: str) -> list[str]:
    """Per seed: the target margin own → swapped, swapped − own with a CI over users, the mean score correlation."""
    out = []
    for seed, own, other in both_sides(label, cell):
        m_own = np.array([margin(r) for r in own])
        m_swap = np.array([margin(r) for r in other])
        t = paired_user_bootstrap(lambda i: float(m_swap[i].mean()), lambda i: float(m_own[i].mean()),
                                  [r.get("user") for r in own])
        corr = np.mean([correlation(a, b) for a, b in zip(own, other)])
        out.append(f"| {label} | {cell} | {seed} | {m_own.mean():+.3f} → {m_swap.mean():+.3f} | {fmt(t)} | "
                   f"{corr:.3f} |")
    return out


def main() -> None:
    lines = ["# Test samples with another user's history (generated by swap.py)", "",
             "Each model scored on the same test samples twice: with the user's own history (its committed cell) "
             "and with another test user's (`prefrec data swap-histories`, the seed's permutation). Own − swapped "
             "on the same samples, 95 % CIs resample test users; pooled rows average the seeds' differences, "
             "resampling each seed's users. A model that reads the user loses by the swap; one that ranks by what "
             "the items are loses nothing. Controls (own histories re-scored: the committed scores): "
             "[swap/controls.json](swap/controls.json).", ""]
    heads = {"hr@1": "HR@1", "mrr": "MRR", "auc": "AUC", "pairwise_accuracy": "accuracy"}
    for point in POINTS.values():
        m1, m2 = (heads[m] for m in point.metrics)
        lines += [f"## {point.title}", "",
                  f"| label | cell | seed | test samples | {m1} own → swapped | own − swapped | "
                  f"{m2} own → swapped | own − swapped |", "|---|---|---|---|---|---|---|---|"]
        cells = point.llm + tuple((lab, _cell(n, r, point.shots)) for lab, n, r in point.baselines)
        for label, cell in cells:
            lines += compare(label, cell, point)
        lines += ["", "What the history moves: the target margin (the user's item's score minus the other candidates' "
                  "mean; pairwise: positive minus negative), own → swapped, swapped − own (95 % CI over users; in "
                  "each model's own score units), and the mean correlation of a sample's scores under the two "
                  "histories.", "", "| label | cell | seed | target margin own → swapped | swapped − own | "
                  "score correlation |", "|---|---|---|---|---|---|"]
        for label, cell in cells:
            lines += shift(label, cell)
        lines.append("")
    text = "\n".join(lines)
    tmp = HERE / "swap.md.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(HERE / "swap.md")
    print(text)


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"] and len(sys.argv) == 4 and sys.argv[2] in POINTS:
        run(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) == 1:
        main()
    else:
        sys.exit("usage: swap.py [run POINT SEED], POINT one of " + ", ".join(POINTS))
