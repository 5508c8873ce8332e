"""Did the quickstart's models learn anything beyond what their prompt prints? (issue 27)

    python docs/results/quickstart/beyond_facts.py      # writes beyond_facts.md and beyond_facts.json here

Re-prepares each seed's ML-100K samples exactly as the quickstart did (the same prepare() arguments; the sample ids
must equal the committed per_sample rows'), then, on the same test comparisons:
  prompt-facts   the logistic model of the numbers the hybrid prompt prints and the shown order, fit on the TRAINING
                 split (prefrec.evaluation.facts.prompt_facts_rows);
  added          each committed LLM run's margin added to those facts, against the facts alone, cross-fit over 10
                 folds of test users, paired bootstrap over users (facts.added_to_facts).
Nothing is trained or re-scored: the LLM numbers are the committed cells' per_sample.jsonl.
"""

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2] / "src"))

from prefrec.data.fetch import ensure_dataset  # noqa: E402
from prefrec.data.prepare import prepare  # noqa: E402
from prefrec.evaluation import facts, tasks  # noqa: E402
from prefrec.quickstart import QUICKSTART  # noqa: E402
from prefrec.samples import read_jsonl  # noqa: E402


def seed_samples(seed: int, tmp: Path):
    out = tmp / f"seed{seed}"
    prepare("ml-100k", ensure_dataset("ml-100k"), "pairwise", out, seed=seed, warn=lambda w: None,
            **QUICKSTART["datasets"][0]["prepare"])
    return read_jsonl(out / "train.jsonl"), read_jsonl(out / "test.jsonl")


def main() -> None:
    rows_out, md = [], ["# The quickstart against its prompt's facts", "",
                        "`python docs/results/quickstart/beyond_facts.py` (nothing trained or re-scored: the committed "
                        "cells' per-sample scores on the re-prepared, identical test samples).", "",
                        "| seed | model | AUC | prompt-facts AUC | facts + model | difference [95 % CI] | p | "
                        "beyond its prompt? |", "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (0, 1, 2):
            train, test = seed_samples(seed, Path(tmp))
            pf = tasks.task("pairwise").metrics(facts.prompt_facts_rows(train, test))["auc"]
            user = {s.id: s.user for s in test}
            for method in ("zero-shot", "sft-shots1000"):
                cell = HERE / "cells" / "ml-100k" / f"{method}-seed{seed}"
                rows = [json.loads(x) for x in (cell / "per_sample.jsonl").read_text().splitlines()]
                if {r["id"] for r in rows} != set(user):
                    raise SystemExit(f"{cell}: its samples are not the re-prepared test split")
                rows = [{**r, "user": user[r["id"]]} for r in rows]
                auc = json.loads((cell / "results.json").read_text())["metrics"]["auc"]
                t = facts.added_to_facts(test, rows, n_boot=1000, seed=0)
                rows_out.append({"seed": seed, "model": method, "auc": auc, "prompt_facts_auc": pf, **t})
                md.append(f"| {seed} | {method} | {auc:.4f} | {pf:.4f} | {t['facts_plus_llm']:.4f} | "
                          f"{t['diff']:+.4f} [{t['lo']:+.4f}, {t['hi']:+.4f}] | {t['p']:.3f} | "
                          f"{'yes' if t['beyond'] else 'no'} |")
    md += ["", "prompt-facts is fit on each seed's training split; 'facts + model' and the facts model it is compared "
           "with are both cross-fit over 10 folds of test users (the comparison the difference is about), so their "
           "AUC differs slightly from the train-fit prompt-facts column."]
    (HERE / "beyond_facts.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    (HERE / "beyond_facts.json").write_text(json.dumps(rows_out, indent=1) + "\n", encoding="utf-8")
    print("\n".join(md))


if __name__ == "__main__":
    main()
