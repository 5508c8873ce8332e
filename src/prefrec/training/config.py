"""The training config: one YAML file -> typed dataclasses, checked strictly (docs/train.md has the reference).

    model:   {name: embedded, dtype: auto, ...}           which causal LM to start from
    lora:    {r: 8, alpha: 16, dropout: 0.05, layers: null, ...}   the adapter that every stage trains
    data:    {dir: path/to/prepared, ...}                 samples (train.jsonl, valid.jsonl) from `prefrec data prepare`
    stages:  [{kind: sft, ...}, {kind: dmpo, beta: 0.1, k: 3, ...}]
    items:   {embeddings: baselines/x/sasrec-full, ...}  optional: collaborative item tokens (LLaRA; prefrec.items)
    seed, output_dir, eval_every, save_every, keep_last, best_metric, tensorboard, log_with, progress

Every mistake is reported with the file and the key path, e.g.
    config.yaml: stages[1].beta: expected float, got 'abc'
    config.yaml: lora.rank: unknown key; expected one of ['alpha', 'dropout', 'r', 'target_modules']
Unknown keys are errors (a typo must not silently fall back to a default). `--set key=value` overrides are applied
to the parsed YAML before checking, so they are checked the same way (and the message says so).

YAML note: plain YAML 1.1 (PyYAML) reads `1e-4` as a *string* (it wants `1.0e-4`); our loader reads any unquoted
number in exponent notation as a float, which is what everyone means. A quoted '1e-4' stays a string and is an error
where a number is expected. Duplicate keys in one mapping are an error too (PyYAML would keep the last silently).
"""

from __future__ import annotations

import copy
import math
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Iterable

import yaml

from prefrec.errors import UserError
from prefrec.scoring.packing import ATTN_IMPLEMENTATIONS
from prefrec.training import methods

# validation metrics of the task itself (the evaluation's numbers on the validation split), and the training ones
TASK_METRICS = ("auc", "pairwise_accuracy", "accuracy", "rank_hr@1", "rank_hr@5", "rank_mrr", "rank_ndcg@10")
BEST_METRICS = ("auto", "loss", "reward_accuracy", "reward_margin", "chosen_logp", *TASK_METRICS)
TRACKERS = ("tensorboard", "wandb", "mlflow")
DTYPES = ("auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16")


@dataclass
class ModelConfig:
    name: str = "embedded"  # "embedded", "gemma3-270m", a local model folder or cached HF id, or a prefrec run
    dtype: str = "auto"  # auto = fp32 on CPU, bf16 on a GPU that supports it
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    revision: str | None = None  # a Hugging Face id's branch, tag or commit (recorded in run.json)


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # LoRA on the top N decoder layers only (PEFT layers_to_transform); None = every layer. With N set, the frozen
    # layers below are computed once per sample and shared by every epoch, stage, seed and evaluation (trunk_cache)
    layers: int | None = None


@dataclass
class DataConfig:
    dir: str | None = None  # a prepared folder with train.jsonl and (optionally) valid.jsonl
    train: str | None = None  # explicit files instead of (or overriding) dir
    valid: str | None = None
    max_train_samples: int | None = None  # the first N training samples (file order); None = all
    max_valid_samples: int | None = 100  # validation cap (first N); 0 = no validation


@dataclass
class StageConfig:
    kind: str  # a row of prefrec.training.methods.STAGES: sft | dpo | dmpo | sdpo | simpo | orpo | pl | lipo | ...
    epochs: int = 1
    max_steps: int | None = None  # end the stage after this many optimizer steps (None = epochs decide)
    lr: float = 1e-4
    warmup_ratio: float = 0.1  # linear warmup over this fraction of the stage's steps, then cosine decay to 0
    batch_size: int = 4  # per process (micro-batch); global batch = batch_size x grad_accum x processes
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0  # None = no clipping (the norm is still logged)
    weight_decay: float = 0.0
    beta: float | None = None  # the loss's temperature β (None: the row's default, 0.1 for the DPO family)
    params: dict[str, float] = field(default_factory=dict)  # the loss's extra hyper-parameters (row defaults)
    k: int | None = None  # negatives per sample: the first k (None: dpo 1, others all the data has; sft all)
    ftx: float = 0.0  # γ of the optional SFT term on the chosen responses (alignment stages; DMPO code used 1)
    # dropout off while this stage trains (TRL's disable_dropout). None = off for preference stages, whose reference
    # log-probs are computed without dropout (with it, rewards start as noise), and on for sft
    disable_dropout: bool | None = None

    def dropout_off(self) -> bool:
        return methods.is_aligned(self.kind) if self.disable_dropout is None else self.disable_dropout


@dataclass
class CurriculumConfig:
    """LLaRA's curriculum in the SFT stage: text-only prompts first, then a rising share of hybrid ones. Step s of
    S steps trains a sample on its hybrid prompt with probability clamp((s/S − text_only) / ramp, 0, 1), drawn per
    sample from (seed, stage, step): the same on every process and in a resumed run."""
    text_only: float = 0.0  # the fraction of the stage's steps on text-only prompts alone
    ramp: float = 1.0  # then the hybrid share rises linearly from 0 to 1 over this fraction of the steps


@dataclass
class ItemsConfig:
    """Collaborative item tokens (LLaRA): one soft token per history and candidate item, right after its title,
    = projector(table[item]); the table frozen, the projector trained with LoRA in every stage."""
    embeddings: str  # a sequential baseline's output folder (item_embeddings.safetensors + item_ids.json)
    projector_hidden: int = 256  # the MLP's hidden width (Linear -> GELU -> Linear)
    curriculum: CurriculumConfig | None = None  # None: hybrid prompts from the first step


@dataclass
class TrainConfig:
    stages: list[StageConfig]
    output_dir: str = "runs/run"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0
    eval_every: int | None = None  # validate every N optimizer steps (and always at the end of each stage)
    save_every: int | None = None  # checkpoint every N optimizer steps (and always at the end of each stage)
    keep_last: int = 2  # checkpoints kept (older ones deleted); RUN/best/ is kept apart
    best_metric: str = "auto"  # validation metric that picks RUN/best/ (auto: reward_accuracy, or loss for sft; or
    # a task metric such as auc or rank_hr@1, scored on the validation samples as evaluation scores the test ones)
    valid_task_metrics: bool = False  # also score the task's metrics at every validation (on when best_metric is one)
    early_stopping: int | None = None  # end the last stage after this many validations without a new best
    use_best: bool = False  # RUN/adapter/ is the best validated adapter (RUN/best/), not the last one
    # several samples of a micro-batch in one row up to this many tokens (block-diagonal masks); None = a row each
    pack_tokens: int | None = None
    items: ItemsConfig | None = None  # collaborative item tokens (None: text-only prompts, as before)
    # with lora.layers set: store the hidden states entering the adapted layers once per sample and train from them
    # (prefrec.scoring.trunk); trunk_cache_dir: where (None: the user cache folder, prefrec.paths.cache_dir()/trunk)
    trunk_cache: bool = True
    trunk_cache_dir: str | None = None
    # a stage stops with one line when its step loss exceeds this factor × max(its first step's loss, 1) (null: off)
    divergence_factor: float | None = 10.0
    allow_unusual: bool = False  # accept values outside the usual ranges (UNUSUAL below): lr > 0.1, LoRA r > 1024
    tensorboard: bool = False  # also log to TensorBoard (the same as log_with: [tensorboard])
    log_with: list[str] = field(default_factory=list)  # Accelerate trackers: tensorboard, wandb, mlflow
    progress: bool = True  # tqdm bar (main process only)
    # where no bar is shown (stderr not a terminal, or progress: false): one plain line every N optimizer steps
    # (loss, reward accuracy, lr, seconds per step), one per validation, and a summary table at the end; 0 = quiet
    logging_steps: int = 10

    def stage_kinds(self) -> list[str]:
        return [s.kind for s in self.stages]


# ---------------------------------------------------------------------------------------------------------------
# YAML reading

_FLOAT_RE = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                          |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                          |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                          |[-+]?\.(?:inf|Inf|INF)
                          |\.(?:nan|NaN|NAN))$""", re.X)


class _Loader(yaml.SafeLoader):
    """SafeLoader + `1e-4` read as a float + duplicate keys rejected."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (list, dict)):  # `? [a]` (`key in seen` would be a TypeError)
                raise yaml.constructor.ConstructorError(None, None, "a list or mapping as a mapping key",
                                                        key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes what _Loader would read as a float (a revision '1e-4'), so dumps read back as such."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def parse_yaml(text: str, where: str):
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise UserError(f"{where}: not valid YAML ({e})".replace("\n", " ")) from None
    except RecursionError:
        raise UserError(f"{where}: not valid YAML (lists or mappings nested too deeply)") from None


# ---------------------------------------------------------------------------------------------------------------
# Strict conversion of parsed YAML into the dataclasses

def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if is_dataclass(tp):
        return "a mapping"
    return tp.__name__


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Bad:
    """A value that failed its check; the problem is recorded, and checking goes on."""


BAD = _Bad()


class Checker:
    """Strict conversion of parsed YAML into dataclasses that records every problem instead of stopping at the
    first: `fail()` notes one and returns BAD, `raise_problems()` raises them all in one UserError (one line per
    problem, each naming the file and the key path). Used for every typed config (training, experiments)."""

    def __init__(self, source: str, overridden: set[str] | None = None):
        self.source = source
        self.overridden = overridden or set()
        self.problems: list[str] = []

    def fail(self, path: str, msg: str) -> _Bad:
        note = " (set by --set)" if path in self.overridden else ""
        self.problems.append(f"{self.source}: {path or '<top>'}: {msg}{note}")
        return BAD

    def raise_problems(self) -> None:
        if len(self.problems) == 1:
            raise UserError(self.problems[0])
        if self.problems:
            raise UserError(f"{len(self.problems)} problems in {self.source}:\n  " + "\n  ".join(self.problems))

    def convert(self, tp, value, path: str):
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            args = typing.get_args(tp)
            if value is None and type(None) in args:
                return None
            inner = [a for a in args if a is not type(None)]
            if len(inner) == 1:
                if value is None:
                    return self.fail(path, f"expected {_type_name(tp)}, got null")
                return self.convert(inner[0], value, path)
            return self.fail(path, f"unsupported type {tp}")  # not used by our dataclasses
        if origin is list:
            if not isinstance(value, list):
                return self.fail(path, f"expected {_type_name(tp)}, got {_show(value)}")
            (item,) = typing.get_args(tp)
            out = [self.convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
            return BAD if any(v is BAD for v in out) else out
        if origin is dict:
            return self.mapping(typing.get_args(tp)[1], value, path)
        if tp is dict:  # a free mapping whose keys another check owns (an experiment's train:, prepare:)
            return value if isinstance(value, dict) else self.fail(path, f"expected a mapping, got {_show(value)}")
        if is_dataclass(tp):
            return self.dataclass(tp, value, path)
        return self.scalar(tp, value, path)

    def scalar(self, tp, value, path: str):
        if tp is bool and not isinstance(value, bool):
            return self.fail(path, f"expected bool (true/false), got {_show(value)}")
        if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
            return self.fail(path, f"expected int, got {_show(value)}")
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return self.fail(path, f"expected float, got {_show(value)}")
            if not math.isfinite(value):
                return self.fail(path, f"expected a finite number, got {_show(value)}")
            return float(value)
        if tp is str and not isinstance(value, str):
            return self.fail(path, f"expected str, got {_show(value)}")
        if tp not in (bool, int, str):
            return self.fail(path, f"unsupported type {tp}")
        return value

    def mapping(self, item, value, path: str):
        """A free mapping of names to `item` values (a loss's params); which names are allowed is checked later."""
        if not isinstance(value, dict):
            return self.fail(path, f"expected a mapping, got {_show(value)}")
        out = {str(k): self.convert(item, v, f"{path}.{k}") for k, v in value.items()}
        return BAD if any(v is BAD for v in out.values()) else out

    def dataclass(self, cls, value, path: str):
        if not isinstance(value, dict):
            return self.fail(path, f"expected a mapping, got {_show(value)}")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in fields(cls)]
        kwargs, ok = {}, True
        for key in value:
            if key not in names:
                ok = self.fail(f"{path}.{key}" if path else str(key), f"unknown key; expected one of {sorted(names)}")
        for f in fields(cls):
            sub = f"{path}.{f.name}" if path else f.name
            if f.name in value:
                kwargs[f.name] = self.convert(hints[f.name], value[f.name], sub)
                ok = ok if kwargs[f.name] is not BAD else BAD
            elif f.default is MISSING and f.default_factory is MISSING:
                ok = self.fail(sub, "missing (required)")
        return BAD if ok is BAD else cls(**kwargs)


def _positive(ck: Checker, path: str, v, allow_none: bool = True, allow_zero: bool = False) -> None:
    if v is None and allow_none:
        return
    if v is None or v < 0 or (v == 0 and not allow_zero):
        ck.fail(path, f"expected a {'non-negative' if allow_zero else 'positive'} number, got {_show(v)}")


# Values that are legal but almost always a slip (lr 1e30 trained to exit 0 with adapter weights of 1.7e30; r 1e8 ran
# out of memory after a 100-line traceback): refused unless `allow_unusual: true`.
UNUSUAL = {"lr": 0.1, "lora.r": 1024}
MAX_SEED = 2**32 - 1  # numpy's and torch's seeds


def _check_unusual(cfg: TrainConfig, ck: Checker) -> None:
    if not isinstance(cfg.seed, int) or not 0 <= cfg.seed <= MAX_SEED:
        ck.fail("seed", f"expected an integer in [0, {MAX_SEED}], got {_show(cfg.seed)}")
    if cfg.allow_unusual:
        return
    hint = "; set allow_unusual: true if you mean it"
    if isinstance(cfg.lora.r, int) and cfg.lora.r > UNUSUAL["lora.r"]:
        ck.fail("lora.r", f"{cfg.lora.r} is above {UNUSUAL['lora.r']}, more than any model here has dimensions{hint}")
    for i, stage in enumerate(cfg.stages):
        if isinstance(stage.lr, (int, float)) and stage.lr > UNUSUAL["lr"]:
            ck.fail(f"stages[{i}].lr", f"{stage.lr:g} is above {UNUSUAL['lr']:g}: LoRA learning rates are 1e-6 to "
                    f"1e-2{hint}")


def _check_values(cfg: TrainConfig, ck: Checker) -> None:
    """Checks beyond types: allowed values, ranges, stage order (every problem recorded in `ck`)."""
    _check_unusual(cfg, ck)
    _positive(ck, "divergence_factor", cfg.divergence_factor)
    if cfg.model.dtype not in DTYPES:
        ck.fail("model.dtype", f"expected one of {list(DTYPES)}, got {_show(cfg.model.dtype)}")
    if cfg.model.attn_implementation not in ATTN_IMPLEMENTATIONS:
        ck.fail("model.attn_implementation", f"expected one of {list(ATTN_IMPLEMENTATIONS)} (the packed 4D mask "
                f"needs one of them), got {_show(cfg.model.attn_implementation)}")
    _positive(ck, "lora.r", cfg.lora.r, allow_none=False)
    _positive(ck, "lora.alpha", cfg.lora.alpha, allow_none=False)
    if not 0.0 <= cfg.lora.dropout < 1.0:
        ck.fail("lora.dropout", f"expected a float in [0, 1), got {cfg.lora.dropout}")
    if not cfg.lora.target_modules:
        ck.fail("lora.target_modules", "expected at least one module name")
    _positive(ck, "lora.layers", cfg.lora.layers)
    _positive(ck, "logging_steps", cfg.logging_steps, allow_zero=True)
    if cfg.data.dir is None and cfg.data.train is None:
        ck.fail("data", "give data.dir (a prepared folder) or data.train (a samples .jsonl file)")
    _positive(ck, "data.max_train_samples", cfg.data.max_train_samples)
    _positive(ck, "data.max_valid_samples", cfg.data.max_valid_samples, allow_zero=True)
    for name in ("eval_every", "save_every"):
        _positive(ck, name, getattr(cfg, name))
    _positive(ck, "keep_last", cfg.keep_last, allow_none=False)
    _positive(ck, "early_stopping", cfg.early_stopping)
    _positive(ck, "pack_tokens", cfg.pack_tokens)
    if (cfg.early_stopping or cfg.use_best) and not cfg.eval_every:
        ck.fail("early_stopping" if cfg.early_stopping else "use_best", "needs eval_every (validations to choose by)")
    for i, name in enumerate(cfg.log_with):
        if name not in TRACKERS:
            ck.fail(f"log_with[{i}]", f"expected one of {list(TRACKERS)}, got {_show(name)}")
    if cfg.best_metric not in BEST_METRICS:
        ck.fail("best_metric", f"expected one of {list(BEST_METRICS)}, got {_show(cfg.best_metric)}")
    if not cfg.output_dir:
        ck.fail("output_dir", "must not be empty")
    _check_paths(cfg, ck)
    for i, s in enumerate(cfg.stages):
        _check_stage(s, f"stages[{i}]", ck)
    _check_stage_order(cfg, ck)
    if cfg.items is not None:
        _check_items(cfg, ck)


def _check_paths(cfg: TrainConfig, ck: Checker) -> None:
    """No NUL in a path: resolving one is a ValueError (a traceback), not a missing file."""
    paths = {"output_dir": cfg.output_dir, "data.dir": cfg.data.dir, "data.train": cfg.data.train,
             "data.valid": cfg.data.valid, "trunk_cache_dir": cfg.trunk_cache_dir, "model.name": cfg.model.name,
             "items.embeddings": cfg.items.embeddings if cfg.items is not None else None}
    for name, value in paths.items():
        if isinstance(value, str) and "\0" in value:
            ck.fail(name, f"{_show(value)} holds a NUL character, which no path can")


def _check_items(cfg: TrainConfig, ck: Checker) -> None:
    items = cfg.items
    if not items.embeddings:
        ck.fail("items.embeddings", "must not be empty (a baseline's output folder with item_embeddings.safetensors)")
    _positive(ck, "items.projector_hidden", items.projector_hidden, allow_none=False)
    cur = items.curriculum
    if cur is None:
        return
    if not 0.0 <= cur.text_only < 1.0:
        ck.fail("items.curriculum.text_only", f"expected a float in [0, 1), got {cur.text_only}")
    if not 0.0 < cur.ramp <= 1.0:
        ck.fail("items.curriculum.ramp", f"expected a float in (0, 1], got {cur.ramp}")
    elif cur.text_only + cur.ramp > 1.0:
        ck.fail("items.curriculum", f"text_only + ramp = {cur.text_only + cur.ramp:g}: the ramp must end by the "
                f"stage's last step (at most 1)")
    if "sft" not in cfg.stage_kinds():
        ck.fail("items.curriculum", "the curriculum runs in the sft stage; this run has none (an alignment stage "
                "trains on hybrid prompts only, as its reference was scored on them)")


def _check_stage(s: StageConfig, p: str, ck: Checker) -> None:
    if s.kind not in methods.STAGES:
        ck.fail(f"{p}.kind", f"expected one of {list(methods.stage_kinds())}, got {_show(s.kind)}")
    for name in ("epochs", "lr", "batch_size", "grad_accum"):
        _positive(ck, f"{p}.{name}", getattr(s, name), allow_none=False)
    for name in ("max_steps", "max_grad_norm", "k", "beta"):
        _positive(ck, f"{p}.{name}", getattr(s, name))
    for name in ("weight_decay", "ftx"):
        _positive(ck, f"{p}.{name}", getattr(s, name), allow_none=False, allow_zero=True)
    if not 0.0 <= s.warmup_ratio < 1.0:
        ck.fail(f"{p}.warmup_ratio", f"expected a float in [0, 1), got {s.warmup_ratio}")
    row = methods.STAGES.get(s.kind)
    if row is not None and not row.aligned and s.ftx:
        ck.fail(f"{p}.ftx", f"only alignment stages ({', '.join(methods.alignment_kinds())}) take an ftx term")
    for name, value in s.params.items():
        param = row.params.get(name) if row is not None else None
        if row is not None and param is None:
            ck.fail(f"{p}.params.{name}", f"unknown for {s.kind}; expected one of {sorted(row.params)}")
        elif param is not None and param.check(value):
            ck.fail(f"{p}.params.{name}", f"{param.check(value)}, got {_show(value)}")


def _check_stage_order(cfg: TrainConfig, ck: Checker) -> None:
    kinds, aligned = cfg.stage_kinds(), methods.alignment_kinds()
    if not kinds:
        ck.fail("stages", "expected at least one stage")
        return
    ok = kinds == ["sft"] or (len(kinds) == 1 and kinds[0] in aligned) or \
        (len(kinds) == 2 and kinds[0] == "sft" and kinds[1] in aligned)
    if not ok:
        ck.fail("stages", f"expected [sft], [sft, {'|'.join(aligned)}] or [{'|'.join(aligned)}], got {kinds}")
    if cfg.best_metric in ("reward_accuracy", "reward_margin") and kinds[-1] == "sft":
        ck.fail("best_metric", f"{cfg.best_metric} needs an alignment stage; an sft-only run has loss, chosen_logp")


# ---------------------------------------------------------------------------------------------------------------
# Overrides: the one `--set KEY=VALUE` parser, used by `prefrec train` and `prefrec experiment` alike.
# KEY is a path of mapping keys and list positions: `seed`, `data.max_train_samples`, `stages[1].beta` or
# `stages.1.beta` (a position), `datasets.ml-100k.prepare.n_train` (the list item whose `label` is ml-100k).
# VALUE is read as YAML (numbers, `[0, 1]`, `false`, `null`; `5e-5` is a number); an empty VALUE is "".

_KEY_PIECE = re.compile(r"([^.\[\]=]*)((?:\[\d+\])*)")


def _split_key(key: str, source: str = "--set") -> list[str | int]:
    """'stages[1].beta' or 'stages.1.beta' -> ['stages', 1, 'beta']; 'datasets.ml-100k.x' -> ['datasets', 'ml-100k',
    'x'] (a name where a list is met is looked up by label)."""
    parts: list[str | int] = []
    for piece in key.split("."):
        m = _KEY_PIECE.fullmatch(piece)
        if piece.isdigit():
            parts.append(int(piece))
        elif m and (m.group(1) or m.group(2)):
            if m.group(1):
                parts.append(m.group(1))
            parts += [int(x) for x in re.findall(r"\[(\d+)\]", m.group(2))]
        else:
            raise UserError(f"{source} {key}: cannot read the key (use e.g. stages[1].beta or data.dir)")
    return parts


def _key_path(parts: list[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def _by_label(node: list, label: str, where: str, source: str, key: str) -> int:
    """The position of the list item (a mapping) whose `label` is `label`."""
    labels = [d.get("label") for d in node if isinstance(d, dict)]
    if label not in labels:
        raise UserError(f"{source} {key}: no {where.rstrip('s')} labelled {label!r}; the labels are {labels}")
    return next(i for i, d in enumerate(node) if isinstance(d, dict) and d.get("label") == label)


def apply_override(raw: dict, assignment: str, source: str = "--set") -> str:
    """Apply one `KEY=VALUE` to a parsed YAML mapping in place (missing mappings on the way are created); returns
    the key path as `stages[1].beta`. The forms are listed above and in docs/train.md "Config reference"."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"{source} {assignment}: expected key=value, i.e. KEY=VALUE (e.g. seed=3 or eval.limit=50)")
    parts = _split_key(key, source)
    value = parse_yaml(text, f"{source} {key}") if text.strip() else ""
    node = raw
    for i, p in enumerate(parts):
        where = _key_path(parts[:i + 1])
        if isinstance(p, str) and isinstance(node, list) and any(isinstance(d, dict) and "label" in d for d in node):
            p = parts[i] = _by_label(node, p, _key_path(parts[:i]), source, key)
        if isinstance(p, int):
            if not isinstance(node, list) or p >= len(node):
                size = len(node) if isinstance(node, list) else 0
                raise UserError(f"{source} {key}: {where}: index {p} out of range ({size} items)")
        elif not isinstance(node, dict):
            raise UserError(f"{source} {key}: {_key_path(parts[:i])} is not a mapping")
        if i == len(parts) - 1:
            node[p] = value
        else:
            if isinstance(p, str) and (p not in node or node[p] is None):
                node[p] = {}
            node = node[p]
    return _key_path(parts)


def apply_overrides(raw: dict, overrides: Iterable[str], source: str = "--set") -> dict:
    """A copy of `raw` with every `KEY=VALUE` of `overrides` applied in order (the input is left alone)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        apply_override(raw, item, source)
    return raw


# ---------------------------------------------------------------------------------------------------------------
# Public entry points

def config_from_dict(raw, source: str = "config", overridden: set[str] | None = None) -> TrainConfig:
    """The checked TrainConfig of parsed YAML (every problem in one UserError), with each stage's β and params
    filled in from its row of the method table."""
    ck = Checker(source, overridden)
    cfg = ck.fail("", "the config is empty") if raw is None else ck.dataclass(TrainConfig, raw, "")
    ck.raise_problems()
    _check_values(cfg, ck)
    ck.raise_problems()
    for s in cfg.stages:
        s.beta = methods.STAGES[s.kind].beta if s.beta is None else s.beta
        s.params = methods.loss_params(s.kind, s.params)
    return cfg


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), output_dir: str | None = None) \
        -> TrainConfig:
    """Read a YAML config, apply `key=value` overrides and `output_dir`, check it; paths made absolute (relative
    paths are read from the current directory, like any command-line path)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read the config ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); save the config as UTF-8") from None
    raw = parse_yaml(text, str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping at the top of the file, got {_show(raw)}")
    overridden = {apply_override(raw, o) for o in overrides}
    if output_dir is not None:
        raw["output_dir"] = str(output_dir)
    cfg = config_from_dict(raw, str(path), overridden)
    return resolve_paths(cfg)


def resolve_paths(cfg: TrainConfig) -> TrainConfig:
    """Make data/output paths absolute, and the model name when it names an existing local folder."""
    for name in ("dir", "train", "valid"):
        v = getattr(cfg.data, name)
        if v is not None:
            setattr(cfg.data, name, str(Path(v).expanduser().resolve()))
    cfg.output_dir = str(Path(cfg.output_dir).expanduser().resolve())
    if cfg.items is not None:
        cfg.items.embeddings = str(Path(cfg.items.embeddings).expanduser().resolve())
    if cfg.trunk_cache_dir is not None:
        cfg.trunk_cache_dir = str(Path(cfg.trunk_cache_dir).expanduser().resolve())
    if cfg.model.name != "embedded" and Path(cfg.model.name).expanduser().exists():
        cfg.model.name = str(Path(cfg.model.name).expanduser().resolve())
    return cfg


def config_to_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)


def dump_config(cfg: TrainConfig) -> str:
    """YAML text of the full config (defaults filled in): what RUN/config.yaml holds."""
    return yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True)
