"""Forward-only passes: the frozen reference's log-probs (cached in RUN/ref_logps.safetensors) and validation scores."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from prefrec import io
from prefrec.errors import UserError
from prefrec.scoring.trees import Tree
from prefrec.training.batches import shard
from prefrec.training.stages import tree_terms

REF_CACHE = "ref_logps.safetensors"


def score_split(acc, model, trees: list[Tree], chunk: int, desc: str, progress: bool) -> dict[str, torch.Tensor]:
    """chosen, rejected, their token counts, nll_sum (n,), n_tokens (n,) for every tree (stages.tree_terms), in order,
    on every process.

    `model` is the prepared TreeScorer (so FSDP/DeepSpeed see the forward); it must be in eval mode."""
    from tqdm.auto import tqdm

    n = len(trees)
    mine = shard(n, acc.process_index, acc.num_processes)
    parts: dict[str, list[torch.Tensor]] = {}
    with torch.inference_mode():
        for lo in tqdm(range(0, len(mine), chunk), desc=desc, disable=None if progress else True, leave=False):
            batch = [trees[i] for i in mine[lo:lo + chunk]]
            terms = tree_terms(model(batch, per_token=True), batch)
            for key in ("chosen", "rejected", "chosen_len", "rejected_len", "nll_sum", "n_tokens"):
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


def narrow_cache(src: Path, dst: Path, k: int) -> bool:
    """Write to `dst` the reference cache `src`, narrowed to each sample's first k negatives; True when written.

    A stage with k negatives needs exactly the first k columns of a cache made with k' ≥ k: a sample's first k
    negatives are the first k of its k' (batches.with_k_negatives), and a tree branch attends only to the prompt and
    to itself (prefrec.scoring.packing), so a branch's log-probs do not depend on the branches after it. False (nothing
    written) when `src` is missing or holds fewer than k. The caller vouches that `src` was made by the same
    reference model on the same data; reference_logps still checks the sample ids when it reads `dst`."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    if not src.is_file():
        return False
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata() or {})
        if meta.get("chosen") != "pairs" or not meta.get("k", "").isdigit() or int(meta["k"]) < k:
            return False
        tensors = {name: f.get_tensor(name)[:, :k].contiguous() for name in f.keys()}
    meta["k"] = str(k)
    meta["narrowed_from"] = str(src)
    with io.atomic_path(dst) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return True
