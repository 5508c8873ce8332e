"""`prefrec export RUN --out DIR`: the run's adapter merged into its base, saved as a plain transformers model.

OUT/ then holds config.json, model.safetensors, generation_config.json, the tokenizer files, README.md (the run's
model card, library_name: transformers) and export.json (which run, which dtype, and the names of every file the
export wrote), so `AutoModelForCausalLM.from_pretrained(OUT)` needs neither peft nor prefrec. The merge is PEFT's
merge_and_unload (W + B·A·alpha/r folded into each target weight), done in fp32 on the CPU by default so that the
merged model's logits equal the adapter's up to float rounding.

A run trained with collaborative item tokens (prefrec.items) has a projector that no transformers model can hold:
OUT also gets projector.safetensors, the item table and its id map, and item_tokens.py (a loader needing torch and
safetensors only), and README.md says what else the model needs.

OUT is written whole or not at all (io.atomic_folder). `--force` replaces only an earlier export: a folder whose
manifest (.prefrec-files.json) records every file in it as the export's, unchanged since. It never replaces the run, a folder that contains the run, a folder prefrec did
not write, or an export beside which the user has put files of their own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from prefrec import io
from prefrec.errors import UserError

RECORD = "export.json"
OWNER = "export"  # the command named in the folder's manifest (io.atomic_folder)


def _recorded_files(out: Path) -> set[str] | None:
    """The file names an earlier export recorded in OUT/export.json; None when OUT holds no such record."""
    try:
        record = json.loads((out / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("kind") != "export" or not isinstance(record.get("files"), list):
        return None
    return {str(name) for name in record["files"]}


def check_out(run: Path, out: Path, force: bool) -> None:
    """OUT may be new, empty, or (with --force) an earlier export holding nothing but what it recorded."""
    io.check_out_folder(out)
    r, o = run.resolve(), out.resolve()
    if o == r or o in r.parents:
        raise UserError(f"--out {out}: {'is' if o == r else 'contains'} the run {run}; choose a folder outside it")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise UserError(f"--out {out} exists and is not empty; choose another folder, or pass --force to replace "
                        "an earlier export")
    io.check_replaceable(out, OWNER)  # every file in it the earlier export's, unchanged (its manifest)


def export_run(run: str | os.PathLike, out: str | os.PathLike, *, dtype: str = "fp32", force: bool = False) -> Path:
    """Merge RUN's adapter into its base and write OUT (in a temporary sibling folder, then renamed into place)."""
    from prefrec.card import model_card
    from prefrec.items import detach, export_readme, write_export_items
    from prefrec.model import load_model
    from prefrec.provenance import provenance
    from prefrec.results import is_run_dir

    run, out = Path(run), Path(out)
    if not is_run_dir(run):
        raise UserError(f"{run}: not a finished prefrec run (expected run.json and adapter/ in it)")
    check_out(run, out, force)  # before the merge, which takes a while
    merged, tokenizer = load_model(str(run), dtype=dtype, device="cpu", merge_adapter=True)
    items = detach(merged)  # saved beside the model, not inside it (transformers would not know the weights)
    with io.atomic_folder(out, owner=OWNER) as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        if items is not None:
            write_export_items(tmp, items)
        io.write_text(tmp / "README.md", model_card(run, merged=True) + (export_readme(items) if items else ""))
        files = sorted([p.name for p in tmp.iterdir() if p.name != io.INCOMPLETE] + [RECORD])
        io.write_json(tmp / RECORD, {"kind": "export", "run": str(run.resolve()), "dtype": dtype, "files": files,
                                     **provenance()})
    return out


def check_push(repo_id: str) -> str:
    """Before any work: `repo_id` must be a Hub id ('org/name'), the Hub not switched off (HF_HUB_OFFLINE), and a
    token at hand (HF_TOKEN or `hf auth login`); returns the token, else one UserError saying what is missing."""
    from huggingface_hub import get_token, is_offline_mode
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise UserError(f"--push-to-hub {repo_id!r}: expected a Hugging Face repository id, 'org/name'") from None
    if "/" not in repo_id:
        raise UserError(f"--push-to-hub {repo_id!r}: name the owner too, 'org/{repo_id}'")
    if is_offline_mode():
        raise UserError(f"--push-to-hub {repo_id}: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it on a "
                        f"machine that reaches huggingface.co")
    token = get_token()
    if not token:
        raise UserError(f"--push-to-hub {repo_id}: no Hugging Face token (set HF_TOKEN or run `hf auth login`); "
                        f"nothing was exported")
    return token


def push_export(out: str | os.PathLike, repo_id: str, *, token: str, private: bool = False) -> str:
    """Upload an export folder to the Hub model repository `repo_id` (created when missing; `private` for a new
    one): exactly the files its export.json lists, the model card among them. Returns the repository's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    out = Path(out)
    files = _recorded_files(out)
    if files is None:
        raise UserError(f"{out}: not a prefrec export (no {RECORD}); run `prefrec export RUN --out {out}` first")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(out), allow_patterns=sorted(files),
                          commit_message=f"prefrec export of {json.loads((out / RECORD).read_text())['run']}")
    except (HfHubHTTPError, OSError) as e:  # no route, refused, unauthorised: one line, the export stays on disk
        raise UserError(f"--push-to-hub {repo_id}: the upload failed ({str(e).splitlines()[0]}); the export is "
                        f"complete in {out}, so `prefrec export` with --push-to-hub can be rerun") from None
    return str(url)
