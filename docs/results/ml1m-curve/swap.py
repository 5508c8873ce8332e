"""Does the model read the user? The candidates point scored with another user's history (issue #40):

    python docs/results/ml1m-curve/swap.py run 2   # from the checkout whose experiments/ml1m-curve holds the runs
    python docs/results/ml1m-curve/swap.py         # writes swap.md beside this file from the committed files

`run SEED` gives every test sample of that seed another user's history (`prefrec data swap-histories`: a seeded
permutation of the 1,000 test histories, none holding one of the receiver's candidates; same ids, candidates and
targets), in a folder beside the prepared one (its other files linked, its test.jsonl the swapped one), and scores it
with the base model (zero-shot) and each trained model of the seed still under experiments/ml1m-curve (SFT and
S-DPO, both training orders: the same test samples) and with the baselines retrained as their cells were. Each result's small files go under
swap/<label>/<cell>-seed<S>/. A control first scores the own-history test samples with one model (the first 100) and
stops unless it reproduces the committed cell's scores: the comparison below mixes runs of two code versions.

The report pairs each swapped result with its committed own-history cell by sample id: own − swapped HR@1 and MRR,
95 % CIs resampling test users. No choice is made here (each model's checkpoint was chosen on validation).
"""

import json
import subprocess
import sys
from pathlib import Path

from prefrec.evaluation.report import paired_bootstrap

HERE = Path(__file__).parent
EXP = Path("experiments/ml1m-curve")
TIME, USERS = "ml-1m-candidates", "ml-1m-candidates-users"
LLM = [(TIME, "zero-shot"), (TIME, "sft-shots1000"), (TIME, "sdpo-k3-shots1000-beta0.1"),
       (USERS, "sft-shots1000"), (USERS, "sdpo-k3-shots1000-beta0.1")]
BASELINES = [(USERS, name, regime) for name in ("sasrec", "popularity", "item-prior")
             for regime in ("full", "few-shot")]


def _cell(method: str, regime: str) -> str:
    return f"{method}-full" if regime == "full" else f"{method}-few-shot-shots1000"


def swapped_folder(seed: int) -> Path:
    """The users label's prepared folder with its test split swapped (the time label's test is the same samples)."""
    src = EXP / "data" / f"{USERS}-candidates-seed{seed}"
    dst = Path("experiments/ml1m-curve-swap") / f"data-seed{seed}"
    if not (dst / "test.jsonl").is_file():
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.name not in ("test.jsonl", ".prefrec-files.json") and not (dst / f.name).exists():
                (dst / f.name).symlink_to(f.resolve())
        subprocess.run([sys.executable, "-m", "prefrec", "data", "swap-histories", str(src), "--out", str(dst / "test.jsonl"),
                        "--seed", str(seed)], check=True)
    return dst


def control(seed: int) -> None:
    """Own histories, the first 100 samples, one model: the committed scores, or stop."""
    from prefrec.evaluation.evaluate import evaluate

    label, cell = LLM[3]
    out = Path("experiments/ml1m-curve-swap") / "control"
    evaluate(str(EXP / "cells" / label / f"{cell}-seed{seed}" / "run"), EXP / "data" / f"{label}-candidates-seed{seed}",
             out=out, limit=100, generate=False, dtype="bf16", method="sft", seed=seed, dataset=label, trunk_layers=4)
    mine = {r["id"]: r["rank_scores"] for r in rows(out)}
    theirs = {r["id"]: r["rank_scores"] for r in rows(HERE / "cells" / label / f"{cell}-seed{seed}") if r["id"] in mine}
    worst = max(abs(a - b) for i in mine for a, b in zip(mine[i], theirs[i]))
    print(f"control: {len(mine)} own-history samples, largest score difference to the committed cell {worst:.2e}")
    if worst > 1e-3:
        sys.exit("the own-history scores do not reproduce the committed cell's; not comparing")


def run(seed: int) -> None:
    from prefrec.baselines.run import run_baseline
    from prefrec.evaluation.evaluate import evaluate

    control(seed)
    folder = swapped_folder(seed)
    for label, cell in LLM:
        run_dir = EXP / "cells" / label / f"{cell}-seed{seed}" / "run"
        model = "embedded" if cell == "zero-shot" else str(run_dir)
        dst = HERE / "swap" / label / f"{cell}-seed{seed}"
        if (model == "embedded" or run_dir.is_dir()) and not (dst / "results.json").is_file():
            res = evaluate(model, folder, out=dst, generate=False, dtype="bf16", seed=seed, dataset=label,
                           method=cell.removesuffix("-shots1000").split("-k3")[0],
                           trunk_layers=4)  # the runs' lora.layers, as their cells
            print(label, cell, res["metrics"]["rank_hr@1"])
    for label, name, regime in BASELINES:
        dst = HERE / "swap" / label / f"{_cell(name, regime)}-seed{seed}"
        if not (dst / "results.json").is_file():
            res = run_baseline(name, folder, regime=regime, seed=seed, out=dst, progress=False,
                               max_train_samples=1000 if regime == "few-shot" else None)
            print(label, name, regime, res["metrics"]["hr@1"])


def rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "per_sample.jsonl").read_text().splitlines() if line.strip()]


def compare(label: str, cell: str, seed: int) -> str | None:
    own_dir, swap_dir = HERE / "cells" / label / f"{cell}-seed{seed}", HERE / "swap" / label / f"{cell}-seed{seed}"
    if not (swap_dir / "per_sample.jsonl").is_file():
        return None
    swapped = {r["id"]: r for r in rows(swap_dir)}
    own = [r for r in rows(own_dir) if r["id"] in swapped]
    other = [swapped[r["id"]] for r in own]
    names = ("rank_hr@1", "rank_mrr") if "rank_scores" in own[0] else ("hr@1", "mrr")
    cells = []
    for m in names:
        t = paired_bootstrap(own, other, m)
        cells.append(f"{t['a']:.3f} → {t['b']:.3f} | {t['diff']:+.4f} [{t['lo']:+.4f}, "
                     f"{t['hi']:+.4f}], p = {t['p']:.3f}")
    return f"| {label} | {cell} | {seed} | {len(own)} | " + " | ".join(cells) + " |"


def main() -> None:
    lines = ["# The candidates point with another user's history (generated by swap.py)", "",
             "Each model scored on the same test samples twice: with the user's own history (its committed cell) "
             "and with another test user's (`prefrec data swap-histories`, the seed's permutation). Own − swapped "
             "on the same samples, 95 % CIs resample test users. A model that reads the user loses by the swap; one "
             "that ranks by what the candidates are loses nothing.", "",
             "| label | cell | seed | test samples | HR@1 own → swapped | own − swapped | MRR own → swapped | "
             "own − swapped |", "|---|---|---|---|---|---|---|---|"]
    seeds = sorted({int(p.name.rsplit("seed", 1)[1]) for p in (HERE / "swap").glob("*/*-seed*")})
    for seed in seeds:
        for label, cell in LLM + [(lab, _cell(n, r)) for lab, n, r in BASELINES]:
            row = compare(label, cell, seed)
            if row:
                lines.append(row)
    text = "\n".join(lines) + "\n"
    (HERE / "swap.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"]:
        run(int(sys.argv[2]))
    else:
        main()
