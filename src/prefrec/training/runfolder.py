"""A training run folder: the refusal to overwrite, checkpoints (Accelerate save_state + adapter), the final and best
adapters, metrics.jsonl and the trackers."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from prefrec import io
from prefrec.errors import UserError
from prefrec.items import attached, projector_state, save_projector
from prefrec.model import check_adapter, known_name
from prefrec.results import RUN_CONFIG, RUN_JSON, is_run_dir, read_run, read_run_config
from prefrec.training.config import TrainConfig, config_to_dict


def base_model_name(name: str) -> str:
    """What run.json records as base_model: a run folder's or adapter folder's own base, else the name itself."""
    p = Path(name)
    if is_run_dir(p):
        return read_run(p).get("base_model", "embedded")
    if p.is_dir() and (p / "adapter_config.json").is_file():
        return known_name(check_adapter(p).get("base_model_name_or_path") or "embedded")
    return name


STATE_FILE = "trainer_state.json"  # a checkpoint's counters (TrainState), written last


def checkpoints(run: Path) -> list[Path]:
    """Complete checkpoints (trainer_state.json is written last, and the folder renamed into place), oldest first."""
    root = run / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / STATE_FILE).is_file()
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


def save_adapter(lm, dest: Path, state_dict: dict | None = None, projector: dict | None = None) -> None:
    """PEFT save_pretrained (safetensors) into a temp folder, renamed into place whole with the ordinary file modes
    (PEFT writes its weights 0600). A model with item tokens also gets its projector.safetensors there (`projector`,
    gathered by items.projector_state, else the module's own weights), so an adapter never loses its projector."""
    with io.atomic_folder(dest, replace=True, flag="adapter") as tmp:
        lm.save_pretrained(str(tmp), safe_serialization=True, state_dict=state_dict, save_embedding_layers=False)
        if attached(lm) is not None:
            save_projector(tmp, attached(lm), projector)


@dataclass(frozen=True)
class TrainState:
    """A checkpoint's counters (STATE_FILE), written whole by save_checkpoint and read whole when resuming."""
    global_step: int
    stage_index: int
    stage_kind: str
    stage_step: int  # optimizer steps the stage has taken
    stage_total_steps: int
    stage_done: bool
    epoch: int
    step_in_epoch: int
    samples_consumed: int
    num_processes: int
    global_batch: int
    best: dict | None  # {"metric", "value", "step", "stage"} of the best validation so far
    timings: dict
    final_valid: dict  # stage kind -> its last validation metrics
    stage_info: dict  # stage kind -> its plan and what happened (warnings, early stop)
    resumes: int
    seed: int
    stale: int  # validations since the last new best (early stopping)

    @classmethod
    def read(cls, checkpoint: Path) -> "TrainState":
        return cls(**json.loads((checkpoint / STATE_FILE).read_text()))


def save_checkpoint(acc, run: Path, prepared, state: TrainState, keep_last: int) -> None:
    """RUN/checkpoints/step-N/: Accelerate's save_state (optimizer, scheduler, every process's RNG; under FSDP and
    DeepSpeed also the sharded model and optimizer), adapter/ (PEFT format) and trainer_state.json (prefrec's
    counters). Written into a temp folder that is renamed into place once trainer_state.json is in it; only then
    are checkpoints beyond the last `keep_last` deleted. Not Accelerate's ProjectConfiguration(total_limit): it
    deletes the oldest checkpoint *before* writing the new one, names folders by save count rather than by step,
    and counts every entry of the folder (a temp folder included)."""
    root = run / "checkpoints"
    final = root / f"step-{state.global_step}"
    tmp = root / f".step-{state.global_step}.tmp"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    weights = adapter_state(acc, prepared)
    projector = projector_state(acc, prepared)
    acc.wait_for_everyone()
    if acc.is_main_process:
        lm = acc.unwrap_model(prepared).lm
        lm.save_pretrained(str(tmp / "adapter"), safe_serialization=True, state_dict=weights,
                           save_embedding_layers=False)
        if attached(lm) is not None:  # the projector's optimizer state is in save_state's optimizer.bin
            save_projector(tmp / "adapter", attached(lm), projector)
        io.write_json(tmp / STATE_FILE, dataclasses.asdict(state))
        io.ordinary_modes(tmp)
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
    rng = checkpoint / f"random_states_{acc.process_index}.pkl"
    if not rng.is_file():
        raise UserError(f"--resume: {checkpoint} has no {rng.name} (written by an older prefrec or another number "
                        f"of processes); start the run again without --resume")
    damaged = (f"--resume: {{}} is damaged ({{}}); start the run again without --resume, or delete {checkpoint} to "
               "resume from the checkpoint before it")
    from accelerate.utils import load  # torch.load with weights_only: a checkpoint file never runs code

    try:  # Accelerate itself would only log "Could not load random states" and go on with a fresh RNG
        states = load(rng)
        if not isinstance(states, dict) or "torch_manual_seed" not in states:
            raise ValueError("no torch RNG state in it")
    except Exception as e:  # noqa: BLE001 - unpickling errors have many types; each means the same here
        raise UserError(damaged.format(rng, _first_line(e))) from None
    try:
        acc.load_state(str(checkpoint))
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - optimizer.bin, scheduler.bin: truncated, foreign or hostile
        raise UserError(damaged.format(checkpoint, _first_line(e))) from None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def load_adapter_weights(lm, folder: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file


    check_adapter(folder)  # a truncated or missing file is one clear error, naming it
    result = set_peft_model_state_dict(lm, load_file(str(folder / "adapter_model.safetensors")))
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing or getattr(result, "unexpected_keys", []):
        raise UserError(f"{folder}: adapter does not fit the model (missing {missing[:3]}, unexpected "
                        f"{list(result.unexpected_keys)[:3]})")


def tracker_names(cfg: TrainConfig) -> list[str]:
    """The Accelerate trackers of a run (log_with, plus tensorboard: true), each checked to be installed."""
    from accelerate.utils import (
        is_mlflow_available,
        is_tensorboard_available,
        is_wandb_available,
    )

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
        self.last_train: dict[str, dict] = {}  # stage -> its last training row (the closing summary's loss)
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
        if row.get("split") == "train":
            self.last_train[row["stage"]] = row
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


# Written first into every run folder: the folder is prefrec's, so a failed start may be retried in it and a killed run
# resumed. A non-empty folder without it is the user's, and prefrec writes nothing there.
RUN_MARKER = ".prefrec-run"


def _busy(run: Path) -> bool:
    """The folder holds training: a finished run, a checkpoint, or logged steps (a start that failed before its
    first step leaves an empty metrics.jsonl, and may be started again)."""
    metrics = run / "metrics.jsonl"
    return (run / RUN_JSON).exists() or bool(checkpoints(run)) or (metrics.is_file() and metrics.stat().st_size > 0)


def _defaults() -> dict:
    """TrainConfig's top-level keys that have a default, with it."""
    out = {}
    for f in dataclasses.fields(TrainConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return json.loads(json.dumps(out, default=lambda o: dataclasses.asdict(o)))  # as config_to_dict gives them


def check_run_folder(cfg: TrainConfig, run: Path, resume: bool) -> Path | None:
    """Returns the checkpoint to resume from (None: start from scratch); refuses to overwrite a run, and to write
    into a file or into a non-empty folder that is not a prefrec run folder."""
    if run.exists() and not run.is_dir():
        raise UserError(f"output_dir {run} is a file, not a folder; choose another --out")
    ours = (run / RUN_MARKER).is_file() or ((run / RUN_CONFIG).is_file() and _busy(run))  # or a run from before
    foreign = run.is_dir() and not ours and any(p.name != ".lock" for p in run.iterdir())
    if foreign:
        raise UserError(f"output_dir {run} is not empty and is not a prefrec run folder (it has no {RUN_MARKER}); "
                        f"choose a new or empty folder")
    if not resume:
        if _busy(run):
            raise UserError(f"output_dir {run} already holds a run; pass --resume to continue it, or choose "
                            f"another --out")
        return None
    saved, old = run / RUN_CONFIG, read_run_config(run)
    if old is not None:
        new, defaults = config_to_dict(cfg), _defaults()
        # may differ between the killed and the resumed run
        free = {"progress", "tensorboard", "log_with", "output_dir"}
        # a key a later prefrec added is absent from an older run's config: it ran with the key's default
        diff = sorted(k for k in set(old) | set(new)
                      if k not in free and old.get(k, defaults.get(k)) != new.get(k))
        if diff:
            raise UserError(f"--resume: the config differs from {saved} in {diff}; resume with the run's own "
                            f"config ({saved})")
    ckpts = checkpoints(run)
    return ckpts[-1] if ckpts else None
