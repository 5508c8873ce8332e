"""Benchmark: one prompt for all responses (packed tree) vs one sequence per response (naive, what TRL does).

    python benchmarks/packing.py            # the full run (k = 1 3 7 15 31 63; tens of minutes on 2 CPU cores)
    python benchmarks/packing.py --quick    # smoke run (k = 1 3, one repeat) -> benchmarks/results/packing-quick.*

For each k and each method (packed / naive) it measures, each configuration in a fresh subprocess so that peak memory
figures do not contaminate each other:
  train_cached  one DMPO training step per example (forward + backward + AdamW step, LoRA r=8 on q,k,v,o),
                reference log-probs precomputed (prefrec's default: the reference is cached once per dataset)
  train_ref     the same step with the reference pass inside it (adapter disabled, no grad), as TRL does without
                precompute_ref_log_probs
  score         forward-only scoring of the k+1 responses under torch.inference_mode() (evaluation)
on the embedded SmolLM2-135M-Instruct (fp32, CPU), one realistic sample: a chat-templated prompt of about 400 tokens
(a movie history) and k+1 candidate titles of ~10–30 tokens each (end-of-turn token included).

naive = the k+1 full sequences (prompt + response) right-padded into one batch, full-vocabulary logits at every
position (TRL's default), log-probs read at the response positions. packed = prefrec.scoring.packing.response_logps.

Times are medians over --repeats timed steps after one warm-up step. Memory is the peak resident set size of the
worker process during the timed steps (Linux VmHWM, reset after the model is loaded, model weights included),
plus the RSS right after loading. Naive configurations whose predicted time (linear in k+1 from the largest measured
k) exceeds --naive-budget-s, or whose predicted memory exceeds --mem-limit-gb, are not run; their numbers are
linear extrapolations and are marked as such everywhere.

Writes benchmarks/results/packing.json (every measurement, provenance) and packing.md (the table, the targets of
issue #3 with met/missed and by how much).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("train_cached", "train_ref", "score")
METHODS = ("packed", "naive")
MODE_TITLES = {"train_cached": "train step, cached reference", "train_ref": "train step with reference pass",
               "score": "forward-only scoring"}

# Well-known films (title, year): facts, not a data set. History comes first, candidates from the rest.
FILMS = """Star Wars: Episode IV - A New Hope (1977); Blade Runner (1982); Toy Story (1995); Heat (1995); Fargo (1996);
The Godfather (1972); Pulp Fiction (1994); Casablanca (1942); Alien (1979); The Matrix (1999); Raiders of the Lost Ark
(1981); Jaws (1975); The Silence of the Lambs (1991); Schindler's List (1993); The Shawshank Redemption (1994);
Forrest Gump (1994); Back to the Future (1985); Terminator 2: Judgment Day (1991); Goodfellas (1990); Taxi Driver
(1976); Apocalypse Now (1979); One Flew Over the Cuckoo's Nest (1975); The Usual Suspects (1995); Se7en (1995);
Braveheart (1995); Titanic (1997); Saving Private Ryan (1998); American Beauty (1999); Fight Club (1999); Gladiator
(2000); Memento (2000); Amelie (2001); The Lord of the Rings: The Fellowship of the Ring (2001); Spirited Away (2001);
Chinatown (1974); Vertigo (1958); Rear Window (1954); North by Northwest (1959); Psycho (1960); Some Like It Hot
(1959); Singin' in the Rain (1952); Lawrence of Arabia (1962); Dr. Strangelove or: How I Learned to Stop Worrying and
Love the Bomb (1964); 2001: A Space Odyssey (1968); The Good, the Bad and the Ugly (1966); A Clockwork Orange (1971);
The Exorcist (1973); Rocky (1976); Annie Hall (1977); Close Encounters of the Third Kind (1977); The Deer Hunter (1978);
Raging Bull (1980); The Shining (1980); E.T. the Extra-Terrestrial (1982); Ghostbusters (1984); Amadeus (1984); The
Princess Bride (1987); Die Hard (1988); Rain Man (1988); Dead Poets Society (1989); When Harry Met Sally... (1989);
Home Alone (1990); Beauty and the Beast (1991); Reservoir Dogs (1992); Unforgiven (1992); Jurassic Park (1993);
Groundhog Day (1993); The Lion King (1994); Speed (1994); Babe (1995); Twelve Monkeys (1995); Trainspotting (1996);
Independence Day (1996); Men in Black (1997); Good Will Hunting (1997); L.A. Confidential (1997); The Big Lebowski
(1998); The Truman Show (1998); Shakespeare in Love (1998); The Sixth Sense (1999); Being John Malkovich (1999); The
Green Mile (1999); Crouching Tiger, Hidden Dragon (2000); Almost Famous (2000); Shrek (2001); Monsters, Inc. (2001);
Ocean's Eleven (2001); Donnie Darko (2001); The Lord of the Rings: The Two Towers (2002); Finding Nemo (2003); Kill
Bill: Vol. 1 (2003); Lost in Translation (2003); The Lord of the Rings: The Return of the King (2003); Eternal Sunshine
of the Spotless Mind (2004); The Incredibles (2004); Million Dollar Baby (2004); Batman Begins (2005); Brokeback
Mountain (2005); The Departed (2006); Pan's Labyrinth (2006); Little Miss Sunshine (2006); No Country for Old Men
(2007); Ratatouille (2007); There Will Be Blood (2007); The Dark Knight (2008); WALL-E (2008); Slumdog Millionaire
(2008); Up (2009); Inglourious Basterds (2009); Avatar (2009); Inception (2010); Toy Story 3 (2010); The Social
Network (2010); Black Swan (2010); The King's Speech (2010); Drive (2011); The Artist (2011); Django Unchained (2012);
Her (2013); Gravity (2013); 12 Years a Slave (2013); Interstellar (2014); Whiplash (2014); The Grand Budapest Hotel
(2014); Mad Max: Fury Road (2015); Inside Out (2015); Spotlight (2015); Arrival (2016); La La Land (2016); Moonlight
(2016); Get Out (2017); Coco (2017); Dunkirk (2017); Roma (2018); Parasite (2019); Joker (2019); The Adventures of
Priscilla, Queen of the Desert (1994); Harry Potter and the Philosopher's Stone (2001); Pirates of the Caribbean: The
Curse of the Black Pearl (2003); Star Wars: Episode V - The Empire Strikes Back (1980); Indiana Jones and the Last
Crusade (1989); Wallace & Gromit: The Curse of the Were-Rabbit (2005); Borat: Cultural Learnings of America for Make
Benefit Glorious Nation of Kazakhstan (2006); The Chronicles of Narnia: The Lion, the Witch and the Wardrobe (2005);
Star Trek II: The Wrath of Khan (1982); Monty Python and the Holy Grail (1975); The Hitchhiker's Guide to the Galaxy
(2005); Crocodile Dundee (1986); Who Framed Roger Rabbit (1988); Honey, I Shrunk the Kids (1989)"""


def film_titles() -> list[str]:
    return [t.strip() for t in " ".join(FILMS.split()).split(";")]


# ---------------------------------------------------------------------------------------------------------------
# The sample

def build_tree(tokenizer, k: int, prompt_tokens: int, seed: int = 0):
    """One sample: a history prompt of about `prompt_tokens` tokens (chat template included) and k+1 candidates
    (one chosen, k rejected), each a film title. Same history and same first candidates for every k."""
    from prefrec.scoring.encoding import encode_texts

    prefix, question, candidates = sample_texts(tokenizer, k, prompt_tokens, seed)
    return encode_texts(tokenizer, prefix, [question], [candidates])


def sample_texts(tokenizer, k: int, prompt_tokens: int, seed: int = 0) -> tuple[str, str, list[str]]:
    """The texts of build_tree's sample: (prefix, question, candidates), candidates[0] chosen, the k others rejected
    (benchmarks/vs_trl.py gives TRL the very same texts)."""
    import random

    from prefrec.scoring.encoding import encode_texts

    titles = film_titles()
    rng = random.Random(seed)
    rng.shuffle(titles)
    question = ("Which movie will the user watch next? Answer with the title of exactly one movie the user has "
                "not watched yet.")
    history: list[str] = []
    tree = None
    for title in titles:
        history.append(title)
        prefix = ("You are a movie recommender. The user has watched the following movies, oldest first: "
                  + ", ".join(history) + ".\n")
        tree = encode_texts(tokenizer, prefix, [question], [["x"]])
        if len(tree.prefix) + len(tree.branches[0].question) >= prompt_tokens:
            break
    candidates = [t for t in titles if t not in history][:k + 1]
    if len(candidates) < k + 1:
        raise SystemExit(f"k={k}: only {len(candidates)} candidate titles left; lower --prompt-tokens or k")
    return prefix, question, candidates


# ---------------------------------------------------------------------------------------------------------------
# Worker: one configuration in a fresh process

def _rss_kb(field: str) -> int:
    m = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(m.group(1)) if m else 0


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(cfg: dict) -> dict:
    import resource

    import torch

    from prefrec.model import add_lora, load_model
    from prefrec.scoring.packing import naive_response_logps, response_logps
    from prefrec.training.losses import PreferenceBatch, dmpo_loss

    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    device, dtype = cfg.get("device", "cpu"), cfg.get("dtype", "fp32")
    model, tok = load_model("embedded", dtype=dtype, device=device, attn_implementation=cfg["attn"])
    tree = build_tree(tok, cfg["k"], cfg["prompt_tokens"])
    fn = response_logps if cfg["method"] == "packed" else naive_response_logps
    mode = cfg["mode"]
    if mode == "score":
        def step():
            with torch.inference_mode():
                fn(model, [tree]).summed.sum().item()
    else:
        model = add_lora(model, r=8, alpha=16, dropout=0.05)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)
        ref = None

        def reference():
            with torch.no_grad(), model.disable_adapter():
                return fn(model, [tree]).chosen_rejected()

        if mode == "train_cached":
            ref = reference()

        def step():
            rc, rr = ref if ref is not None else reference()
            pc, pr = fn(model, [tree]).chosen_rejected()
            batch = PreferenceBatch(pc, pr, torch.ones_like(pc), torch.ones_like(pr), rc, rr)
            loss = dmpo_loss(batch, 0.1)[0].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    import gc

    gc.collect()
    cuda = device != "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model_rss_kb = _rss_kb("VmRSS")
    reset_ok = _reset_peak()
    if cuda:
        model_dev_mb = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    step()  # warm-up (allocator, kernels' first-call costs)
    sync()
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(cfg["repeats"]):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    peak_kb = _rss_kb("VmHWM") if reset_ok else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if cuda:  # on a GPU the memory that matters is the device's: report its peak in the same fields
        peak_kb, model_rss_kb = torch.cuda.max_memory_allocated() / 1024, model_dev_mb * 1024
    return {
        "time_s": statistics.median(times), "times_s": times, "warmup_s": warmup_s,
        "useful_gflop": _useful_gflop(model, tree, cfg["method"], mode),
        "peak_rss_mb": peak_kb / 1024, "model_rss_mb": model_rss_kb / 1024, "memory": "cuda" if cuda else "rss",
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_is_step_only": reset_ok, "torch_threads": torch.get_num_threads(),
        "prompt_tokens": len(tree.prefix) + len(tree.branches[0].question),
        "response_tokens": [len(r) for r in tree.branches[0].responses],
        "packed_tokens": tree.n_tokens(), "naive_tokens": tree.n_naive_tokens(),
        "naive_padded_tokens": (cfg["k"] + 1) * (len(tree.prefix) + len(tree.branches[0].question)
                                                + max(len(r) for r in tree.branches[0].responses)),
    }


def _useful_gflop(model, tree, method: str, mode: str) -> float:
    """Useful FLOPs of one step (benchmarks/flops.py), for the fraction of the matmul ceiling / MFU."""
    from flops import tree_forward_flops

    passes = {"score": 1, "train_cached": 2, "train_ref": 3}[mode]  # a LoRA step = 2 forwards, + the reference's
    return tree_forward_flops(model, tree, packed=method == "packed") * passes / 1e9


# ---------------------------------------------------------------------------------------------------------------
# Driver

def run_config(cfg: dict, timeout_s: float) -> dict:
    """Run one configuration in a fresh interpreter; returns its measurements or a status explaining the failure."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "note": f"killed after {timeout_s:.0f} s"}
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        why = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit code {proc.returncode}"
        return {"status": "failed", "note": f"{why}: {proc.stderr.strip()[-400:]}"}
    out = json.loads(lines[-1])
    out.update(status="measured", wall_s=wall)
    return out


def machine() -> dict:
    from quiet import cpu_model

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "cpu": cpu_model()}
    try:
        mem = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        info["mem_total_gb"] = round(int(mem.group(1)) / 2**20, 1) if mem else None
        info["load_average_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def extrapolate(row: dict, base: dict, base_k: int, k: int) -> dict:
    """Naive cost is k+1 independent sequences: scale time and above-model memory linearly in k+1."""
    f = (k + 1) / (base_k + 1)
    above = base["peak_rss_mb"] - base["model_rss_mb"]
    row.update(time_s=base["time_s"] * f, peak_rss_mb=base["model_rss_mb"] + above * f,
               model_rss_mb=base["model_rss_mb"], extrapolated_from_k=base_k)
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="k = 1 3, one repeat, small budgets; writes packing-quick.*")
    ap.add_argument("--ks", type=int, nargs="+", default=None, help="default 1 3 7 15 31 63")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps per configuration (default 3)")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--prompt-tokens", type=int, default=400)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--naive-budget-s", type=float, default=None,
                    help="skip (and extrapolate) a naive configuration predicted to take longer (default 900)")
    ap.add_argument("--mem-limit-gb", type=float, default=None,
                    help="skip (and extrapolate) a configuration predicted to need more (default 85%% of RAM)")
    from quiet import add_output_args

    add_output_args(ap, "packing")
    ap.set_defaults(name=None)  # packing, or packing-quick with --quick
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return

    ks = args.ks or ([1, 3] if args.quick else [1, 3, 7, 15, 31, 63])
    repeats = args.repeats or (1 if args.quick else 3)
    budget = args.naive_budget_s or (300.0 if args.quick else 900.0)
    import torch
    from flops import matmul_gflops
    from quiet import Quiet, result_stem

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet = Quiet()
    ceiling = [matmul_gflops(device, args.dtype)]
    mach = machine()
    mem_limit_mb = (args.mem_limit_gb * 1024 if args.mem_limit_gb
                    else 0.85 * (mach.get("mem_total_gb") or 24) * 1024)
    custom = args.name is not None or args.out_dir != RESULTS  # a named run never rewrites docs/packing.md
    stem = args.out_dir / (args.name or ("packing-quick" if args.quick else "packing"))

    from tqdm import tqdm

    from prefrec.provenance import provenance

    rows: list[dict] = []
    measured_naive: dict[str, tuple[int, dict]] = {}  # mode -> (largest measured k, its row)
    plan = [(k, method, mode) for k in sorted(ks) for method in args.methods for mode in args.modes]
    for k, method, mode in tqdm(plan, desc="packing benchmark", unit="config"):
        cfg = {"k": k, "method": method, "mode": mode, "repeats": repeats, "prompt_tokens": args.prompt_tokens,
               "attn": args.attn, "threads": args.threads, "device": device, "dtype": args.dtype}
        row = dict(cfg)
        prior = measured_naive.get(mode) if method == "naive" else None
        if prior is not None:
            base_k, base = prior
            guess = extrapolate({}, base, base_k, k)
            predicted_s = guess["time_s"] * (repeats + 1) + 30
            if predicted_s > budget or guess["peak_rss_mb"] > mem_limit_mb:
                why = (f"predicted {predicted_s:.0f} s > budget {budget:.0f} s" if predicted_s > budget
                       else f"predicted {guess['peak_rss_mb'] / 1024:.1f} GB > limit {mem_limit_mb / 1024:.1f} GB")
                row.update(status="extrapolated", note=f"not run ({why}); linear in k+1 from k={base_k}")
                rows.append(extrapolate(row, base, base_k, k))
                continue
        timeout = max(budget, 600.0) * (3 if method == "packed" else 1.5)
        row.update(run_config(cfg, timeout))
        if row["status"] != "measured" and prior is not None:
            row["note"] = row.get("note", "") + f"; shown: linear extrapolation from k={prior[0]}"
            extrapolate(row, prior[1], prior[0], k)
            row["status"] = "extrapolated"
        elif row["status"] == "measured" and method == "naive":
            measured_naive[mode] = (k, row)
        rows.append(row)
        tqdm.write(f"k={k:>2} {method:6s} {mode:12s} {row['status']:12s} "
                   + (f"{row['time_s']:.2f} s  peak {row['peak_rss_mb']:.0f} MB" if "time_s" in row else
                      row.get("note", "")))

    ceiling.append(matmul_gflops(device, args.dtype))
    mach["quiet"] = quiet.finish()
    mach["matmul_gflops"] = ceiling
    for r in rows:
        if r.get("status") == "measured" and r.get("useful_gflop"):
            r["fraction_of_ceiling"] = r["useful_gflop"] / r["time_s"] / max(ceiling)
    stem = result_stem(stem.name, mach["quiet"]["busy"], stem.parent)
    command = " ".join(["python benchmarks/packing.py", *(argv if argv is not None else sys.argv[1:])])
    result = {"kind": "benchmark", "name": "packing", "command": command, "machine": mach,
              "config": {"ks": ks, "repeats": repeats, "prompt_tokens": args.prompt_tokens, "attn": args.attn,
                         "threads": args.threads, "naive_budget_s": budget, "mem_limit_gb": mem_limit_mb / 1024,
                         "model": f"embedded SmolLM2-135M-Instruct, {args.dtype}, {device}", "lora": "r=8, alpha=16, q,k,v,o",
                         "loss": "DMPO, beta=0.1", "batch": "1 sample per step"},
              "rows": rows, **provenance()}
    result["summary"] = summarize(rows)
    result["targets"] = targets(result["summary"], rows)
    from prefrec.io import write_text
    from prefrec.io import write_json

    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    result["json_name"] = json_path.name
    write_json(json_path, result)
    text = markdown(result)
    write_text(md_path, text)
    print(text)
    print(f"wrote {json_path} and {md_path}")
    if not args.quick and not custom and not mach["quiet"]["busy"]:
        update_docs(text)


def update_docs(table_md: str) -> None:
    """Copy the table of a full run into docs/packing.md, between its benchmark markers."""
    doc = Path(__file__).resolve().parents[1] / "docs" / "packing.md"
    start, end = "<!-- packing-benchmark:start -->", "<!-- packing-benchmark:end -->"
    if not doc.exists():
        return
    text = doc.read_text(encoding="utf-8")
    if start not in text or end not in text:
        return
    body = table_md.split("\n", 1)[1].strip()  # drop the H1 title
    body = body.replace("\n## ", "\n### ")
    new = text[:text.index(start) + len(start)] + "\n" + body + "\n" + text[text.index(end):]
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, doc)
    print(f"updated {doc}")


# ---------------------------------------------------------------------------------------------------------------
# Summary, targets, Markdown

def _get(rows, k, method, mode):
    for r in rows:
        if r["k"] == k and r["method"] == method and r["mode"] == mode and "time_s" in r:
            return r
    return None


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for k in sorted({r["k"] for r in rows}):
        s = {"k": k}
        for r in rows:
            if r["k"] == k and "packed_tokens" in r:
                s.update(prompt_tokens=r["prompt_tokens"], packed_tokens=r["packed_tokens"],
                         naive_tokens=r["naive_tokens"], naive_padded_tokens=r["naive_padded_tokens"],
                         mean_response_tokens=sum(r["response_tokens"]) / len(r["response_tokens"]))
                break
        for mode in MODES:
            p, n = _get(rows, k, "packed", mode), _get(rows, k, "naive", mode)
            if p:
                s[f"{mode}_packed_s"] = p["time_s"]
                s[f"{mode}_packed_peak_mb"] = p["peak_rss_mb"]
            if n:
                s[f"{mode}_naive_s"] = n["time_s"]
                s[f"{mode}_naive_peak_mb"] = n["peak_rss_mb"]
                s[f"{mode}_naive_extrapolated"] = n["status"] == "extrapolated"
            if p and n:
                s[f"{mode}_speedup"] = n["time_s"] / p["time_s"]
                s[f"{mode}_memory_ratio"] = p["peak_rss_mb"] / n["peak_rss_mb"]
        out.append(s)
    return out


def targets(summary: list[dict], rows: list[dict]) -> list[dict]:
    """Issue #3's targets, each with the measured value, met or not, and the margin."""
    by_k = {s["k"]: s for s in summary}
    out = []

    def add(name, k, mode, key, goal, higher_is_better, unit):
        s = by_k.get(k, {})
        value = s.get(key)
        t = {"target": name, "k": k, "goal": goal, "unit": unit, "value": value}
        if value is None:
            t.update(status="not measured")
        else:
            met = value >= goal if higher_is_better else value <= goal
            t.update(status="met" if met else "missed", margin=(value / goal - 1.0) if higher_is_better
                     else (goal / value - 1.0))
            if s.get(f"{mode}_naive_extrapolated"):
                t["note"] = "naive side extrapolated, not measured"
        out.append(t)

    for mode in ("train_cached", "train_ref"):
        add(f"train speed-up at k=15 ({MODE_TITLES[mode]})", 15, mode, f"{mode}_speedup", 10.0, True, "x")
        add(f"train speed-up at k=3 ({MODE_TITLES[mode]})", 3, mode, f"{mode}_speedup", 3.5, True, "x")
    add("peak memory at k=15, packed / naive (train step, cached reference)", 15, "train_cached",
        "train_cached_memory_ratio", 0.20,
        False, "ratio")
    for mode in ("train_cached", "train_ref"):
        r = _get(rows, 63, "packed", mode)
        t = {"target": f"k=63 trains within 24 GB ({MODE_TITLES[mode]})", "k": 63, "goal": 24 * 1024, "unit": "MB",
             "value": r["peak_rss_mb"] if r else None}
        if r:
            t.update(status="met" if r["peak_rss_mb"] <= 24 * 1024 else "missed",
                     margin=24 * 1024 / r["peak_rss_mb"] - 1.0)
        else:
            t.update(status="not measured")
        out.append(t)
    return out


def _fmt(s: dict, key: str, scale: float = 1.0) -> str:
    """A summary cell; naive values that were extrapolated, not measured, get a `*`."""
    v = s.get(key)
    if v is None:
        return "–"
    mark = "*" if "_naive_" in key and s.get(key.split("_naive_")[0] + "_naive_extrapolated") else ""
    return f"{v / scale:.2f}{mark}"


def _why(t: dict, by_k: dict, busy: bool) -> str:
    """A factual reason for a missed target, from the run's own numbers."""
    s = by_k.get(t["k"], {})
    note = " The machine was busy during this run, which distorts every timing." if busy else ""
    if t["unit"] == "x" and s.get("packed_tokens"):
        naive, packed = s["naive_padded_tokens"], s["packed_tokens"]
        ratio, resp = naive / packed, packed - s["prompt_tokens"]
        if ratio < t["goal"]:
            return (f"at this prompt and response length the naive batch holds only {ratio:.1f}x the tokens of the "
                    f"packed row ({naive} padded tokens vs {packed}), so on the transformer body removing the repeated "
                    f"prompt cannot give {t['goal']:g}x; the rest can only come from the LM head (naive: full "
                    f"logits at all {naive} positions; packed: at the {resp} response tokens)." + note)
        return (f"the token ratio is {ratio:.1f}x ({naive} padded tokens vs {packed}), but the packed row attends over "
                f"one {packed}-token row through a dense 4D mask (attention cost quadratic in the row length, where "
                f"naive has k+1 rows of {naive // (t['k'] + 1)}), and the fixed per-step costs (AdamW, mask "
                f"construction, Python) weigh more in the shorter packed step." + note)
    if t["unit"] == "ratio" and s.get("train_cached_packed_peak_mb"):
        return (f"peaks are whole-process RSS, including the loaded model, LoRA, optimizer and the Python/torch "
                f"runtime, a floor for both paths; the packed step's activations are small next to it at "
                f"k={t['k']}." + note)
    return note.strip()


def markdown(result: dict) -> str:
    summ, rows, cfg, mach = result["summary"], result["rows"], result["config"], result["machine"]
    by_k = {s["k"]: s for s in summ}
    any_s = next((s for s in summ if "prompt_tokens" in s), {})
    lines = [
        "# Packing benchmark: one prompt for all responses vs one sequence per response",
        "",
        f"Command: `{result.get('command', 'python benchmarks/packing.py')}` · {result.get('created', '')[:19]} "
        f"· git `{result.get('git_commit')}`",
        f"Machine: {mach.get('cpu')}, {mach.get('cpu_count')} cores, {mach.get('mem_total_gb')} GB RAM, "
        f"torch threads {next((r.get('torch_threads') for r in rows if r.get('torch_threads')), '?')}, load average "
        f"at start {', '.join(f'{x:.1f}' for x in mach.get('load_average_at_start', []))}.",
        f"Model: {cfg['model']}, attention `{cfg['attn']}`; LoRA {cfg['lora']}; loss {cfg['loss']}; "
        f"{cfg['batch']}. Prompt {any_s.get('prompt_tokens', '?')} tokens (chat template included); responses "
        f"{any_s.get('mean_response_tokens', 0):.1f} tokens on average (end-of-turn token included).",
        f"Times: median of {cfg['repeats']} timed steps after one warm-up, seconds per training example. Peak = "
        "peak RSS of a fresh process during the timed steps (model weights included), GB. "
        "`*` = naive not run, linear extrapolation in k+1 from the largest measured k (see notes).",
        "",
        "| k | tokens naive / packed | train (cached ref) naive | packed | speed-up | train (ref pass) naive | "
        "packed | speed-up | scoring naive | packed | speed-up | peak train naive | packed | packed/naive |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if "quiet" in mach:  # benchmarks/quiet.py's record (results before issue 18 only had the load at start)
        from quiet import describe

        busy = mach["quiet"]["busy"]
        ceiling = " / ".join(f"{c:.1f}" for c in mach.get("matmul_gflops", []))
        lines[6:6] = ["", describe(mach["quiet"]) + f" Matmul ceiling {ceiling} GFLOP/s (before / after)."]
    else:
        load = mach.get("load_average_at_start") or [0.0]
        busy = load[0] > 0.5 * (mach.get("cpu_count") or 1)
        if busy:
            lines[6:6] = ["", f"**Warning: the machine was busy (load average {load[0]:.1f} on {mach.get('cpu_count')} "
                          "cores) when this run started: times are inflated and unreliable; rerun on a quiet machine.**"]
    for s in summ:
        def sp(mode):
            v = s.get(f"{mode}_speedup")
            return f"{v:.1f}x" + ("*" if s.get(f"{mode}_naive_extrapolated") else "") if v else "–"
        mr = s.get("train_cached_memory_ratio")
        lines.append(
            f"| {s['k']} | {s.get('naive_padded_tokens', '–')} / {s.get('packed_tokens', '–')} | "
            f"{_fmt(s, 'train_cached_naive_s')} | {_fmt(s, 'train_cached_packed_s')} | {sp('train_cached')} | "
            f"{_fmt(s, 'train_ref_naive_s')} | {_fmt(s, 'train_ref_packed_s')} | {sp('train_ref')} | "
            f"{_fmt(s, 'score_naive_s')} | {_fmt(s, 'score_packed_s')} | {sp('score')} | "
            f"{_fmt(s, 'train_cached_naive_peak_mb', 1024)} | {_fmt(s, 'train_cached_packed_peak_mb', 1024)} | "
            + (f"{mr:.0%}" + ("*" if s.get("train_cached_naive_extrapolated") else "") if mr else "–") + " |")
    lines += ["", "## Targets (issue #3)", "", "| target | goal | measured | status |", "|---|---|---|---|"]
    for t in result["targets"]:
        if t["value"] is None:
            val, status = "–", "not measured in this run"
        else:
            val = (f"{t['value']:.2f}x" if t["unit"] == "x" else f"{t['value']:.0%}" if t["unit"] == "ratio"
                   else f"{t['value'] / 1024:.2f} GB")
            q = t["value"] / t["goal"]
            if t["unit"] == "x":  # higher is better
                status = (f"met ({q:.2f}x the goal)" if t["status"] == "met"
                          else f"**missed: {q:.0%} of the goal, {1 / q:.2f}x short**")
            else:  # lower is better
                status = (f"met ({q:.0%} of the limit)" if t["status"] == "met"
                          else f"**missed: {q:.2f}x the limit**")
            status += f" ({t['note']})" if t.get("note") else ""
        goal = (f"≥ {t['goal']:g}x" if t["unit"] == "x" else f"≤ {t['goal']:.0%}" if t["unit"] == "ratio"
                else f"≤ {t['goal'] / 1024:.0f} GB")
        lines.append(f"| {t['target']} | {goal} | {val} | {status} |")
    missed = [t for t in result["targets"] if t["status"] == "missed"]
    if missed:
        lines += ["", "Why the missed targets are missed:"]
        for t in missed:
            lines.append(f"- {t['target']}: {_why(t, by_k, busy)}")
    fractions = [r for r in rows if r.get("fraction_of_ceiling")]
    if fractions:
        lines += ["", "Useful FLOP rate as a fraction of the measured matmul ceiling (benchmarks/flops.py; on a GPU "
                  "this is MFU against the achieved, not the advertised, peak):", ""]
        lines += [f"- k={r['k']} {r['method']} {r['mode']}: {r['fraction_of_ceiling']:.0%}" for r in fractions]
    notes = [r for r in rows if r.get("status") != "measured"]
    if notes:
        lines += ["", "## Notes", ""]
        for r in notes:
            lines.append(f"- k={r['k']} {r['method']} {r['mode']}: {r['status']}: {r.get('note', '')}")
    lines += ["", f"Raw numbers (every repeat, model RSS, token counts): `{result['json_name']}`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
