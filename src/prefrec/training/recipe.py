"""`prefrec train CONFIG.yaml`: SFT, then DPO / DMPO / S-DPO, on one LoRA adapter, with Accelerate.

The recipe, top to bottom (docs/train.md says the same for users):

    samples (train.jsonl, valid.jsonl)                    prefrec.samples
      -> trees, one per sample                            prefrec.scoring.encoding.encode_sample (prompt once, k+1 responses)
    SFT stage        mean token NLL of the chosen responses (which="chosen": rejected responses are not packed)
    reference        log-probs of every alignment sample under the model *as it is when the alignment stage starts*
                     (after SFT; without SFT the base model, since a fresh LoRA adapter is the identity), computed
                     once under inference_mode and cached in RUN/ref_logps.safetensors; no second model copy
    alignment stage  dpo_loss / dmpo_loss / sdpo_loss (+ ftx · chosen NLL) on the same LoRA adapter
    RUN/adapter/     the final adapter; RUN/run.json, RUN/metrics.jsonl, RUN/checkpoints/step-N/, RUN/best/

One sample -> the losses' inputs (the shapes of prefrec.training.losses):
    chosen   (B, k)  column i: logp(chosen_j | x_j) of the comparison j that rejected response i belongs to
                     (pairwise: comparison i's own chosen; candidates: the one chosen, repeated)
    rejected (B, k)  every rejected response in order (pairwise: one per comparison, each with its own prompt x_j;
                     candidates: the k rejected titles of the one prompt)
DPO pairs column i with rejected i (k independent pairwise losses). DMPO and S-DPO use the mean of the chosen
columns: because the reward is linear in the log-probs, that is the mean of the k chosen rewards, which is how
DMPO eq. 3's r(y_w|x) is formed when every negative comes with its own prompt.

Batches, distribution and determinism:
    global batch G = batch_size x grad_accum x processes. Each epoch visits the training samples in an order drawn
    from a torch.Generator seeded with (seed, stage, epoch); optimizer step s uses order[s*G:(s+1)*G] (the last
    partial global batch of an epoch is dropped), micro-batch a of process r the slice
    [a*B*W + r*B : a*B*W + (r+1)*B]. The loss of a global batch is the mean over its samples (SFT: the mean over its
    chosen tokens), whatever W and grad_accum are; so 1 process with batch 4 and 2 processes with batch 2 take the
    same steps (tests/test_train.py checks losses and weights).
    Everything a resumed run needs is in the checkpoint: adapter, and through Accelerate's save_state the optimizer,
    scheduler and per-process RNG states (sharded under FSDP/DeepSpeed), plus step counters (the data position
    follows from them); resuming reproduces the uninterrupted run.

Why Accelerate directly and not transformers' Trainer: the training step is not a causal-LM forward. One packed
row carries a prompt and k+1 responses with a 4D mask (prefrec.scoring.packing), the reference log-probs come from a cache
computed mid-run by the same model, and the SFT and alignment stages share one adapter. A Trainer would need a
custom compute_loss, a custom collator that keeps trees, a custom data order for exact resume, and callbacks for the
cache: more code than the loop below, and harder to follow. Accelerate gives what we need from a library (DDP, FSDP,
DeepSpeed, mixed precision, gradient accumulation, gathering) and nothing else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prefrec import io
from prefrec.errors import UserError
from prefrec.items import for_training, load_projector, projector_state, write_run_items
from prefrec.results import is_run_dir, write_run, write_run_config
from prefrec.card import write_card
from prefrec.model import add_lora, hub_reference, load_model
from prefrec.provenance import provenance
from prefrec.scoring import trunk
from prefrec.scoring.encoding import prompt_format
from prefrec.scoring.trunk import TrunkCache, decoder_layers
from prefrec.tasks import task as task_row
from prefrec.training import methods
from prefrec.training import stages as stages_module
from prefrec.training.batches import (
    chosen_tokens,
    encode_trees,
    epoch_order,
    graded_labels,
    hybrid_picks,
    hybrid_share,
    read_training_split,
    split_paths,
    stage_k,
)
from prefrec.training.config import (
    BEST_METRICS,
    TASK_METRICS,
    TrainConfig,
    config_to_dict,
    dump_config,
)
from prefrec.training.reference import REF_CACHE, reference_logps, score_split
from prefrec.training.runfolder import (
    RUN_MARKER,
    MetricsLog,
    TrainState,
    _adapter_only_on_load,
    _adapter_only_on_save,
    adapter_state,
    base_model_name,
    check_run_folder,
    checkpoints,
    flat_config,
    load_adapter_weights,
    restore_accelerate_state,
    save_adapter,
    save_checkpoint,
    tracker_names,
)
from prefrec.training.stages import (
    Stage,
    StepScale,
    TreeScorer,
    cosine_with_warmup,
    make_stage,
    set_dropout,
    tree_terms,
)


@dataclass
class Recipe:
    """Everything the stages of one run share: the run folder, Accelerate, the data and its plan, the one model, and
    the counters a checkpoint saves (restored from `state`, the checkpoint's trainer_state.json, when resuming)."""
    cfg: TrainConfig
    run: Path
    acc: object
    state: TrainState | None  # the checkpoint this run resumes from
    resume_from: Path | None
    train_samples: list
    valid_samples: list
    plans: list[StagePlan]
    log: MetricsLog | None = None
    lm: object = None
    tokenizer: object = None
    scorer: object = None
    params: list = field(default_factory=list)
    dropout_rates: dict = field(default_factory=dict)
    prepared: object = None
    rng_restored: bool = False
    items: object = None  # prefrec.items.ItemTokens of a run with collaborative item tokens
    trunk: TrunkCache | None = None  # the stored states below the adapted layers (lora.layers), when used

    def __post_init__(self):
        st = self.state
        self.timings: dict[str, float] = dict(st.timings) if st else {}
        self.global_step = st.global_step if st else 0
        self.best = st.best if st else None
        self.final_valid: dict[str, dict] = dict(st.final_valid) if st else {}
        self.stage_info: dict[str, dict] = dict(st.stage_info) if st else {}
        self.resumes = st.resumes + 1 if st else 0
        last_kind = self.cfg.stages[-1].kind
        self.best_metric = self.cfg.best_metric if self.cfg.best_metric != "auto" else \
            ("reward_accuracy" if methods.is_aligned(last_kind) else "loss")
        self.best_sign = -1.0 if self.best_metric == "loss" else 1.0
        self.task_metrics = self.cfg.valid_task_metrics or self.best_metric in TASK_METRICS
        self.stale = st.stale if st else 0  # validations since the last new best (early stopping)

    @property
    def main(self) -> bool:
        return self.acc.is_main_process

    def stage_done(self, si: int) -> bool:
        """Stage si was finished before the checkpoint this run resumes from."""
        st = self.state
        return st is not None and (si < st.stage_index or (si == st.stage_index and st.stage_done))

    def resumed_step(self, si: int) -> int:
        """The optimizer steps of stage si the checkpoint already took (0 unless resuming inside stage si)."""
        return self.state.stage_step if self.state is not None and si == self.state.stage_index else 0


@dataclass
class StageRun:
    """One stage while it trains: its plan, trees, optimizer and schedule, and where it stands."""
    si: int
    stage: Stage
    k: int | None
    G: int
    total: int
    train_trees: list
    valid_trees: list
    optimizer: object
    scheduler: object
    step: int = 0
    text_trees: list | None = None  # the curriculum's text-only trees (items.curriculum, sft stage)
    first_loss: float | None = None  # the stage's first step loss in this process (divergence_factor's base)
    step_seconds: float = 0.0  # this process's time in optimizer steps, validation and checkpoints left out (s/step)
    task_trees: bool = False  # valid_trees are the task's own scoring trees: validation reads its metrics off them

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_trees) // self.G


def train(cfg: TrainConfig, *, resume: bool = False) -> Path:
    """Run every stage of `cfg` (or resume the run in cfg.output_dir); returns the run folder."""
    t_process = time.time()
    io.check_out_folder(cfg.output_dir, "output_dir")
    run = Path(cfg.output_dir)
    acc = _accelerator(cfg, run)
    resume_from = check_run_folder(cfg, run, resume)
    if resume and is_run_dir(run):
        if acc.is_main_process:
            print(f"prefrec: {run} is already complete; nothing to resume", file=sys.stderr)
        return run
    if resume and resume_from is None and acc.is_main_process:
        print(f"prefrec: no checkpoint in {run}; starting from scratch", file=sys.stderr)
    acc.wait_for_everyone()  # every process has looked at the folder before anything is written to it
    # a second prefrec (say, another experiment runner needing the same SFT model) must not write this folder too
    with io.exclusive(run, "run folder") if acc.is_main_process else contextlib.nullcontext():
        state = _checkpoint_state(resume_from, acc.num_processes)
        r = Recipe(cfg, run, acc, state, resume_from, *plan(cfg, acc.num_processes))
        _open_run(r, resume)
        _load_policy(r)
        for si in range(len(cfg.stages)):
            if not r.stage_done(si):
                _run_stage(r, si)
        _finalise(r, t_process)
    return run


def _accelerator(cfg: TrainConfig, run: Path):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    # Accelerate only picks its CPU backend (gloo) when told to use the CPU; under torchrun / `accelerate launch
    # --multi_gpu` on a machine without CUDA, say so, so that several CPU processes form one DDP group.
    cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    if cpu:
        _check_cpu_launch()
    # step_scheduler_with_optimizer=False: the schedule is stepped once per optimizer step here, whatever the number
    # of processes (Accelerate would otherwise step it once per process); it is prepared only to be checkpointed
    trackers = tracker_names(cfg)
    acc = Accelerator(cpu=cpu, step_scheduler_with_optimizer=False, log_with=trackers or None,
                      project_config=ProjectConfiguration(project_dir=str(run), logging_dir=str(run / "logs")))
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and cpu:
        _fsdp_on_cpu(acc)
    acc.register_save_state_pre_hook(_adapter_only_on_save)
    acc.register_load_state_pre_hook(_adapter_only_on_load)
    return acc


def _check_cpu_launch() -> None:
    """Refuse, in one line, what a launch config asks for that CPU processes cannot do (measured with Accelerate
    1.16, docs/scale.md): DeepSpeed, which Accelerate drops for the CPU (the processes would silently run DDP), and
    FSDP1, whose plugin raises a RuntimeError on CPU as Accelerate builds it."""
    asked = {name for name in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP")
             if os.environ.get(name, "").lower() == "true"}
    if "ACCELERATE_USE_DEEPSPEED" in asked:
        raise UserError("the launch config asks for DeepSpeed, which needs CUDA GPUs: on CPU processes Accelerate "
                        "would run plain DDP instead. Use configs/accelerate/fsdp.yaml (FSDP2 over gloo) or "
                        "cpu-2proc.yaml (DDP) here")
    if "ACCELERATE_USE_FSDP" in asked and os.environ.get("FSDP_VERSION", "1") != "2":
        raise UserError("FSDP on CPU processes needs fsdp_version: 2 in the launch config (FSDP1 wants a GPU)")


def _fsdp_on_cpu(acc) -> None:
    """FSDP on CPU processes (gloo), when the launch config asks for it. Accelerate 1.16 decides on FSDP only for
    accelerator devices (AcceleratorState takes its FSDP branch for MULTI_GPU and its kin, never for MULTI_CPU), so
    a CPU launch of fsdp.yaml would silently run DDP; torch's FSDP2 (fully_shard) shards over gloo all the same. So
    the state is switched to FSDP with the plugin Accelerate builds from the launch config, and prepare(),
    get_state_dict() and save_state()/load_state() then take their FSDP2 paths (tests/test_scale.py)."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables that `accelerate launch` sets (version 2)
    acc.state.fsdp_plugin = plugin
    acc.state.distributed_type = PartialState().distributed_type = DistributedType.FSDP
    if acc.is_main_process:
        print("prefrec: FSDP2 on CPU processes (gloo)", file=sys.stderr)


def _checkpoint_state(resume_from: Path | None, world: int) -> TrainState | None:
    if resume_from is None:
        return None
    state = TrainState.read(resume_from)
    if state.num_processes != world:
        raise UserError(f"--resume: {resume_from} was written by {state.num_processes} process(es), this "
                        f"launch has {world}; the data order depends on the global batch, so use the same number")
    return state


@dataclass(frozen=True)
class StagePlan:
    """One stage's plan, fixed and checked before anything is written or trained."""
    k: int | None  # negatives per sample (None: every one, SFT)
    global_batch: int  # samples per optimizer step over every process
    steps: int  # optimizer steps
    train_samples: int
    valid_samples: int


def plan(cfg: TrainConfig, world: int) -> tuple[list, list, list[StagePlan]]:
    """(train samples, valid samples, one plan per stage: k, global batch, steps), every stage's k and batch checked
    before anything is written or trained."""
    train_path, valid_path = split_paths(cfg)
    train_samples = read_training_split(train_path, cfg.data.max_train_samples)
    valid_samples = [] if valid_path is None or cfg.data.max_valid_samples == 0 else \
        read_training_split(valid_path, cfg.data.max_valid_samples)
    _check_best_metric(cfg, valid_samples)
    plans = []
    for si, stage in enumerate(cfg.stages):
        where = f"stages[{si}] ({stage.kind})"
        k = stage_k(stage.kind, stage.k, train_samples, where)
        if k is not None and valid_samples:
            stage_k(stage.kind, k, valid_samples, f"{where}, valid")
        G = stage.batch_size * stage.grad_accum * world
        if len(train_samples) < G:
            raise UserError(f"{where}: {len(train_samples)} training samples are fewer than one global batch "
                            f"({stage.batch_size} per process x {stage.grad_accum} accumulation x {world} processes "
                            f"= {G})")
        steps = len(train_samples) // G * stage.epochs
        plans.append(StagePlan(k, G, min(steps, stage.max_steps or steps), len(train_samples), len(valid_samples)))
    return train_samples, valid_samples, plans


def _check_best_metric(cfg: TrainConfig, valid_samples: list) -> None:
    """A best_metric of the task's own must be one the validation samples' task has: AUC of a candidates task does
    not exist, and without this check no validation would ever find a best checkpoint nor stop early."""
    if cfg.best_metric not in TASK_METRICS or not valid_samples:
        return
    row = task_row(valid_samples[0].task)
    has = [m for m in row.key_metrics() if m in TASK_METRICS]
    if cfg.best_metric not in has:
        training = [m for m in BEST_METRICS if m not in TASK_METRICS and m != "auto"]
        raise UserError(f"best_metric: {cfg.best_metric!r} is not a metric of the {row.name} task that validates "
                        f"this run; expected one of {has} or a training metric ({', '.join(training)})")


def _open_run(r: Recipe, resume: bool) -> None:
    """RUN/config.yaml, the trackers and metrics.jsonl (resuming drops its rows after the checkpoint, all of them
    when there is none)."""
    if r.main:
        r.run.mkdir(parents=True, exist_ok=True)
        io.write_text(r.run / RUN_MARKER, "a prefrec run folder\n")
        write_run_config(r.run, dump_config(r.cfg))
    # TensorBoard: RUN/logs/prefrec/; MLflow: RUN/logs/ unless MLFLOW_TRACKING_URI; W&B: RUN/wandb/
    if tracker_names(r.cfg):
        r.acc.init_trackers("prefrec", config=flat_config(r.cfg),
                            init_kwargs={"wandb": {"name": r.run.name, "dir": str(r.run)}})
    r.log = MetricsLog(r.run, r.main, r.acc, r.state.global_step if r.state else (0 if resume else None))


def _load_policy(r: Recipe) -> None:
    """One base copy + one LoRA adapter for every stage (the checkpoint's adapter when resuming)."""
    from accelerate.utils import set_seed

    cfg = r.cfg
    set_seed(cfg.seed)
    lm, r.tokenizer = load_model(cfg.model.name, dtype=None if cfg.model.dtype == "auto" else cfg.model.dtype,
                                 attn_implementation=cfg.model.attn_implementation, device=str(r.acc.device),
                                 trust_remote_code=cfg.model.trust_remote_code, revision=cfg.model.revision)
    lm = add_lora(lm, r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                  target_modules=cfg.lora.target_modules, layers=cfg.lora.layers)
    for peft_cfg in lm.peft_config.values():  # adapter_config.json names a base any machine can resolve
        peft_cfg.base_model_name_or_path = hub_reference(base_model_name(cfg.model.name))
    if cfg.model.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # item tokens: the projector trains with LoRA (its parameters join r.params below), the table stays frozen
    r.items = for_training(lm, cfg.items, split_paths(cfg)[0].parent, r.train_samples, "config")
    r.trunk = _trunk_cache(r, lm)
    if r.trunk is not None:
        _fill_trunk_for_every_stage(r)
    r.lm, r.scorer = lm, TreeScorer(lm, cfg.pack_tokens)
    r.params = [p for p in r.scorer.parameters() if p.requires_grad]
    r.dropout_rates = {m: m.p for m in lm.modules() if isinstance(m, torch.nn.Dropout)}
    if r.state is not None:
        load_adapter_weights(lm, r.resume_from / "adapter")
        if r.items is not None:
            load_projector(r.items, r.resume_from / "adapter")


def _trunk_cache(r: Recipe, lm) -> TrunkCache | None:
    """The trunk cache of a run with LoRA on the top lora.layers layers, attached to the model (every packed forward
    then runs from it), or None. Off when the item projector trains: the prompt's input states change every step."""
    cfg = r.cfg
    if cfg.lora.layers is None or not cfg.trunk_cache:
        return None
    if r.items is not None:
        if r.main:
            print("prefrec: trunk cache off: the item projector trains, so the states below the adapted layers "
                  "change at every step; the full model runs", file=sys.stderr)
        return None
    start = len(decoder_layers(lm)) - cfg.lora.layers
    cache = TrunkCache(trunk.place(cfg.trunk_cache_dir), lm, start)
    trunk.attach(lm, cache)
    return cache


def _fill_trunk(r: Recipe, trees: list) -> None:
    """Store the trunk states of `trees` that the cache lacks (the main process computes them, the others wait and
    read the same files)."""
    t0 = time.time()
    if r.main:
        r.trunk.ensure(trees, progress=r.cfg.progress)
    r.acc.wait_for_everyone()
    r.trunk.refresh()
    r.timings["trunk_cache"] = r.timings.get("trunk_cache", 0.0) + time.time() - t0


def _stage_trees(r: Recipe, si: int) -> tuple[list, list]:
    """Stage si's training and validation trees; the validation trees are the task's own scoring trees where the
    validation pass gives the task's metrics too (_task_trees)."""
    kind, k, ids = r.cfg.stages[si].kind, r.plans[si].k, r.items.ids if r.items is not None else None
    which = "all" if _task_trees(r, si) else None
    return (encode_trees(r.tokenizer, r.train_samples, kind, k, ids),
            encode_trees(r.tokenizer, r.valid_samples, kind, k, ids, which))


def _task_trees(r: Recipe, si: int) -> bool:
    """Whether stage si validates on the trees the task scores (every comparison, chosen and rejected: what `prefrec
    eval` scores), so that one pass gives the stage's figures and the task's metrics (its row's rows_from_pairs):
    the task metrics are wanted, every validation sample has the same comparisons with one rejected response each,
    and the stage keeps them all (SFT, whose loss reads the chosen responses alone, or a k that keeps every one). It
    halves validation: it scored the 300 samples of a grid cell twice, 40 % of an SFT run's time."""
    if not (r.task_metrics and r.valid_samples) or task_row(r.valid_samples[0].task).rows_from_pairs is None:
        return False
    comparisons = {len(s.comparisons) for s in r.valid_samples}
    single = all(len(c.rejected) == 1 for s in r.valid_samples for c in s.comparisons)
    k = r.plans[si].k
    return len(comparisons) == 1 and single and (r.cfg.stages[si].kind == "sft" or k is None or k in comparisons)


def _fill_trunk_for_every_stage(r: Recipe) -> None:
    """The trunk states of every stage still to run, stored before the first stage prepares the model: under FSDP
    the bottom layers are then sharded, and one process alone cannot run them. (A stage at a time: the bottom
    pass batches the same trees as it did when each stage stored its own.)"""
    for si in range(len(r.cfg.stages)):
        if not r.stage_done(si):
            train_trees, valid_trees = _stage_trees(r, si)
            _fill_trunk(r, train_trees + valid_trees)


def _start_stage(r: Recipe, si: int) -> StageRun:
    """Trees, a fresh optimizer and schedule prepared with the model (DeepSpeed needs both at once), the reference
    log-probs of a preference stage, and the state of the checkpoint when it was taken inside this stage."""
    stage, acc, p = r.cfg.stages[si], r.acc, r.plans[si]
    k, G, total = p.k, p.global_batch, p.steps
    # keeps a warning made before a resume
    r.stage_info[stage.kind] = {**r.stage_info.get(stage.kind, {}), **dataclasses.asdict(p)}
    train_trees, valid_trees = _stage_trees(r, si)
    text_trees = encode_trees(r.tokenizer, r.train_samples, stage.kind, k) if _curriculum(r, si) else None
    acc.gradient_accumulation_steps = stage.grad_accum
    ds = getattr(acc.state, "deepspeed_plugin", None)
    if ds is not None:  # no DataLoader goes through prepare(), so DeepSpeed is told the batch shape here
        ds.deepspeed_config["train_micro_batch_size_per_gpu"] = stage.batch_size
        ds.deepspeed_config["gradient_accumulation_steps"] = stage.grad_accum
        ds.deepspeed_config["train_batch_size"] = G
        ds.deepspeed_config["gradient_clipping"] = stage.max_grad_norm or 0.0
    if r.prepared is not None:
        r.scorer = acc.unwrap_model(r.prepared)
        acc.free_memory()
    optimizer = torch.optim.AdamW(r.params, lr=stage.lr, weight_decay=stage.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(cosine_with_warmup, warmup=math.ceil(stage.warmup_ratio * total), total=total))
    resumed = r.resumed_step(si)
    if r.state is not None and not r.rng_restored and resumed == 0:
        # resuming at a stage boundary: nothing is prepared yet, so load_state restores the RNG only
        restore_accelerate_state(acc, r.resume_from)
        r.rng_restored = True
    r.prepared, optimizer, scheduler = acc.prepare(r.scorer, optimizer, scheduler)
    # FSDP2 replaces each parameter by its shard (a DTensor): clipping and the next stage's optimizer take these
    r.params = [p for group in optimizer.param_groups for p in group["params"]]
    ref = labels = None
    row = methods.stage(stage.kind)
    if row.aligned and row.reference:
        t0 = time.time()
        splits = {"train": ([s.id for s in r.train_samples], train_trees)}
        if valid_trees:
            splits["valid"] = ([s.id for s in r.valid_samples], valid_trees)
        ref = reference_logps(acc, r.prepared, splits, k, r.run / REF_CACHE, stage.batch_size,
                              r.main and r.cfg.progress, must_exist=resumed > 0)
        r.timings["reference"] = r.timings.get("reference", 0.0) + time.time() - t0
    if row.labels:
        labels = {"train": graded_labels(r.train_samples, k), "valid": graded_labels(r.valid_samples, k)}
    if resumed > 0:
        # optimizer, scheduler and RNG continue exactly where the checkpoint left them (dropout masks included):
        # this is the first stage that runs after the checkpoint, and nothing since it has drawn random numbers
        restore_accelerate_state(acc, r.resume_from)
        r.rng_restored = True
    return StageRun(si, make_stage(stage, ref, labels), k, G, total, train_trees, valid_trees, optimizer, scheduler,
                    step=resumed, text_trees=text_trees, task_trees=_task_trees(r, si))


def _curriculum(r: Recipe, si: int):
    """The items curriculum when stage si runs it (the sft stage), else None."""
    cur = r.cfg.items.curriculum if r.cfg.items is not None else None
    return cur if cur is not None and r.cfg.stages[si].kind == "sft" else None


def _run_stage(r: Recipe, si: int) -> None:
    from tqdm.auto import tqdm

    sr = _start_stage(r, si)
    set_dropout(r.lm, r.dropout_rates, r.cfg.stages[si].dropout_off())
    r.prepared.train()
    # disable=None: no bar when stderr is not a terminal (a log file gets metrics.jsonl, not bar updates)
    bar = tqdm(total=sr.total, initial=sr.step, desc=sr.stage.kind, disable=None if r.main and r.cfg.progress
               else True, dynamic_ncols=True)
    chosen_rewards: list[float] = []
    while sr.step < sr.total:
        metrics = _train_step(r, sr)
        _watch_displacement(r, sr, metrics, chosen_rewards)
        _say_step(r, sr, metrics, bar.disable)
        bar.update(1)
        bar.set_postfix({key: f"{metrics[key]:.3f}" for key in ("loss", "reward_accuracy") if key in metrics})
        t1 = time.time()
        last = sr.step == sr.total
        if last or (r.cfg.eval_every and sr.step % r.cfg.eval_every == 0):
            _validate(r, sr)
            if _stop_early(r, sr):
                sr.total, last = sr.step, True
        r.timings[sr.stage.kind] = r.timings.get(sr.stage.kind, 0.0) + time.time() - t1
        if last or (r.cfg.save_every and sr.step % r.cfg.save_every == 0):
            _checkpoint(r, sr, done=last)
    bar.close()


def _say(r: Recipe, line: str) -> None:
    """One plain progress line on stderr (main process; where no bar is shown; logging_steps 0 keeps quiet)."""
    if r.main and r.cfg.logging_steps:
        print(f"prefrec: {line}", file=sys.stderr, flush=True)


def _say_step(r: Recipe, sr: StageRun, metrics: dict, no_bar: bool) -> None:
    """Every logging_steps steps (and the last), the step's loss line, for a log file or pipe."""
    n = r.cfg.logging_steps
    if not no_bar or not n or (sr.step % n and sr.step != sr.total):
        return
    keys = [k for k in ("loss", "reward_accuracy", "chosen_logp") if k in metrics]
    # the steps' own time: the stage's timing also holds its validations and any time before a resume
    seconds = sr.step_seconds / max(sr.step - r.resumed_step(sr.si), 1)
    _say(r, f"{sr.stage.kind} step {sr.step}/{sr.total} " + " ".join(f"{k} {metrics[k]:.4f}" for k in keys)
         + f" lr {sr.scheduler.get_last_lr()[0]:.2e} {seconds:.2f} s/step")


def _watch_displacement(r: Recipe, sr: StageRun, metrics: dict, chosen_rewards: list[float]) -> None:
    """Warn once per alignment stage (stderr, and run.json's stage_info) when the policy is unlearning the chosen
    answers (stages.chosen_displacement above stages.DISPLACEMENT_NATS)."""
    info = r.stage_info[sr.stage.kind]
    if "chosen_reward" not in metrics or "warning" in info or not methods.stage(sr.stage.kind).reference:
        return
    chosen_rewards.append(metrics["chosen_reward"])
    nats = stages_module.chosen_displacement(chosen_rewards, r.cfg.stages[sr.si].beta)
    if nats is None or nats <= stages_module.DISPLACEMENT_NATS:
        return
    info["warning"] = (f"step {sr.step}: the chosen responses' log-prob is {nats:.1f} nats below the reference's "
                       f"(mean of the last {stages_module.DISPLACEMENT_WINDOW} steps): the policy is unlearning the "
                       f"answers (likelihood displacement); a lower lr than {r.cfg.stages[sr.si].lr:g} or an SFT "
                       f"term (ftx) keeps them")
    if r.main:
        print(f"prefrec: warning: {sr.stage.kind} {info['warning']}", file=sys.stderr)


def _train_step(r: Recipe, sr: StageRun) -> dict[str, float]:
    """One optimizer step over global batch sr.step (grad_accum micro-batches per process); logs and returns its
    metrics."""
    t0 = time.time()
    acc, stage, kind = r.acc, r.cfg.stages[sr.si], sr.stage.kind
    B, A, W, rank = stage.batch_size, stage.grad_accum, acc.num_processes, acc.process_index
    epoch, pos = divmod(sr.step, sr.steps_per_epoch)
    gidx = epoch_order(len(sr.train_trees), r.cfg.seed, sr.si, epoch)[pos * sr.G:(pos + 1) * sr.G]
    lr = sr.scheduler.get_last_lr()[0]
    gathered: dict[str, list[torch.Tensor]] = {}
    grad_norm = None
    scale = StepScale(W, A, sr.G, sum(chosen_tokens(sr.train_trees[i]) for i in gidx))
    share = hybrid_share(sr.step, sr.total, _curriculum(r, sr.si)) if sr.text_trees is not None else None
    hybrid = hybrid_picks(len(gidx), share, r.cfg.seed, sr.si, sr.step) if share is not None else [True] * len(gidx)
    for a in range(A):
        lo = a * B * W + rank * B
        idx = gidx[lo:lo + B]
        with acc.accumulate(r.prepared):
            trees = [(sr.train_trees if h else sr.text_trees)[i] for i, h in zip(idx, hybrid[lo:lo + B])]
            terms = tree_terms(r.prepared(trees, per_token=True), trees)
            loss, stats = sr.stage.loss(terms, idx, scale)
            _stop_unless_finite(r, sr, "loss", loss)
            acc.backward(loss)
            if acc.sync_gradients:
                grad_norm = acc.clip_grad_norm_(r.params, stage.max_grad_norm or float("inf"))
                _stop_unless_finite(r, sr, "gradient norm", grad_norm)
            sr.optimizer.step()
            sr.optimizer.zero_grad(set_to_none=True)
        for key, v in stats.items():
            gathered.setdefault(key, []).append(acc.gather(v.detach().float().contiguous()).cpu())
    sr.scheduler.step()
    sr.step += 1
    r.global_step += 1
    metrics = sr.stage.step_metrics({key: torch.cat(v) for key, v in gathered.items()})
    seconds = time.time() - t0
    r.timings[kind] = r.timings.get(kind, 0.0) + seconds
    sr.step_seconds += seconds
    if share is not None:
        metrics["hybrid_share"] = sum(hybrid) / len(hybrid)  # the curriculum's hybrid samples in this step
    _stop_if_diverged(r, sr, metrics.get("loss"))
    r.log.write({"split": "train", "step": r.global_step, "stage": kind, "stage_step": sr.step,
                 "epoch": round(sr.step / sr.steps_per_epoch, 4), "lr": lr, **metrics,
                 "grad_norm": None if grad_norm is None else float(grad_norm), "seconds": round(time.time() - t0, 4)})
    return metrics


def _last_good(r: Recipe) -> str:
    """Where a stopped run can go on from: its newest checkpoint, or that it has none yet."""
    last = checkpoints(r.run)
    return f"the last good checkpoint is {last[-1]}; `prefrec train --resume` continues from it" if last else \
        "no checkpoint was written yet (save_every sets how often); a rerun starts again"


def _stop_unless_finite(r: Recipe, sr: StageRun, what: str, value: torch.Tensor) -> None:
    """Stop before a non-finite number reaches the weights: the last checkpoint stays the last good state."""
    if torch.isfinite(value).all():
        return
    raise UserError(f"{sr.stage.kind} step {sr.step + 1}: the {what} is {float(value.detach())}, not finite; training stopped "
                    f"({_last_good(r)}, e.g. with a lower lr than {r.cfg.stages[sr.si].lr:g})")


def _stop_if_diverged(r: Recipe, sr: StageRun, loss: float | None) -> None:
    """Stop a stage whose loss has run away (finite, but divergence_factor × max(its first loss, 1) or more): an lr
    far too high trained to the end before, its adapter weights at 1e30."""
    factor = r.cfg.divergence_factor
    if loss is None or factor is None:
        return
    if sr.first_loss is None:
        sr.first_loss = loss
        return
    limit = factor * max(sr.first_loss, 1.0)
    if loss > limit:
        raise UserError(f"{sr.stage.kind} step {sr.step}: the loss is {loss:.4g}, over {factor:g} × its first "
                        f"value ({sr.first_loss:.4g}): training diverged and was stopped ({_last_good(r)}); lower the lr "
                        f"(now {r.cfg.stages[sr.si].lr:g}), or set divergence_factor: null to train on")


def _validate(r: Recipe, sr: StageRun) -> None:
    """Score the validation split, log it, and keep RUN/best/ when the last stage improves on the best metric."""
    if not sr.valid_trees:
        return
    kind = sr.stage.kind
    r.prepared.eval()
    got = score_split(r.acc, r.prepared, sr.valid_trees, r.cfg.stages[sr.si].batch_size, "validation", False)
    vrow = sr.stage.valid_metrics(got)
    if r.task_metrics:
        vrow.update(_task_metrics(r, got if sr.task_trees else None))
    r.prepared.train()
    r.final_valid[kind] = vrow
    r.log.write({"split": "valid", "step": r.global_step, "stage": kind, "stage_step": sr.step,
                 "epoch": round(sr.step / sr.steps_per_epoch, 4), **vrow, "n": len(sr.valid_trees)})
    _say(r, f"{kind} step {sr.step}/{sr.total} validation ({len(sr.valid_trees)} samples): "
         + " ".join(f"{k} {v:.4f}" for k, v in vrow.items() if isinstance(v, float)))
    value = vrow.get(r.best_metric)
    if sr.si != len(r.cfg.stages) - 1 or value is None:
        return
    if r.best is None or r.best_sign * value > r.best_sign * r.best["value"]:
        r.best, r.stale = {"metric": r.best_metric, "value": value, "step": r.global_step, "stage": kind}, 0
        weights, projector = adapter_state(r.acc, r.prepared), projector_state(r.acc, r.prepared)
        if r.main:
            save_adapter(r.acc.unwrap_model(r.prepared).lm, r.run / "best", weights, projector)
            io.write_json(r.run / "best" / "best.json", r.best)
    else:
        r.stale += 1


def _task_metrics(r: Recipe, got: dict | None) -> dict[str, float]:
    """The task's own metrics on the validation samples, as `prefrec eval` scores test samples (its row of the task
    table): read off the validation pass `got` over the task's own trees (_task_trees), or else scored now, on every
    process alike (forward only, on the unwrapped model)."""
    row = task_row(r.valid_samples[0].task)
    if got is not None:
        rows = row.rows_from_pairs(r.valid_samples, got["chosen"], got["rejected"])
    else:
        rows = row.score(r.acc.unwrap_model(r.prepared).lm, r.tokenizer, r.valid_samples, max_tokens_per_batch=1,
                         progress=False)
    return {k: float(v) for k, v in row.metrics(rows).items() if k in TASK_METRICS and v is not None}


def _stop_early(r: Recipe, sr: StageRun) -> bool:
    """The last stage has gone `early_stopping` validations without a new best."""
    patience = r.cfg.early_stopping
    if not patience or sr.si != len(r.cfg.stages) - 1 or r.stale < patience or sr.step == sr.total:
        return False
    r.stage_info[sr.stage.kind]["early_stop"] = {"step": sr.step, "planned_steps": sr.total,
                                                 "best_step": r.best["step"] if r.best else None}
    if r.main:
        print(f"prefrec: {sr.stage.kind}: no better {r.best_metric} in {patience} validations; stopping at step "
              f"{sr.step} of {sr.total} (best at step {r.best['step'] if r.best else '-'})", file=sys.stderr)
    return True


def _checkpoint(r: Recipe, sr: StageRun, done: bool) -> None:
    st = TrainState(global_step=r.global_step, stage_index=sr.si, stage_kind=sr.stage.kind, stage_step=sr.step,
                    stage_total_steps=sr.total, stage_done=done, epoch=sr.step // sr.steps_per_epoch,
                    step_in_epoch=sr.step % sr.steps_per_epoch, samples_consumed=sr.step * sr.G,
                    num_processes=r.acc.num_processes, global_batch=sr.G, best=r.best, timings=r.timings,
                    final_valid=r.final_valid, stage_info=r.stage_info, resumes=r.resumes, seed=r.cfg.seed,
                    stale=r.stale)
    save_checkpoint(r.acc, r.run, r.prepared, st, r.cfg.keep_last)


def summary_table(r: Recipe, adapter: str) -> str:
    """The closing table: per stage its steps, last training loss, last validation metric and time; then where the
    adapter is."""
    rows = [("stage", "steps", "final loss", "last validation", "seconds")]
    for stage in r.cfg.stages:
        last = r.log.last_train.get(stage.kind, {})
        valid = r.final_valid.get(stage.kind) or {}
        metric = r.best_metric if r.best_metric in valid else next(iter(valid), None)
        info = r.stage_info.get(stage.kind, {})
        stop = info.get("early_stop")  # a stage stopped early ran fewer steps than it planned: say both
        steps = f"{stop['step']} of {stop['planned_steps']}, stopped early" if stop else str(info.get("steps", "-"))
        best = r.best if r.best and r.best.get("stage") == stage.kind else None
        rows.append((stage.kind, steps, f"{last['loss']:.4f}" if "loss" in last else "-",
                     (f"{metric} {valid[metric]:.4f}" if metric else "-")
                     + (f" (best {best['value']:.4f} at step {best['step']})" if best else ""),
                     f"{r.timings.get(stage.kind, 0.0):.0f}"))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    return "finished\n" + "\n".join(lines) + f"\nadapter ({adapter}): {r.run / 'adapter'}"


def _finalise(r: Recipe, t_process: float) -> None:
    """RUN/adapter/, RUN/run.json and the model card."""
    acc, lm, weights, projector = r.acc, r.lm, None, None
    if r.prepared is not None:
        weights, projector = adapter_state(acc, r.prepared), projector_state(acc, r.prepared)
        lm = acc.unwrap_model(r.prepared).lm
    acc.wait_for_everyone()
    if r.main:
        chosen = "best" if r.cfg.use_best and r.best is not None and (r.run / "best").is_dir() else "last"
        if chosen == "best":  # the validation-chosen adapter is the run's adapter; the last one is not kept
            with io.atomic_folder(r.run / "adapter", replace=True, flag="adapter") as tmp:
                shutil.copytree(r.run / "best", tmp, dirs_exist_ok=True)
        else:
            save_adapter(lm, r.run / "adapter", weights, projector)
        if r.items is not None:  # the frozen table and its map beside the adapter's projector
            write_run_items(r.run, r.items)
        timings = r.timings
        timings["total"] = sum(v for key, v in timings.items() if key != "total")
        info = {"base_model": base_model_name(r.cfg.model.name), "base_model_revision": r.cfg.model.revision,
                "lora_layers": r.cfg.lora.layers,
                "stages": r.cfg.stage_kinds(), "seed": r.cfg.seed,
                "timings": {key: round(v, 2) for key, v in timings.items()},
                "wall_seconds_this_process": round(time.time() - t_process, 2), "resumes": r.resumes,
                "num_processes": acc.num_processes, "distributed": acc.distributed_type.value, "stage_info": r.stage_info, "best": r.best, "adapter": chosen,
                "final_valid": r.final_valid, "prompt_format": prompt_format(r.tokenizer), **provenance()}
        if r.trunk is not None:
            info["trunk_cache"] = r.trunk.describe()
        if r.items is not None:
            info["items"] = {**r.items.describe(), **r.items.coverage,
                             "curriculum": config_to_dict(r.cfg)["items"]["curriculum"]}
        write_run(r.run, info)
        write_card(r.run)  # README.md in RUN/ and RUN/adapter/ (replaces PEFT's blank template)
        _say(r, summary_table(r, chosen))
    r.log.close()
    acc.wait_for_everyone()
    acc.end_training()
