"""`prefrec eval`: score a model (zero-shot or trained) on prepared samples with the paper metrics (docs/evaluate.md).

One function per task turns samples into per-sample scores, with the packed scorer of prefrec.scoring.packing (every
response of a sample in one forward pass); prefrec.tasks.metrics turns the scores into numbers:

    pairwise   s_first = logp("pos, neg" | x), s_second = logp("neg, pos" | x) for every comparison of every sample
               -> AUC over the pooled item scores σ(s_first − s_second), 1 − σ(…); pairwise accuracy
    candidates likelihood ranking: every candidate title as a response to the prompt, one packed forward per sample,
               ranked by summed logp (rank_*) and by mean logp per token (rank_norm_*)
               -> HR@1, HR@5, NDCG@5, NDCG@10, MRR;
               greedy generation (chat template, max_new_tokens) -> matched to one candidate (prefrec.scoring.matching)
               -> HR@1 and ValidRatio
    yesno      P(Yes) and P(No) = softmax over the whole vocabulary at the answer's first position, read at the first
               token of the "Yes." and "No." responses; score = P(Yes) / (P(Yes) + P(No)) = σ(log P(Yes) − log P(No))
               -> ROC-AUC, accuracy. One softmax: TALLRec's second softmax over the two logits gives the same AUC
               but is not a probability of the model (docs/evaluate.md, the papers' code).

Outputs: OUT/results.json (prefrec.results says what it holds) and OUT/per_sample.jsonl (fields read by
prefrec.evaluation.report for bootstrap CIs).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Sequence

from prefrec.errors import UserError
from prefrec.model import load_model
from prefrec.provenance import provenance
from prefrec.results import RUN_CONFIG, is_run_dir, read_run, read_run_config, write_results
from prefrec.data.prepared import read_split, read_stats, split_file, training_stats
from prefrec.samples import Sample
from prefrec.scoring import generation, trunk
from prefrec.scoring.encoding import prompt_format
from prefrec.scoring.vllm_generate import require_vllm
from prefrec.tasks import task as task_row

# ---- inputs ----

def read_samples_and_stats(samples: str | os.PathLike | Sequence[Sample], split: str = "test") \
        -> tuple[list[Sample], dict, str]:
    """(samples, stats.json or {}, where): a prepared folder (SPLIT.jsonl + stats.json), one .jsonl file, or a list."""
    if not isinstance(samples, (str, os.PathLike)):
        return list(samples), {}, "<samples>"
    f = split_file(samples, split)
    return read_split(f), read_stats(f.parent), str(f)


def _task_of(samples: list[Sample], where: str) -> str:
    tasks = sorted({s.task for s in samples})
    if len(tasks) != 1:
        raise UserError(f"{where}: {'no samples' if not tasks else 'mixed tasks ' + ', '.join(tasks)}; "
                        f"evaluate one task at a time")
    return tasks[0]


# ---- the whole evaluation ----

def evaluated(name) -> tuple[str, dict]:
    """What is evaluated, and what its run says about itself: ("run" | "adapter" | "export" | "model", run info).

    A run's adapter folder (RUN/adapter) and an export of a run (its export.json names the run) are the run's model,
    so they carry the run's method; an adapter or export whose run is not there is labelled by its kind, never as
    zero-shot (a trained model recorded as zero-shot would be a report's zero-shot baseline)."""
    if not isinstance(name, (str, os.PathLike)):
        return "model", {}
    p = Path(name)
    if is_run_dir(p):
        return "run", _run_info(p)
    record = p / "export.json"
    if record.is_file():
        run = (json.loads(record.read_text(encoding="utf-8")) or {}).get("run")
        return "export", (_run_info(run) if run and is_run_dir(run) else {}) or {"method": "export"}
    if (p / "adapter_config.json").is_file():
        return "adapter", (_run_info(p.parent) if is_run_dir(p.parent) else {}) or {"method": "adapter"}
    return "model", {}


def _run_info(name) -> dict:
    """What a prefrec run folder says about itself: method (last stage), k, shots, regime, seed, config."""
    run = read_run(name)
    info: dict = {"seed": run.get("seed"), "base_model": run.get("base_model"), "run_dir": str(name)}
    stages = run.get("stages") or []
    last = stages[-1] if stages else None
    if isinstance(last, str):  # prefrec train: stages = ["sft", "dmpo"], details in stage_info[kind]
        info["method"] = last
        details = (run.get("stage_info") or {}).get(last) or {}
        info["k"] = details.get("k") if last != "sft" else None
        info["shots"] = details.get("train_samples")
        info["regime"] = details.get("regime")
    elif isinstance(last, dict):
        info["method"] = last.get("method") or last.get("loss") or last.get("name")
        info["k"] = last.get("k")
        info["shots"] = last.get("shots", last.get("n_train", last.get("train_samples")))
        info["regime"] = last.get("regime")
    for key in ("k", "shots", "regime"):
        if info.get(key) is None and run.get(key) is not None:
            info[key] = run[key]
    info["run"] = {k: v for k, v in run.items() if k in ("base_model", "stages", "stage_info", "seed", "timings",
                                                         "git_commit", "items")}  # items: a hybrid-prompt run
    if (Path(name) / RUN_CONFIG).is_file():
        info["train_config"] = read_run_config(name)
    cfg_stages = (info.get("train_config") or {}).get("stages") if isinstance(info.get("train_config"), dict) else None
    if info.get("method") not in (None, "sft") and isinstance(cfg_stages, list) and cfg_stages \
            and isinstance(cfg_stages[-1], dict):
        info["beta"] = cfg_stages[-1].get("beta")  # the alignment stage's β (SFT has none that matters)
    return info


def _out_dir_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def _in_eval_mode(fn):
    """Run `fn(model_or_run, ...)` with an already loaded model in eval mode (dropout off: scores must not depend on
    the caller's mode), and give the model its previous train/eval mode back afterwards, even on an error."""
    @functools.wraps(fn)
    def wrapper(model_or_run, *args, **kwargs):
        model = model_or_run[0] if isinstance(model_or_run, tuple) else None
        if model is None:
            return fn(model_or_run, *args, **kwargs)
        was_training = model.training
        model.eval()
        try:
            return fn(model_or_run, *args, **kwargs)
        finally:
            model.train(was_training)
    return wrapper


def _score(task: str, model, tokenizer, samples: list[Sample], kw: dict, timing: dict, t_loaded: float, *,
           generate: bool, max_new_tokens: int, gen_batch_size: int, constrained: bool = False,
           gen_backend: str = "transformers") \
        -> tuple[list[dict], dict]:
    """Per-sample rows and the task's metrics (its row of prefrec.tasks.TASKS), with the scoring and generation times in
    `timing`."""
    row = task_row(task)
    rows = row.score(model, tokenizer, samples, **kw)
    t_scored = time.perf_counter()
    timing["score_s"] = t_scored - t_loaded
    metrics = {}
    if generate and row.generate is not None:
        metrics.update(row.generate(model, tokenizer, samples, rows, max_new_tokens=max_new_tokens,
                                    batch_size=gen_batch_size, progress=kw["progress"], constrained=constrained,
                                    backend=gen_backend))
        timing["generate_s"] = time.perf_counter() - t_scored
    metrics.update(row.metrics(rows))
    return rows, metrics


def _mismatches(model_or_run, info: dict, task: str, stats: dict, allow: bool = True) -> list[str]:
    """When a run (`evaluated`'s info: a run folder, its adapter or its export) is evaluated on samples unlike its
    training data (another task, or another answer format): an error unless `allow` (`--allow-mismatch`), then
    warnings, printed and kept in results.json."""
    trained = training_stats(info["run_dir"]) if info.get("run_dir") else None
    if not trained:
        return []
    out = []
    if trained.get("task") and trained["task"] != task:
        out.append(f"{model_or_run} was trained on the {trained['task']} task and is evaluated on {task} samples")
    answers = [(d.get("protocol") or {}).get("answers") or "title" for d in (trained, stats)]
    if task == trained.get("task") and answers[0] != answers[1]:
        out.append(f"{model_or_run} was trained on {answers[0]} answers and is evaluated on {answers[1]} answers")
    if out and not allow:
        raise UserError(f"{out[0]}; --allow-mismatch evaluates it anyway (the result then says so)")
    for w in out:
        print(f"warning: {w}", file=sys.stderr)
    return out


def _check_backend(backend: str, generate: bool) -> None:
    if backend not in generation.BACKENDS:
        raise UserError(f"generation backend {backend!r}: expected one of {', '.join(generation.BACKENDS)}")
    if backend == "vllm" and generate:
        require_vllm()


def _load(model_or_run, dtype, device):
    """(model, tokenizer, name): an already loaded pair as it is, else load_model with a run's adapter folded in."""
    if isinstance(model_or_run, tuple):
        model, tokenizer = model_or_run
        return model, tokenizer, getattr(getattr(model, "config", None), "_name_or_path", "") or "in-memory model"

    model, tokenizer = load_model(str(model_or_run), dtype=dtype, device=device, merge_adapter=True)
    return model, tokenizer, str(model_or_run)


@contextlib.contextmanager
def _trunk_cache(model, info: dict, layers: int | None, cache_dir):
    """A context with a trunk cache attached that runs the top `layers` layers (default: the run's lora.layers),
    yielding it (or None: no cache). The bottom of a run's merged model is its base's, so zero-shot and every top-N
    adapter of a grid share one cache."""
    if layers is None:
        layers = ((info.get("train_config") or {}).get("lora") or {}).get("layers")
    if not layers:
        yield None
        return
    start = len(trunk.decoder_layers(model)) - layers
    if start < 0:
        raise UserError(f"--trunk-layers {layers}: the model has {start + layers} decoder layers")
    cache = trunk.TrunkCache(trunk.place(cache_dir), model, start,
                             training=False)
    trunk.attach(model, cache)
    try:
        yield cache
    finally:
        trunk.attach(model, None)


def _default_batch_tokens(model) -> int:
    """Padded tokens per scoring forward: on a CPU one sample per forward pass was 1.3x faster than padded batches of
    4096 tokens on 2 cores (benchmarks/results/eval_pairwise.md); a GPU wants big batches."""
    return 16384 if next(model.parameters()).device.type == "cuda" else 1


def _default_out(kind: str, model_or_run, model_name: str, method: str, dataset: str, task: str, split: str) -> Path:
    """RUN/eval/DATASET-TASK-SPLIT for a run, else eval/METHOD-MODEL-DATASET-TASK-SPLIT."""
    if kind == "run":
        return Path(model_or_run) / "eval" / _out_dir_name(f"{dataset}-{task}-{split}")
    return Path("eval") / _out_dir_name(f"{method}-{Path(model_name).name}-{dataset}-{task}-{split}")


def _eval_samples(samples_dir, split: str, limit: int | None) -> tuple[list[Sample], dict, str, str]:
    """(samples, stats.json of their folder, where they came from, their task), checked before any model loads."""
    samples, stats, where = read_samples_and_stats(samples_dir, split)
    if limit is not None:
        if limit < 1:
            raise UserError(f"--limit must be at least 1, got {limit}")
        samples = samples[:limit]
    task = _task_of(samples, where)
    task_row(task).check(samples, where)  # before any model loads
    return samples, stats, where, task


@_in_eval_mode
def evaluate(model_or_run, samples_dir, *, split: str = "test", out: str | os.PathLike | None = None,
             limit: int | None = None, generate: bool = True, method: str | None = None, seed: int | None = None,
             dataset: str | None = None, max_new_tokens: int = 64, gen_batch_size: int = 8,
             max_tokens_per_batch: int | None = None, dtype: str | None = None, device: str | None = None,
             progress: bool = True, constrained: bool = False, gen_backend: str = "transformers",
             trunk_layers: int | None = None, cache_dir: str | os.PathLike | None = None,
             allow_mismatch: bool = False) -> dict:
    """Evaluate a model on one split of prepared samples; write OUT/results.json and OUT/per_sample.jsonl.

    model_or_run: "embedded", "gemma3-270m", a Hugging Face id/folder, a prefrec run folder (its adapter on its base
    model), or an already loaded (model, tokenizer) pair (put in eval mode meanwhile, its mode restored after).
    samples_dir: a `prefrec data prepare` folder, a .jsonl file, or a list of Samples. method: default the run's
    last training stage, "zero-shot" for an untrained model. limit: the first N samples. generate: candidates task
    only, greedy generation for HR@1/ValidRatio (the slow part), by transformers or vLLM (gen_backend, GPU only).
    max_tokens_per_batch: padded tokens per scoring forward pass (default: one sample per pass on CPU, 16384 on GPU).
    trunk_layers: run the top N layers from the trunk cache in cache_dir (default: a run's lora.layers; 0: off);
    allow_mismatch: evaluate a run on another task's or answer format's samples (an error otherwise).
    Returns the results dict (as written, plus "out": the output folder).
    """
    t0 = time.perf_counter()
    _check_backend(gen_backend, generate)
    samples, stats, where, task = _eval_samples(samples_dir, split, limit)
    kind, info = evaluated(model_or_run)
    info["warnings"] = _mismatches(model_or_run, info, task, stats, allow_mismatch)
    method = method or info.get("method") or "zero-shot"
    seed = seed if seed is not None else info.get("seed") if info.get("seed") is not None else stats.get("seed")
    dataset = dataset or stats.get("dataset") or (Path(where).parent.name if where != "<samples>" else "samples")
    model, tokenizer, model_name = _load(model_or_run, dtype, device)
    t_loaded = time.perf_counter()
    max_tokens_per_batch = max_tokens_per_batch or _default_batch_tokens(model)
    kw, timing = dict(max_tokens_per_batch=max_tokens_per_batch, progress=progress), {"load_s": t_loaded - t0}
    with _trunk_cache(model, info, trunk_layers, cache_dir) as cache:
        rows, metrics = _score(task, model, tokenizer, samples, kw, timing, t_loaded, generate=generate,
                               max_new_tokens=max_new_tokens, gen_batch_size=gen_batch_size, constrained=constrained,
                               gen_backend=gen_backend)
    timing["total_s"] = time.perf_counter() - t0
    timing["samples_per_s"] = len(samples) / max(timing["total_s"] - timing["load_s"], 1e-9)
    out = Path(out) if out is not None else _default_out(kind, model_or_run, model_name, method, dataset, task, split)
    results = {
        "kind": "eval", "method": method, "dataset": dataset, "task": task, "split": split, "seed": seed,
        "regime": info.get("regime"), "k": info.get("k"), "shots": info.get("shots"), "n_samples": len(samples),
        "metrics": metrics, "model": model_name,
        # the model a run was trained from (or the evaluated model itself): report groups by it, and by β
        "base_model": info.get("base_model") or model_name, "beta": info.get("beta"),
        "warnings": info["warnings"],
        "config": {"samples": where, "split": split, "limit": limit, "generate": generate, "constrained": constrained,
                   "gen_backend": gen_backend, "max_new_tokens": max_new_tokens, "gen_batch_size": gen_batch_size,
                   "max_tokens_per_batch": max_tokens_per_batch, "dtype": str(next(model.parameters()).dtype),
                   "device": str(next(model.parameters()).device), "base_model": info.get("base_model"),
                   # a run's adapter is folded into the base weights for scoring (model.load_model, merge_adapter)
                   "adapter": "merged" if kind in ("run", "adapter") else None, "evaluated": kind,
                   "prompt_format": prompt_format(tokenizer),
                   "trunk_cache": cache.describe() if cache is not None else None,
                   "run": info.get("run"), "train_config": info.get("train_config"),
                   "data": {k: stats.get(k) for k in ("dataset", "task", "seed", "protocol") if k in stats}},
        "timing": timing,
        **provenance(),
    }
    write_results(out, results, rows)
    return {**results, "out": str(out)}
