"""Write prefrec samples in other projects' layouts: `prefrec data export SAMPLES --format F --out OUT`.

One row per (comparison, rejected response): the peer trainers take one rejected answer per row, so a pairwise
sample with k comparisons, or a candidates sample with k rejected titles, gives k rows sharing the prompt. The
prompt is the comparison's full text (sample.prefix + question), written as one user message: it is what prefrec
trains on before the chat template, so a trainer that applies the model's template sees the same input.

    trl       {"prompt": [user msg], "chosen": [assistant msg], "rejected": [assistant msg]}   TRL conversational
    sharegpt  {"conversations": [{"from": "human", "value"}], "chosen": {"from": "gpt", "value"},
               "rejected": {"from": "gpt", "value"}}                                       LLaMA-Factory pairwise
    alpaca    {"instruction", "input": "", "chosen", "rejected"}                           LLaMA-Factory pairwise
    messages  {"messages": [user msg, assistant msg]}  one row per comparison, chosen only: SFT data (TRL, OpenAI)

Each row also carries "id" (sample id / comparison / rejected index), which those tools ignore. Written as JSON
lines, or with `datasets=True` as a Hugging Face datasets folder (save_to_disk; needs the optional `datasets`).
`prefrec data import` reads every one of these back (messages rows only when they are DMPO orderings: they have
no rejected response).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

from prefrec import io
from prefrec.data.importers import require_datasets
from prefrec.errors import UserError
from prefrec.samples import Sample

FORMATS = ("trl", "sharegpt", "alpaca", "messages")


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def _pair_row(fmt: str, prompt: str, chosen: str, rejected: str) -> dict:
    if fmt == "trl":
        return {"prompt": [_user(prompt)], "chosen": [_assistant(chosen)], "rejected": [_assistant(rejected)]}
    if fmt == "sharegpt":
        return {"conversations": [{"from": "human", "value": prompt}], "chosen": {"from": "gpt", "value": chosen},
                "rejected": {"from": "gpt", "value": rejected}}
    return {"instruction": prompt, "input": "", "chosen": chosen, "rejected": rejected}


OWNER = "data export"  # the command named in the manifest beside what it writes (io.owning)


def sample_rows(sample: Sample, fmt: str) -> Iterator[dict]:
    """The rows of one sample in layout `fmt` (see the module docstring)."""
    if fmt not in FORMATS:
        raise UserError(f"export format {fmt!r}: expected one of {FORMATS}")
    for i, comp in enumerate(sample.comparisons):
        prompt = sample.prefix + comp.question
        if fmt == "messages":
            yield {"id": f"{sample.id}/{i}", "messages": [_user(prompt), _assistant(comp.chosen)]}
            continue
        for j, rejected in enumerate(comp.rejected):
            yield {"id": f"{sample.id}/{i}/{j}", **_pair_row(fmt, prompt, comp.chosen, rejected)}


def export_samples(samples: Iterable[Sample], out: str | os.PathLike, fmt: str, *, datasets: bool = False,
                   force: bool = False) -> int:
    """Write the rows of `samples` to OUT (JSON lines, or a datasets save_to_disk folder); returns the row count.
    Both are written beside OUT first and renamed into place, so a failure leaves no half-written output. An
    existing OUT is replaced only with `force`, and only when an earlier export wrote it (io.check_out_file,
    io.atomic_folder's owner)."""
    rows = [row for s in samples for row in sample_rows(s, fmt)]
    if not rows:
        raise UserError("no samples to export")
    out = Path(out)
    if not datasets:
        io.check_out_file(out, OWNER, force=force)
        with io.owning(out.parent, OWNER):
            return io.write_jsonl(out, rows)
    hf = require_datasets("--datasets")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} exists and is not empty; choose another folder, or pass --force to replace "
                        "an earlier export")
    with io.atomic_folder(out, owner=OWNER) as tmp:
        hf.Dataset.from_list(rows).save_to_disk(str(tmp))
    return len(rows)
