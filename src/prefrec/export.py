"""`prefrec export RUN --out DIR`: the run's adapter merged into its base, saved as a plain transformers model.

OUT/ then holds config.json, model.safetensors, generation_config.json, the tokenizer files and README.md (the run's
model card, library_name: transformers), so `AutoModelForCausalLM.from_pretrained(OUT)` needs neither peft nor
prefrec. The merge is PEFT's merge_and_unload (W + B·A·alpha/r folded into each target weight), done in fp32 on the
CPU by default so that the merged model's logits equal the adapter's up to float rounding.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from prefrec.errors import UserError


def export_run(run: str | os.PathLike, out: str | os.PathLike, *, dtype: str = "fp32", force: bool = False) -> Path:
    """Merge RUN's adapter into its base and write OUT (written to a temp folder, then renamed into place)."""
    from prefrec import io
    from prefrec.card import model_card
    from prefrec.model import load_model
    from prefrec.results import is_run_dir

    run, out = Path(run), Path(out)
    if not is_run_dir(run):
        raise UserError(f"{run}: not a finished prefrec run (expected run.json and adapter/ in it)")
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} exists and is not empty; choose another folder or pass --force")
    merged, tokenizer = load_model(str(run), dtype=dtype, device="cpu", merge_adapter=True)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        io.write_text(tmp / "README.md", model_card(run, merged=True))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
