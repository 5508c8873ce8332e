"""`prefrec train CONFIG.yaml`: SFT, then DPO / DMPO / S-DPO, on one LoRA adapter, with Accelerate.

The recipe, top to bottom (docs/train.md says the same for users):

    samples (train.jsonl, valid.jsonl)                    prefrec.samples
      -> trees, one per sample                            prefrec.packing.encode_sample (prompt once, k+1 responses)
    SFT stage        mean token NLL of the chosen responses (which="chosen": rejected responses are not packed)
    reference        log-probs of every alignment sample under the model *as it is when the alignment stage starts*
                     (after SFT; without SFT the base model, since a fresh LoRA adapter is the identity), computed
                     once under inference_mode and cached in RUN/ref_logps.safetensors; no second model copy
    alignment stage  dpo_loss / dmpo_loss / sdpo_loss (+ ftx · chosen NLL) on the same LoRA adapter
    RUN/adapter/     the final adapter; RUN/run.json, RUN/metrics.jsonl, RUN/checkpoints/step-N/, RUN/best/

One sample -> the losses' inputs (the shapes of prefrec.losses):
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
row carries a prompt and k+1 responses with a 4D mask (prefrec.packing), the reference log-probs come from a cache
computed mid-run by the same model, and the SFT and alignment stages share one adapter. A Trainer would need a
custom compute_loss, a custom collator that keeps trees, a custom data order for exact resume, and callbacks for the
cache: more code than the loop below, and harder to follow. Accelerate gives what we need from a library (DDP, FSDP,
DeepSpeed, mixed precision, gradient accumulation, gathering) and nothing else.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from prefrec import io, methods
from prefrec.config import TrainConfig, config_to_dict, dump_config
from prefrec.errors import UserError
from prefrec.losses import ftx_term, reward_stats, sft_loss
from prefrec.packing import Tree, encode_sample, prompt_format, response_logps
from prefrec.samples import Comparison, Sample, read_jsonl

REF_CACHE = "ref_logps.safetensors"


# ---------------------------------------------------------------------------------------------------------------
# Samples -> trees

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


def read_split(path: Path, limit: int | None) -> list[Sample]:
    try:
        samples = read_jsonl(path)
    except ValueError as e:  # the reader names the file, line and field
        raise UserError(str(e)) from None
    if limit is not None:
        samples = samples[:limit]
    seen = set()
    for s in samples:
        if s.id in seen:
            raise UserError(f"{path}: sample id {s.id!r} appears twice (ids key the reference cache)")
        seen.add(s.id)
    return samples


def n_negatives(sample: Sample) -> int:
    return sum(len(c.rejected) for c in sample.comparisons)


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
    counts = [n_negatives(s) for s in samples]
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


def encode_trees(tokenizer, samples: list[Sample], kind: str, k: int | None) -> list[Tree]:
    """SFT packs only the chosen responses; alignment packs [chosen, rejected...] per comparison."""
    which = "chosen" if kind == "sft" else "all"
    return [encode_sample(tokenizer, with_k_negatives(s, k) if k is not None else s, which=which) for s in samples]


def chosen_tokens(tree: Tree) -> int:
    return sum(len(b.responses[0]) for b in tree.branches)


# ---------------------------------------------------------------------------------------------------------------
# Model side

class TreeScorer(torch.nn.Module):
    """The module Accelerate wraps (DDP/FSDP/DeepSpeed): its forward is the packed scoring of a list of trees.

    prefrec.packing calls the decoder trunk and the LM head directly (to run the head at response positions only);
    routing that through this module's forward is what lets a distributed wrapper see the forward pass."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, trees: list[Tree], per_token: bool = False):
        return response_logps(self.lm, trees, per_token=per_token)


def tree_terms(scores, n_trees: int) -> dict:
    """Per-tree tensors from Scores: chosen (B, k) [(B,) without rejected responses] and rejected (B, k) summed
    log-probs (graph kept; chosen[:, i] is the chosen of rejected i's own comparison), the chosen responses' token
    log-probs concatenated per tree (list of B tensors), and their NLL sum and count (B,)."""
    chosen, rejected = scores.chosen_rejected(pairs=True)
    per_tree: list[list[torch.Tensor]] = [[] for _ in range(n_trees)]
    for n, (t, _b, i) in enumerate(scores.index):
        if i == 0:
            per_tree[t].append(scores.token_logps[n])
    tokens = [torch.cat(x) for x in per_tree]
    nll_sum = torch.stack([-x.sum() for x in tokens])
    n_tok = torch.tensor([x.numel() for x in tokens], dtype=torch.float32, device=nll_sum.device)
    return {"chosen": chosen, "rejected": rejected, "tokens": tokens, "nll_sum": nll_sum, "n_tokens": n_tok}


def base_model_name(name: str) -> str:
    """What run.json records as base_model: a run folder's or adapter folder's own base, else the name itself."""
    from prefrec.model import is_run_dir

    p = Path(name)
    if is_run_dir(p):
        return json.loads((p / "run.json").read_text()).get("base_model", "embedded")
    if p.is_dir() and (p / "adapter_config.json").is_file():
        from prefrec.model import known_name

        return known_name(json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
                          or "embedded")
    return name


# ---------------------------------------------------------------------------------------------------------------
# Data order

def set_dropout(model: torch.nn.Module, rates: dict[torch.nn.Dropout, float], off: bool) -> None:
    """Dropout rate of every dropout module: 0 when `off`, else its configured rate (`rates`, taken once)."""
    for m, p in rates.items():
        m.p = 0.0 if off else p


def epoch_order(n: int, seed: int, stage_index: int, epoch: int) -> list[int]:
    """The sample order of one epoch: the same on every process, independent of the global RNG."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + stage_index * 10_007 + epoch)
    return torch.randperm(n, generator=g).tolist()


def cosine_with_warmup(step: int, *, warmup: int, total: int) -> float:
    """LR factor of optimizer step `step` (0-based): linear warmup (s+1)/warmup, so the first step already learns,
    then half a cosine from 1 down towards 0 over the remaining steps (the last step still has a small LR).

    This is transformers' get_cosine_schedule_with_warmup from step `warmup` on (tests check it), but not during
    the warmup: the library's step s has factor s/warmup, so its first step has LR 0 and is wasted. prefrec keeps its
    own warmup so that runs and published results keep their numbers (issue 16)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def shard(n: int, rank: int, world: int) -> list[int]:
    """Contiguous equal shards of range(n), the last padded with n-1, so every process runs the same number of
    forward passes and a gather in rank order gives back 0..n-1 first."""
    m = math.ceil(n / world)
    padded = list(range(n)) + [n - 1] * (m * world - n)
    return padded[rank * m:(rank + 1) * m]


# ---------------------------------------------------------------------------------------------------------------
# Forward-only passes: reference log-probs and validation

def score_split(acc, model, trees: list[Tree], chunk: int, desc: str, progress: bool) -> dict[str, torch.Tensor]:
    """chosen (n,), rejected (n, k), nll_sum (n,), n_tokens (n,) for every tree, in order, on every process.

    `model` is the prepared TreeScorer (so FSDP/DeepSpeed see the forward); it must be in eval mode."""
    from tqdm.auto import tqdm

    n = len(trees)
    mine = shard(n, acc.process_index, acc.num_processes)
    parts: dict[str, list[torch.Tensor]] = {}
    with torch.inference_mode():
        for lo in tqdm(range(0, len(mine), chunk), desc=desc, disable=None if progress else True, leave=False):
            batch = [trees[i] for i in mine[lo:lo + chunk]]
            terms = tree_terms(model(batch, per_token=True), len(batch))
            for key in ("chosen", "rejected", "nll_sum", "n_tokens"):
                parts.setdefault(key, []).append(terms[key].detach().float())
    out = {}
    for key, xs in parts.items():
        out[key] = acc.gather(torch.cat(xs).contiguous()).cpu()[:n]
    return out


def alignment_metrics(kind: str, beta: float, ftx: float, chosen, rejected, ref_chosen, ref_rejected,
                      nll_sum, n_tokens) -> dict[str, float]:
    """Mean loss and reward statistics of a set of samples (all inputs detached, one row per sample)."""
    losses, cr, rr = methods.stage(kind).loss_fn()(chosen, rejected, ref_chosen, ref_rejected, beta)
    if ftx:
        losses = losses + ftx * nll_sum / n_tokens
    return row_metrics(losses, cr, rr, chosen, rejected)


def row_metrics(losses, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps) -> dict[str, float]:
    stats = reward_stats(chosen_rewards, rejected_rewards)
    return {
        "loss": losses.mean().item(),
        "chosen_reward": stats["rewards/chosen"],
        "rejected_reward": stats["rewards/rejected"],
        # chosen reward above every rejected reward (random policy: 1/(k+1)); the _vs_mean variant compares with
        # the mean rejected reward, which is what the DMPO loss pushes (random: 1/2); equal for k = 1
        "reward_accuracy": stats["rewards/accuracy"],
        "reward_accuracy_vs_mean": (chosen_rewards > rejected_rewards.mean(dim=1)).float().mean().item(),
        "reward_margin": stats["rewards/margin"],
        "chosen_logp": chosen_logps.mean().item(),
        "rejected_logp": rejected_logps.mean().item(),
    }


def reference_logps(acc, model, splits: dict[str, tuple[list[str], list[Tree]]], k: int, path: Path, chunk: int,
                    progress: bool, must_exist: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{split: (chosen (n,), rejected (n, k))} of the frozen reference, from RUN/ref_logps.safetensors when it holds
    exactly these samples and k, else computed now (forward only) and written there by the main process."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            ok = meta.get("k") == str(k) and meta.get("chosen") == "pairs" and \
                all(json.loads(meta.get(f"{s}.ids", "null")) == ids for s, (ids, _) in splits.items())
            if ok:
                return {s: (f.get_tensor(f"{s}.chosen"), f.get_tensor(f"{s}.rejected")) for s in splits}
    if must_exist:
        raise UserError(f"{path}: the reference log-probs cache is missing or does not match the samples, so the "
                        f"alignment stage cannot be resumed (its reference, the model before the stage, is gone)")
    was_training = model.training
    model.eval()
    tensors, meta = {}, {"k": str(k), "chosen": "pairs"}  # chosen (n, k): one per rejected, as tree_terms
    for s, (ids, trees) in splits.items():
        if not trees:
            continue
        got = score_split(acc, model, trees, chunk, f"reference ({s})", progress)
        tensors[f"{s}.chosen"] = got["chosen"].contiguous()
        tensors[f"{s}.rejected"] = got["rejected"].contiguous()
        meta[f"{s}.ids"] = json.dumps(ids)
    model.train(was_training)
    if acc.is_main_process:
        with io.atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
    acc.wait_for_everyone()
    # read back what was written, so a resumed run and this one use the very same numbers
    return {s: (tensors[f"{s}.chosen"], tensors[f"{s}.rejected"]) for s in splits if f"{s}.chosen" in tensors}


# ---------------------------------------------------------------------------------------------------------------
# Run folder: checkpoints, RNG, metrics

def checkpoints(run: Path) -> list[Path]:
    """Complete checkpoints (trainer_state.json is written last, and the folder renamed into place), oldest first."""
    root = run / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / "trainer_state.json").is_file()
             and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def adapter_state(acc, prepared) -> dict | None:
    """The LoRA weights as PEFT saves them, gathered whole (FSDP and DeepSpeed ZeRO-3 shard them; for one process
    or DDP this is the module's own state). Call on every process; the main process gets the dict."""
    from peft import get_peft_model_state_dict

    full = acc.get_state_dict(prepared)
    if not acc.is_main_process:
        return None
    lm = acc.unwrap_model(prepared).lm
    # save_embedding_layers=False: prefrec never resizes the vocabulary, and "auto" would look the base's Hub id up
    # on the network to check
    return get_peft_model_state_dict(lm, state_dict={k[len("lm."):]: v for k, v in full.items()
                                                     if k.startswith("lm.")}, save_embedding_layers=False)


def save_adapter(lm, dest: Path, state_dict: dict | None = None) -> None:
    """PEFT save_pretrained (safetensors) into a temp folder, then renamed into place."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    lm.save_pretrained(str(tmp), safe_serialization=True, state_dict=state_dict, save_embedding_layers=False)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def save_checkpoint(acc, run: Path, prepared, state: dict, keep_last: int) -> None:
    """RUN/checkpoints/step-N/: Accelerate's save_state (optimizer, scheduler, every process's RNG; under FSDP and
    DeepSpeed also the sharded model and optimizer), adapter/ (PEFT format) and trainer_state.json (prefrec's
    counters). Written into a temp folder that is renamed into place once trainer_state.json is in it."""
    root = run / "checkpoints"
    final = root / f"step-{state['global_step']}"
    tmp = root / f".step-{state['global_step']}.tmp"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    weights = adapter_state(acc, prepared)
    acc.wait_for_everyone()
    if acc.is_main_process:
        acc.unwrap_model(prepared).lm.save_pretrained(str(tmp / "adapter"), safe_serialization=True,
                                                      state_dict=weights, save_embedding_layers=False)
        io.write_json(tmp / "trainer_state.json", state)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoints(run)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def _adapter_only_on_save(models, weights, output_dir) -> None:
    """Accelerate save_state hook (one process / DDP): skip the full model; the checkpoint's adapter/ holds every
    trainable weight, and the frozen base is not copied into each checkpoint. FSDP/DeepSpeed save their shards."""
    weights.clear()


def _adapter_only_on_load(models, input_dir) -> None:
    """Accelerate load_state hook, the pair of _adapter_only_on_save: the adapter is loaded from adapter/."""
    models.clear()


def restore_accelerate_state(acc, checkpoint: Path) -> None:
    """Accelerate's load_state from a prefrec checkpoint: the optimizer and scheduler prepared now, the RNG of
    every process, and under FSDP/DeepSpeed the model shards. Refuses a checkpoint without this process's RNG (its
    silent absence would break exact resume)."""
    if not (checkpoint / f"random_states_{acc.process_index}.pkl").is_file():
        raise UserError(f"--resume: {checkpoint} has no random_states_{acc.process_index}.pkl (written by an "
                        f"older prefrec or another number of processes); start the run again without --resume")
    acc.load_state(str(checkpoint))


def load_adapter_weights(lm, folder: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(lm, load_file(str(folder / "adapter_model.safetensors")))
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing or getattr(result, "unexpected_keys", []):
        raise UserError(f"{folder}: adapter does not fit the model (missing {missing[:3]}, unexpected "
                        f"{list(result.unexpected_keys)[:3]})")


def tracker_names(cfg: TrainConfig) -> list[str]:
    """The Accelerate trackers of a run (log_with, plus tensorboard: true), each checked to be installed."""
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    names = list(dict.fromkeys([*cfg.log_with, *(["tensorboard"] if cfg.tensorboard else [])]))
    have = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available, "mlflow": is_mlflow_available}
    missing = [n for n in names if not have[n]()]
    if missing:
        raise UserError(f"log_with: {missing} not installed; pip install 'prefrec[{','.join(missing)}]'")
    return names


def flat_config(cfg: TrainConfig) -> dict:
    """The config as one level of scalars (stages[1].beta: 0.1), what trackers store as hyperparameters."""
    out = {}

    def walk(prefix: str, v) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else k, x)
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for i, x in enumerate(v):
                walk(f"{prefix}[{i}]", x)
        else:
            out[prefix] = v if isinstance(v, (int, float, str, bool)) else str(v)
    walk("", config_to_dict(cfg))
    return out


class MetricsLog:
    """RUN/metrics.jsonl (one JSON object per optimizer step or validation), main process only, and the same numbers
    to Accelerate's trackers (TensorBoard, W&B, MLflow) when the run has any."""

    def __init__(self, run: Path, active: bool, acc, keep_up_to_step: int | None):
        self.active = active
        self.path = run / "metrics.jsonl"
        self.acc = acc if acc is not None and acc.trackers else None
        if not active:
            return
        if keep_up_to_step is not None and self.path.is_file():
            # resuming: drop rows of steps the killed run did after its last checkpoint (they will be redone)
            rows = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line)["step"] <= keep_up_to_step:
                        rows.append(line)
                except (json.JSONDecodeError, KeyError, TypeError):
                    pass  # a line cut short by the kill
            io.write_lines(self.path, (r + "\n" for r in rows))
        self.file = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        if not self.active:
            return
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.acc is not None:
            self.acc.log({f"{row['split']}/{key}": v for key, v in row.items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool)
                          and key not in ("step", "stage_step")}, step=row["step"])

    def close(self) -> None:
        if self.active:
            self.file.close()


# ---------------------------------------------------------------------------------------------------------------
# The recipe

def _check_run_folder(cfg: TrainConfig, run: Path, resume: bool) -> Path | None:
    """Returns the checkpoint to resume from (None: start from scratch); refuses to overwrite a run."""
    busy = (run / "run.json").exists() or (run / "metrics.jsonl").exists() or bool(checkpoints(run))
    if not resume:
        if busy:
            raise UserError(f"output_dir {run} already holds a run; pass --resume to continue it, or choose "
                            f"another --out")
        return None
    saved = run / "config.yaml"
    if saved.is_file():
        import yaml

        old = yaml.safe_load(saved.read_text(encoding="utf-8"))
        new = config_to_dict(cfg)
        # may differ between the killed and the resumed run
        free = {"progress", "tensorboard", "log_with", "output_dir"}
        diff = sorted(k for k in set(old) | set(new) if k not in free and old.get(k) != new.get(k))
        if diff:
            raise UserError(f"--resume: the config differs from {saved} in {diff}; resume with the run's own "
                            f"config ({saved})")
    ckpts = checkpoints(run)
    return ckpts[-1] if ckpts else None


def train(cfg: TrainConfig, *, resume: bool = False) -> Path:
    """Run every stage of `cfg` (or resume the run in cfg.output_dir); returns the run folder."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

    from prefrec.card import write_card
    from prefrec.model import add_lora, hub_reference, load_model
    from prefrec.provenance import provenance

    t_process = time.time()
    # Accelerate only picks its CPU backend (gloo) when told to use the CPU; under torchrun / `accelerate launch
    # --multi_gpu` on a machine without CUDA, say so, so that several CPU processes form one DDP group.
    cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    # step_scheduler_with_optimizer=False: the schedule is stepped once per optimizer step here, whatever the number
    # of processes (Accelerate would otherwise step it once per process); it is prepared only to be checkpointed
    run = Path(cfg.output_dir)
    trackers = tracker_names(cfg)
    acc = Accelerator(cpu=cpu, step_scheduler_with_optimizer=False, log_with=trackers or None,
                      project_config=ProjectConfiguration(project_dir=str(run), logging_dir=str(run / "logs")))
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and acc.distributed_type.value != "FSDP" \
            and acc.is_main_process:  # Accelerate turns FSDP on only for accelerators; say so rather than hide it
        print(f"prefrec: FSDP was requested but Accelerate runs {acc.distributed_type.value} here (CPU processes "
              f"get DDP)", file=sys.stderr)
    acc.register_save_state_pre_hook(_adapter_only_on_save)
    acc.register_load_state_pre_hook(_adapter_only_on_load)
    main = acc.is_main_process
    W, rank = acc.num_processes, acc.process_index
    resume_from = _check_run_folder(cfg, run, resume)
    if resume and (run / "run.json").is_file() and (run / "adapter").is_dir():
        if main:
            print(f"prefrec: {run} is already complete; nothing to resume", file=sys.stderr)
        return run
    if resume and resume_from is None and main:
        print(f"prefrec: no checkpoint in {run}; starting from scratch", file=sys.stderr)
    acc.wait_for_everyone()  # every process has looked at the folder before anything is written to it
    if resume_from is not None:
        state = json.loads((resume_from / "trainer_state.json").read_text())
        if state["num_processes"] != W:
            raise UserError(f"--resume: {resume_from} was written by {state['num_processes']} process(es), this "
                            f"launch has {W}; the data order depends on the global batch, so use the same number")
    else:
        state = None

    # ---- data, and every stage's k and batch checked before anything is written or trained
    train_path, valid_path = split_paths(cfg)
    train_samples = read_split(train_path, cfg.data.max_train_samples)
    valid_samples = [] if valid_path is None or cfg.data.max_valid_samples == 0 else \
        read_split(valid_path, cfg.data.max_valid_samples)
    plans = []
    for si, stage in enumerate(cfg.stages):
        where = f"stages[{si}] ({stage.kind})"
        k = stage_k(stage.kind, stage.k, train_samples, where)
        if k is not None and valid_samples:
            stage_k(stage.kind, k, valid_samples, f"{where}, valid")
        G = stage.batch_size * stage.grad_accum * W
        if len(train_samples) < G:
            raise UserError(f"{where}: {len(train_samples)} training samples are fewer than one global batch "
                            f"({stage.batch_size} per process x {stage.grad_accum} accumulation x {W} processes "
                            f"= {G})")
        steps = len(train_samples) // G * stage.epochs
        plans.append({"k": k, "global_batch": G, "steps": min(steps, stage.max_steps or steps),
                      "train_samples": len(train_samples), "valid_samples": len(valid_samples)})

    if main:
        run.mkdir(parents=True, exist_ok=True)
        io.write_text(run / "config.yaml", dump_config(cfg))
    # resuming drops metrics rows after the checkpoint (all of them when there is none)
    if trackers:  # TensorBoard: RUN/logs/prefrec/; MLflow: RUN/logs/ unless MLFLOW_TRACKING_URI; W&B: RUN/wandb/
        acc.init_trackers("prefrec", config=flat_config(cfg),
                          init_kwargs={"wandb": {"name": run.name, "dir": str(run)}})
    log = MetricsLog(run, main, acc, state["global_step"] if state else (0 if resume else None))
    show = main and cfg.progress

    # ---- model: one base copy + one LoRA adapter for every stage
    set_seed(cfg.seed)
    lm, tokenizer = load_model(cfg.model.name, dtype=None if cfg.model.dtype == "auto" else cfg.model.dtype,
                               attn_implementation=cfg.model.attn_implementation, device=str(acc.device),
                               trust_remote_code=cfg.model.trust_remote_code)
    lm = add_lora(lm, r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                  target_modules=cfg.lora.target_modules)
    for peft_cfg in lm.peft_config.values():  # adapter_config.json names a base any machine can resolve
        peft_cfg.base_model_name_or_path = hub_reference(base_model_name(cfg.model.name))
    if cfg.model.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    scorer = TreeScorer(lm)
    params = [p for p in scorer.parameters() if p.requires_grad]
    dropout_rates = {m: m.p for m in lm.modules() if isinstance(m, torch.nn.Dropout)}
    if state is not None:
        load_adapter_weights(lm, resume_from / "adapter")

    timings: dict[str, float] = dict(state["timings"]) if state else {}
    global_step = state["global_step"] if state else 0
    best = state.get("best") if state else None
    final_valid: dict[str, dict] = dict(state.get("final_valid", {})) if state else {}
    stage_info: dict[str, dict] = dict(state.get("stage_info", {})) if state else {}
    resumes = state.get("resumes", 0) + 1 if state else 0
    last_kind = cfg.stages[-1].kind
    best_metric = cfg.best_metric if cfg.best_metric != "auto" else \
        ("reward_accuracy" if methods.is_aligned(last_kind) else "loss")
    best_sign = -1.0 if best_metric == "loss" else 1.0
    prepared = None
    rng_restored = False

    for si, stage in enumerate(cfg.stages):
        kind = stage.kind
        if state is not None and (si < state["stage_index"] or (si == state["stage_index"] and state["stage_done"])):
            continue
        resuming_here = state is not None and si == state["stage_index"]
        k, G, total = plans[si]["k"], plans[si]["global_batch"], plans[si]["steps"]
        stage_info[kind] = plans[si]
        train_trees = encode_trees(tokenizer, train_samples, kind, k)
        valid_trees = encode_trees(tokenizer, valid_samples, kind, k)
        B, A = stage.batch_size, stage.grad_accum
        n = len(train_trees)
        steps_per_epoch = n // G

        # a fresh optimizer and schedule per stage, prepared together with the model (DeepSpeed needs both at once)
        acc.gradient_accumulation_steps = A
        ds = getattr(acc.state, "deepspeed_plugin", None)
        if ds is not None:  # no DataLoader goes through prepare(), so DeepSpeed is told the batch shape here
            ds.deepspeed_config["train_micro_batch_size_per_gpu"] = B
            ds.deepspeed_config["gradient_accumulation_steps"] = A
            ds.deepspeed_config["train_batch_size"] = G
            ds.deepspeed_config["gradient_clipping"] = stage.max_grad_norm or 0.0
        if prepared is not None:
            scorer = acc.unwrap_model(prepared)
            acc.free_memory()
        optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, functools.partial(cosine_with_warmup, warmup=math.ceil(stage.warmup_ratio * total), total=total))
        if state is not None and not rng_restored and not (resuming_here and state["stage_step"] > 0):
            # resuming at a stage boundary: nothing is prepared yet, so load_state restores the RNG only
            restore_accelerate_state(acc, resume_from)
            rng_restored = True
        prepared, optimizer, scheduler = acc.prepare(scorer, optimizer, scheduler)

        ref = None
        if methods.is_aligned(kind):
            t0 = time.time()
            splits = {"train": ([s.id for s in train_samples], train_trees)}
            if valid_trees:
                splits["valid"] = ([s.id for s in valid_samples], valid_trees)
            ref = reference_logps(acc, prepared, splits, k, run / REF_CACHE, B, show,
                                  must_exist=resuming_here and state["stage_step"] > 0)
            timings["reference"] = timings.get("reference", 0.0) + time.time() - t0

        stage_step = 0
        if resuming_here and state["stage_step"] > 0:
            # optimizer, scheduler and RNG continue exactly where the checkpoint left them (dropout masks included):
            # this is the first stage that runs after the checkpoint, and nothing since it has drawn random numbers
            stage_step = state["stage_step"]
            restore_accelerate_state(acc, resume_from)
            rng_restored = True

        def validate() -> dict | None:
            if not valid_trees:
                return None
            prepared.eval()
            got = score_split(acc, prepared, valid_trees, B, "validation", False)
            prepared.train()
            if kind == "sft":
                row = {"loss": (got["nll_sum"].sum() / got["n_tokens"].sum()).item(),
                       "chosen_logp": got["chosen"].mean().item()}
            else:
                row = alignment_metrics(kind, stage.beta, stage.ftx, got["chosen"], got["rejected"],
                                        ref["valid"][0], ref["valid"][1], got["nll_sum"], got["n_tokens"])
            return row

        def checkpoint(done: bool) -> None:
            st = {"global_step": global_step, "stage_index": si, "stage_kind": kind, "stage_step": stage_step,
                  "stage_total_steps": total, "stage_done": done, "epoch": stage_step // steps_per_epoch,
                  "step_in_epoch": stage_step % steps_per_epoch, "samples_consumed": stage_step * G,
                  "num_processes": W, "global_batch": G, "best": best, "timings": timings,
                  "final_valid": final_valid, "stage_info": stage_info, "resumes": resumes, "seed": cfg.seed}
            save_checkpoint(acc, run, prepared, st, cfg.keep_last)

        set_dropout(lm, dropout_rates, stage.dropout_off())
        prepared.train()
        # disable=None: no bar when stderr is not a terminal (a log file gets metrics.jsonl, not bar updates)
        bar = tqdm(total=total, initial=stage_step, desc=kind, disable=None if show else True, dynamic_ncols=True)
        while stage_step < total:
            t0 = time.time()
            epoch, pos = divmod(stage_step, steps_per_epoch)
            order = epoch_order(n, cfg.seed, si, epoch)
            gidx = order[pos * G:(pos + 1) * G]
            lr = scheduler.get_last_lr()[0]
            gathered: dict[str, list[torch.Tensor]] = {}
            grad_norm = None
            n_global_tokens = sum(chosen_tokens(train_trees[i]) for i in gidx)
            for a in range(A):
                idx = gidx[a * B * W + rank * B:a * B * W + (rank + 1) * B]
                with acc.accumulate(prepared):
                    terms = tree_terms(prepared([train_trees[i] for i in idx], per_token=True), len(idx))
                    if kind == "sft":
                        local = sum(x.numel() for x in terms["tokens"])
                        # a token mean over the *global* batch: DDP averages over W, backward divides by A
                        loss = sft_loss(terms["tokens"]) * (local * W * A / n_global_tokens)
                        stats = {"nll_sum": terms["nll_sum"], "n_tokens": terms["n_tokens"],
                                 "chosen_logp": terms["chosen"]}
                    else:
                        ref_c, ref_r = ref["train"]
                        sel = torch.tensor(idx)
                        losses, cr, rr = methods.stage(kind).loss_fn()(terms["chosen"], terms["rejected"],
                                                                 ref_c[sel].to(acc.device), ref_r[sel].to(acc.device),
                                                                 stage.beta)
                        if stage.ftx:
                            losses = losses + ftx_term(terms["tokens"], stage.ftx)
                        loss = losses.sum() * (W * A / G)  # mean over the global batch
                        stats = {"losses": losses, "chosen_reward": cr, "rejected_reward": rr,
                                 "chosen_logp": terms["chosen"], "rejected_logp": terms["rejected"]}
                    acc.backward(loss)
                    if acc.sync_gradients:
                        grad_norm = acc.clip_grad_norm_(params, stage.max_grad_norm or float("inf"))
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                for key, v in stats.items():
                    gathered.setdefault(key, []).append(acc.gather(v.detach().float().contiguous()).cpu())
            scheduler.step()
            stage_step += 1
            global_step += 1
            g = {key: torch.cat(v) for key, v in gathered.items()}
            if kind == "sft":
                metrics = {"loss": (g["nll_sum"].sum() / g["n_tokens"].sum()).item(),
                           "chosen_logp": g["chosen_logp"].mean().item()}
            else:
                metrics = row_metrics(g["losses"], g["chosen_reward"], g["rejected_reward"], g["chosen_logp"],
                                      g["rejected_logp"])
            timings[kind] = timings.get(kind, 0.0) + time.time() - t0
            log.write({"split": "train", "step": global_step, "stage": kind, "stage_step": stage_step,
                       "epoch": round(stage_step / steps_per_epoch, 4), "lr": lr, **metrics,
                       "grad_norm": None if grad_norm is None else float(grad_norm),
                       "seconds": round(time.time() - t0, 4)})
            bar.update(1)
            bar.set_postfix({key: f"{metrics[key]:.3f}" for key in ("loss", "reward_accuracy") if key in metrics})

            t1 = time.time()
            last = stage_step == total
            if last or (cfg.eval_every and stage_step % cfg.eval_every == 0):
                vrow = validate()
                if vrow is not None:
                    final_valid[kind] = vrow
                    log.write({"split": "valid", "step": global_step, "stage": kind, "stage_step": stage_step,
                               "epoch": round(stage_step / steps_per_epoch, 4), **vrow, "n": len(valid_trees)})
                    value = vrow.get(best_metric)
                    if si == len(cfg.stages) - 1 and value is not None and \
                            (best is None or best_sign * value > best_sign * best["value"]):
                        best = {"metric": best_metric, "value": value, "step": global_step, "stage": kind}
                        weights = adapter_state(acc, prepared)
                        if main:
                            save_adapter(acc.unwrap_model(prepared).lm, run / "best", weights)
                            io.write_json(run / "best" / "best.json", best)
            timings[kind] = timings.get(kind, 0.0) + time.time() - t1
            if last or (cfg.save_every and stage_step % cfg.save_every == 0):
                checkpoint(done=last)
        bar.close()

    # ---- final adapter and run.json
    weights = None
    if prepared is not None:
        weights = adapter_state(acc, prepared)
        lm = acc.unwrap_model(prepared).lm
    acc.wait_for_everyone()
    if main:
        save_adapter(lm, run / "adapter", weights)
        timings["total"] = sum(v for key, v in timings.items() if key != "total")
        info = {"base_model": base_model_name(cfg.model.name), "stages": cfg.stage_kinds(), "seed": cfg.seed,
                "timings": {key: round(v, 2) for key, v in timings.items()},
                "wall_seconds_this_process": round(time.time() - t_process, 2), "resumes": resumes,
                "num_processes": W, "stage_info": stage_info, "best": best,
                "final_valid": final_valid, "prompt_format": prompt_format(tokenizer), **provenance()}
        io.write_json(run / "run.json", info)
        write_card(run)  # README.md in RUN/ and RUN/adapter/ (replaces PEFT's blank template)
    log.close()
    acc.wait_for_everyone()
    acc.end_training()
    return run
