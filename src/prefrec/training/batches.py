"""Samples -> training batches: split reading, k selection, tree encoding, and the order of an epoch."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping
from pathlib import Path

import torch

from prefrec.errors import UserError
from prefrec.data import prepared
from prefrec.samples import Comparison, Sample
from prefrec.scoring.encoding import encode_sample
from prefrec.scoring.trees import Tree
from prefrec.tasks import task as task_row
from prefrec.training import methods
from prefrec.training.config import CurriculumConfig, TrainConfig


def split_paths(cfg: TrainConfig) -> tuple[Path, Path | None]:
    """(train file, valid file or None) from data.dir / data.train / data.valid."""
    d = Path(cfg.data.dir) if cfg.data.dir else None
    train = Path(cfg.data.train) if cfg.data.train else d / "train.jsonl"
    if cfg.data.valid:
        valid = Path(cfg.data.valid)
        if not valid.is_file():
            raise UserError(f"data.valid: {valid} does not exist")
    else:
        valid = d / "valid.jsonl" if d is not None and (d / "valid.jsonl").is_file() else None
    if not train.is_file():
        raise UserError(f"data: {train} does not exist (prepare samples with `prefrec data prepare`, "
                        f"see docs/train.md)")
    return train, valid


def read_training_split(path: Path, limit: int | None) -> list[Sample]:
    """A training or validation file's samples (data.prepared.read_split), the first `limit`, with unique ids."""
    samples = prepared.read_split(path)
    if limit is not None:
        samples = samples[:limit]
    seen = set()
    for s in samples:
        if s.id in seen:
            raise UserError(f"{path}: sample id {s.id!r} appears twice (ids key the reference cache)")
        seen.add(s.id)
    return samples


def with_k_negatives(sample: Sample, k: int) -> Sample:
    """The sample with its first k negatives, comparison by comparison (pairwise: the first k comparisons;
    candidates: the first k rejected titles); comparisons left without a negative are dropped."""
    comps, left = [], k
    for c in sample.comparisons:
        if left == 0:
            break
        take = c.rejected[:left]
        comps.append(Comparison(question=c.question, chosen=c.chosen, rejected=list(take)))
        left -= len(take)
    return dataclasses.replace(sample, comparisons=comps)


def stage_k(kind: str, k: int | None, samples: list[Sample], where: str) -> int | None:
    """Negatives per sample for a stage: the configured k (every sample must have that many), else the stage kind's
    default_k (methods.STAGES: dpo 1, sft all (None), dmpo/sdpo all the data has, the same for every sample)."""
    counts = [s.k for s in samples]
    if k is not None:
        short = [(s.id, c) for s, c in zip(samples, counts) if c < k]
        if short:
            raise UserError(f"{where}: k={k} but sample {short[0][0]!r} has only {short[0][1]} negative(s) "
                            f"({len(short)} such samples)")
        return k
    default = methods.stage(kind).default_k
    if default != "data":
        return default
    if len(set(counts)) > 1:
        raise UserError(f"{where}: samples have different numbers of negatives ({sorted(set(counts))}); set k in "
                        f"the {kind} stage")
    return counts[0]


def graded_labels(samples: list[Sample], k: int) -> torch.Tensor | None:
    """ψ (n, 1 + k) for the listwise losses: the user's rating of the chosen item, then of each rejected response's
    item (not rated: 0); None when any sample carries no ratings (the losses then use 1 for the chosen, 0 else).

    Which rating belongs to which response is the task's (its row's `ratings`)."""
    rows = []
    for s in samples:
        if not s.candidate_ratings or len(s.candidate_ratings) != len(s.candidates):
            return None
        rows.append([0.0 if x is None else float(x) for x in task_row(s.task).ratings(s, k)])
    return torch.tensor(rows, dtype=torch.float32)


def encode_trees(tokenizer, samples: list[Sample], kind: str, k: int | None,
                 items: Mapping[str, int] | None = None, which: str | None = None) -> list[Tree]:
    """SFT packs only the chosen responses; alignment packs [chosen, rejected...] per comparison (which: "all" or
    "chosen" instead). items: the run's item id map, for prompts with collaborative item tokens
    (prefrec.scoring.soft)."""
    which = which or ("chosen" if kind == "sft" else "all")
    return [encode_sample(tokenizer, with_k_negatives(s, k) if k is not None else s, which=which, items=items)
            for s in samples]


def hybrid_share(step: int, total: int, curriculum: CurriculumConfig) -> float:
    """The curriculum's share of hybrid prompts at optimizer step `step` (0-based) of `total`:
    clamp((step/total − text_only) / ramp, 0, 1) (config.CurriculumConfig)."""
    return min(1.0, max(0.0, (step / total - curriculum.text_only) / curriculum.ramp))


def hybrid_picks(n: int, share: float, seed: int, stage_index: int, step: int) -> list[bool]:
    """Which of the n samples of one global batch train on their hybrid prompt: uniform draws below `share`, from a
    generator seeded by (seed, stage, step), so every process and a resumed run draw the same."""
    if share >= 1.0:
        return [True] * n
    key = hashlib.sha256(f"{seed}:{stage_index}:{step}:curriculum".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)
    return (torch.rand(n, generator=g) < share).tolist()


def chosen_tokens(tree: Tree) -> int:
    return sum(len(b.responses[0]) for b in tree.branches)


def epoch_order(n: int, seed: int, stage_index: int, epoch: int) -> list[int]:
    """The sample order of one epoch: the same on every process, independent of the global RNG."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + stage_index * 10_007 + epoch)
    return torch.randperm(n, generator=g).tolist()


def shard(n: int, rank: int, world: int) -> list[int]:
    """Contiguous equal shards of range(n), the last padded with n-1, so every process runs the same number of
    forward passes and a gather in rank order gives back 0..n-1 first."""
    m = math.ceil(n / world)
    padded = list(range(n)) + [n - 1] * (m * world - n)
    return padded[rank * m:(rank + 1) * m]
