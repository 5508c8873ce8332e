"""Each LLM cell of this report against SASRec (whose item table the hybrid cells read), HR@1 on the same test
samples: a paired bootstrap that resamples users (prefrec.evaluation.stats), read off the committed per-sample files.
Two HR@1s per LLM cell: likelihood ranking (the candidate with the highest summed log-prob) and greedy generation
(the answer matched to a candidate: LLaRA's HR@1, invalid answers count as misses; ValidRatio beside it).
Last, ML-100K SFT over its three seeds: hybrid − text and hybrid − SASRec per seed and pooled.

    python docs/results/llara-candidates/vs_sasrec.py      # prints the table in vs_sasrec.md and writes it

Where each dataset's files are: ML-100K likelihood cells in cells/ml-100k, its generation re-evaluation of the same
adapters in generation/ml-100k; LastFM (likelihood and generation in one evaluation) in lastfm/cells/lastfm.
"""

import functools
import json
from pathlib import Path

import numpy as np

from prefrec.evaluation.stats import paired_user_bootstrap

HERE = Path(__file__).parent
LLM_CELLS = ("zero-shot-seed0", "sft-var-text-seed0", "sft-var-hybrid-seed0", "sdpo-var-text-k3-beta1-seed0",
             "sdpo-var-hybrid-k3-beta1-seed0")
SEEDS = (0, 1, 2)  # ML-100K SFT seeds (seeds 1 and 2: SFT cells only)
# dataset -> (folder of its SASRec and likelihood cells, folder of its generation cells)
SOURCES = {"ml-100k": (HERE / "cells" / "ml-100k", HERE / "generation" / "ml-100k"),
           "lastfm": (HERE / "lastfm" / "cells" / "lastfm", HERE / "lastfm" / "cells" / "lastfm")}


@functools.cache  # a generation file is read by both tables
def rows(folder: Path, cell: str, how: str) -> dict[str, dict] | None:
    """id -> {user, hit, valid} of one cell's per-sample file, hit by `how`: "scores" (a baseline's), "rank_scores"
    (likelihood) or "generation" (the matched greedy answer). None when the file or the field is not there."""
    path = folder / cell / "per_sample.jsonl"
    if not path.is_file():
        return None
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if how == "generation":
            if "hit" not in r:
                return None
            out[r["id"]] = {"user": r["user"], "hit": float(r["hit"]), "valid": float(r["valid"])}
        else:
            out[r["id"]] = {"user": r["user"], "hit": float(int(np.argmax(r[how])) == r["target_index"])}
    return out


def hr1(rs: list[dict]) -> float:
    return float(np.mean([r["hit"] for r in rs]))


def valid_ratio(rs: list[dict]) -> float:
    return float(np.mean([r["valid"] for r in rs]))


def paired(a: dict, b: dict, metric=hr1) -> str:
    """'A − B [CI], p' of `metric` on the samples both have, resampling users."""
    ids = [i for i in a if i in b]
    ra, rb = [a[i] for i in ids], [b[i] for i in ids]
    t = paired_user_bootstrap(lambda idx: metric([ra[i] for i in idx]), lambda idx: metric([rb[i] for i in idx]),
                              [r["user"] for r in ra])
    return f"{t['diff']:+.3f} [{t['lo']:+.3f}, {t['hi']:+.3f}], p = {t['p']:.3f}"


def versus(llm: dict | None, sasrec: dict) -> str:
    """'HR@1 | LLM − SASRec [CI], p' on the samples both have, or dashes when the LLM cell is missing."""
    if llm is None:
        return "– | –"
    return f"{hr1([llm[i] for i in llm if i in sasrec]):.3f} | {paired(llm, sasrec)}"


def validity(folder: Path, stage: str) -> str:
    """'hybrid | text | difference [CI], p' of the ValidRatio of one stage's two variants, or dashes."""
    hybrid, text = rows(folder, stage.format("hybrid"), "generation"), rows(folder, stage.format("text"), "generation")
    if hybrid is None or text is None:
        return "– | – | –"
    ids = [i for i in hybrid if i in text]
    return (f"{valid_ratio([hybrid[i] for i in ids]):.3f} | {valid_ratio([text[i] for i in ids]):.3f} | "
            f"{paired(hybrid, text, valid_ratio)}")


def seed_rows(cell: str, seeds: tuple[int, ...]) -> dict | None:
    """(seed, id) -> row of the ML-100K cell `cell` (formatted with each seed) over `seeds`, or None when a seed
    lacks it. The user stays the resampling cluster, so a user in two seeds' test splits is drawn as one."""
    out = {}
    for seed in seeds:
        name = cell.format(seed)
        r = rows(HERE / "cells" / "ml-100k", name, "scores" if name.startswith("sasrec") else "rank_scores")
        if r is None:
            return None
        out.update({(seed, i): v for i, v in r.items()})
    return out


def seeds_table() -> list[str]:
    """ML-100K SFT over the seeds (each its own split draw, 200 test samples): hybrid − text and hybrid − SASRec
    per seed, and over the seeds' samples together."""
    md = ["", "ML-100K SFT over three seeds, likelihood rank HR@1 (each seed its own split draw and 200 test "
          "samples; the last row pools the three seeds' samples, resampling users):", "",
          "| seed | samples (users) | text | hybrid | SASRec | hybrid − text [95 % CI], p | "
          "hybrid − SASRec [95 % CI], p |", "|---|---|---|---|---|---|---|"]
    for label, seeds in [(str(s), (s,)) for s in SEEDS] + [("pooled", SEEDS)]:
        text, hybrid = seed_rows("sft-var-text-seed{}", seeds), seed_rows("sft-var-hybrid-seed{}", seeds)
        sasrec = seed_rows("sasrec-full-seed{}", seeds)
        if text is None or hybrid is None or sasrec is None:
            md.append(f"| {label} | – | – | – | – | – | – |")
            continue
        users = len({r["user"] for r in sasrec.values()})
        md.append(f"| {label} | {len(sasrec)} ({users}) | {hr1(list(text.values())):.3f} | "
                  f"{hr1(list(hybrid.values())):.3f} | {hr1(list(sasrec.values())):.3f} | {paired(hybrid, text)} | "
                  f"{paired(hybrid, sasrec)} |")
    return md


def main() -> None:
    md = ["| dataset | LLM cell | rank HR@1 | − SASRec [95 % CI], p | generation HR@1 | − SASRec [95 % CI], p | "
          "ValidRatio | SASRec HR@1 | samples (users) |",
          "|---|---|---|---|---|---|---|---|---|"]
    for dataset, (cells, generated) in SOURCES.items():
        sasrec = rows(cells, "sasrec-full-seed0", "scores")
        if sasrec is None:
            continue
        users = len({r["user"] for r in sasrec.values()})
        for cell in LLM_CELLS:
            gen = rows(generated, cell, "generation")
            valid = "–" if gen is None else f"{valid_ratio(list(gen.values())):.3f}"
            md.append(f"| {dataset} | {cell} | {versus(rows(cells, cell, 'rank_scores'), sasrec)} | "
                      f"{versus(gen, sasrec)} | {valid} | {hr1(list(sasrec.values())):.3f} | "
                      f"{len(sasrec)} ({users}) |")
    md += ["", "Generation ValidRatio (the share of answers that name a candidate), hybrid against its text twin on the "
           "same samples:", "",
           "| dataset | cell | hybrid | text | hybrid − text [95 % CI], p |", "|---|---|---|---|---|"]
    for dataset, (_, generated) in SOURCES.items():
        for stage in ("sft-var-{}-seed0", "sdpo-var-{}-k3-beta1-seed0"):
            md.append(f"| {dataset} | {stage.format('*')} | {validity(generated, stage)} |")
    md += seeds_table()
    (HERE / "vs_sasrec.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))


if __name__ == "__main__":
    main()
