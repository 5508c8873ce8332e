"""Forward-only passes: the frozen reference's log-probs (cached in RUN/ref_logps.safetensors) and validation scores."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from prefrec import io
from prefrec.batches import shard
from prefrec.errors import UserError
from prefrec.packing import Tree
from prefrec.stages import tree_terms

REF_CACHE = "ref_logps.safetensors"


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
