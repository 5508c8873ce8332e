"""prefrec from Python: the command line's jobs as functions (docs/python.md). The commands call the same code.

    from prefrec.api import prepare, train, evaluate, Ranker

    stats = prepare("ml-100k", source, "pairwise", "data/ml100k-pw")          # -> stats.json's dict
    run = train({"data": {"dir": "data/ml100k-pw"}, "stages": [{"kind": "sft"}], "output_dir": "runs/sft"})
    results = evaluate(run, "data/ml100k-pw")                                 # -> results.json's dict
    Ranker.from_run(run).rank(["Heat (1995)", "Fargo (1996)"], ["Babe (1995)", "Casino (1995)"])

Samples may be a prepared folder, a .jsonl file, a list of `prefrec.samples.Sample`, a list of their dicts (the
.jsonl rows), or a Hugging Face `datasets.Dataset` of those rows (`samples_of`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from prefrec.data.prepare import prepare
from prefrec.errors import UserError
from prefrec.evaluation.evaluate import evaluate as evaluate_samples
from prefrec.samples import Sample
from prefrec.serving.rank import RankPrompt, rank, ranker_of
from prefrec.training.config import TrainConfig, apply_overrides, config_from_dict, load_config, resolve_paths
from prefrec.training.recipe import train as train_config

__all__ = ["prepare", "train", "evaluate", "samples_of", "Ranker"]


def samples_of(data: Any) -> str | os.PathLike | list[Sample]:
    """What evaluate() reads: a folder or file path as it is; Samples, their dicts, or a `datasets.Dataset` of those
    dicts as a list of Samples (each checked like a .jsonl row, its position named on error)."""
    if isinstance(data, (str, os.PathLike)):
        return data
    if hasattr(data, "to_list") and hasattr(data, "column_names"):  # a Hugging Face datasets.Dataset
        data = data.to_list()
    if not isinstance(data, Iterable):
        raise UserError(f"samples: expected a folder, a .jsonl file, Samples or their dicts, got {type(data).__name__}")
    out = []
    for i, row in enumerate(data):
        if isinstance(row, Sample):
            out.append(row)
        elif isinstance(row, Mapping):
            try:
                out.append(Sample.from_dict(dict(row), where=f"samples[{i}]"))
            except ValueError as e:  # from_dict names the field; one UserError like every bad input
                raise UserError(str(e)) from None
        else:
            raise UserError(f"samples[{i}]: expected a Sample or a dict, got {type(row).__name__}")
    return out


def train(config: TrainConfig | Mapping | str | os.PathLike, *, resume: bool = False,
          overrides: Iterable[str] = ()) -> Path:
    """Train as `prefrec train` does and return the run folder. `config`: a TrainConfig, a mapping with the YAML
    file's keys (checked the same way), or a YAML file's path; `overrides`: `--set` strings ("stages[0].lr=1e-4")."""
    if isinstance(config, TrainConfig):
        cfg = resolve_paths(config)
    elif isinstance(config, Mapping):
        cfg = resolve_paths(config_from_dict(apply_overrides(dict(config), overrides), "config"))
    else:
        cfg = load_config(config, list(overrides))
    return train_config(cfg, resume=resume)


def evaluate(model: str | os.PathLike | tuple, samples: Any, **options) -> dict:
    """Evaluate as `prefrec eval` does (options: evaluate_samples's keyword arguments: split, limit, out, dtype,
    trunk_layers, ...) on any samples samples_of() takes; returns the results dict (results.json's, plus "out")."""
    return evaluate_samples(model, samples_of(samples), **options)


class Ranker:
    """A model ready to rank candidates for new users, with the prompt of the task it was trained on."""

    def __init__(self, model, tokenizer, prompt: RankPrompt = RankPrompt()):
        self.model, self.tokenizer, self.prompt = model, tokenizer, prompt

    @classmethod
    def from_run(cls, run_or_model: str | os.PathLike, *, dtype: str | None = None,
                 device: str | None = None) -> "Ranker":
        """A run folder (its adapter on its base, its task's prompt), a model name or folder (the candidates
        prompt), loaded once."""
        from prefrec.model import load_model

        prompt = ranker_of(str(run_or_model))
        model, tokenizer = load_model(str(run_or_model), dtype=dtype, device=device)
        return cls(model, tokenizer, prompt)

    def rank(self, history: list[str], candidates: list[str], *, top: int | None = None, domain: str = "movies",
             max_history: int | None = None) -> list[dict]:
        """The candidates best first: title, score, score_per_token, n_tokens, rank (as `prefrec rank`)."""
        return rank(self.model, self.tokenizer, list(history), list(candidates), domain=domain, top=top,
                    max_history=max_history, ranker=self.prompt)
