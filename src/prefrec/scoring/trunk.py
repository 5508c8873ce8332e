"""The trunk cache: with LoRA on the top N of a model's L decoder layers, compute the frozen bottom once.

When only layers L−N … L−1 carry trainable weights, the hidden states that enter layer L−N are a fixed function of
a tree's tokens: the same for every epoch, learning rate, loss, seed, the reference pass and the evaluation of every
adapter on the same samples. This module stores them once per tree and lets prefrec.scoring.packing run only the
top N layers, the final norm and the LM head from them (docs/train.md "Top-N LoRA and the trunk cache").

    tree -> packed row (its own mask and positions) -> embeddings -> layers 0 … S−1     computed once, stored
                                                     stored states -> layers S … L−1 -> norm -> head   every step

S = L − N is `TrunkCache.start`. A tree's states are (n_tokens, hidden), in the tree's own column order
(packing.pack_trees); placed into any packed layout (one tree a row, or several) they give the same numbers as the
full forward, because a token attends only to its own tree.

What a stored state depends on, and so what keys it:
- the folder: `fingerprint(base, start)`: the model's class and config, S, the dtype, the attention
  implementation, and the values of every weight below S (the token embeddings and layers 0 … S−1, the item
  projector when the prompt has item tokens); each tensor is read in full up to 2^20 values and at an even stride
  beyond, so a retrained or different checkpoint changes it (a single edited weight of a >1M-value tensor may not:
  an approximation, documented);
- the name of each stored tensor: `tree_key(tree)`, a SHA-256 of the tree's tokens, branches and item tokens.
A changed model, layer or prompt therefore lands in another folder or under another name: it is computed anew,
never silently reused. Shards are write-once safetensors files of up to SHARD_TREES trees (temp, then rename), read
memory-mapped, so a killed build keeps its finished shards and leaves no file that is ever read; its temp file is
removed by the next build.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from prefrec import io
from prefrec.errors import UserError
from prefrec.items import attached as attached_items
from prefrec.paths import cache_dir
from prefrec.scoring.packing import TRUNK_ATTR, base_model, decoder_hidden, pack_trees
from prefrec.scoring.trees import Tree

SAMPLE_VALUES = 1 << 20  # per weight tensor, values read into the fingerprint (all of them up to this size)
# trees per shard: ~300 MB of bf16 states for the ML-1M curve's samples (~250 tokens × 576), a few minutes of work
# on 2 cores; a killed build loses at most one shard's
SHARD_TREES = 1024


def place(folder: str | os.PathLike | None = None) -> Path:
    """Where trunk caches live: `folder` (a run's trunk_cache_dir, eval's --cache-dir) or the prefrec cache's trunk/."""
    return Path(folder) if folder else cache_dir() / "trunk"


# ---------------------------------------------------------------------------------------------------------------
# Which layers

def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder blocks of a transformers causal LM (or a PEFT model around one)."""
    layers = getattr(base_model(model).get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise UserError(f"{type(base_model(model)).__name__}: no decoder `layers` list, so top-N LoRA and the trunk "
                        f"cache cannot split it; leave lora.layers unset")
    return layers


def top_layers(model, n: int) -> list[int]:
    """The indices of the top n decoder layers (what PEFT's layers_to_transform takes)."""
    total = len(decoder_layers(model))
    if not 1 <= n <= total:
        raise UserError(f"lora.layers: {n} but the model has {total} decoder layers; expected 1 … {total}")
    return list(range(total - n, total))


def _bottom_modules(base, start: int) -> list[tuple[str, torch.nn.Module]]:
    """Every module whose weights the states entering layer `start` depend on, named."""
    dec = base.get_decoder()
    mods = [("embed_tokens", base.get_input_embeddings())]
    mods += [(f"layers.{i}", layer) for i, layer in enumerate(dec.layers[:start])]
    items = attached_items(base)
    if items is not None:
        mods.append(("items.projector", items.projector))
    return mods


def frozen_below(model, start: int, training: bool = True) -> str | None:
    """None when the states entering layer `start` are a fixed function of the tokens; else why not (an adapter
    module below it, or, when `training`, a trainable weight)."""
    for name, mod in _bottom_modules(base_model(model), start):
        for pname, p in mod.named_parameters():
            if training and p.requires_grad:
                return f"{name}.{pname} is trainable"
            if "lora_" in pname:  # an adapter below S: its weights (or a disabled adapter) would change the states
                return f"{name}.{pname} is an adapter weight below layer {start}"
    return None


def fingerprint(model, start: int) -> str:
    """SHA-256 of everything the stored states depend on besides the tokens (see the module docstring)."""
    base = base_model(model)
    h = hashlib.sha256()
    emb = base.get_input_embeddings().weight
    head = [type(base).__name__, base.config.to_json_string(use_diff=False), start, str(emb.dtype),
            getattr(base.config, "_attn_implementation", None)]
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    for name, mod in _bottom_modules(base, start):
        tensors = [*mod.named_parameters(), *mod.named_buffers()]  # buffers too: the items table is one
        for pname, p in sorted(tensors, key=lambda x: x[0]):
            flat = p.detach().reshape(-1)
            if flat.numel() > SAMPLE_VALUES:
                flat = flat[::flat.numel() // SAMPLE_VALUES + 1]
            h.update(f"{name}.{pname}:{tuple(p.shape)}:{p.dtype}".encode())
            h.update(flat.float().cpu().numpy().tobytes())
    return h.hexdigest()


def tree_key(tree: Tree) -> str:
    """SHA-256 of a tree's content: prefix, item tokens, and every branch's question, item tokens and responses."""
    content = [tree.prefix, tree.soft, [[b.question, b.soft, b.responses] for b in tree.branches]]
    return hashlib.sha256(json.dumps(content, separators=(",", ":")).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# The cache

class TrunkCache:
    """Stored states entering layer `start` of one model, in `folder`/<fingerprint>/shard-*.safetensors.

    states(trees) returns them (computing, without storing, any tree not stored yet), ensure(trees) stores the
    missing ones first. Attach it to the model (`attach`) and every packed forward of that model
    (packing.response_logps: training, reference, validation, evaluation) runs from it."""

    def __init__(self, folder: str | os.PathLike, model, start: int, training: bool = True):
        reason = frozen_below(model, start, training)
        if reason is not None:
            raise UserError(f"trunk cache: the layers below {start} are not frozen ({reason}); the cache needs "
                            f"LoRA on the top layers only (lora.layers)")
        self.start = start
        self.fingerprint = fingerprint(model, start)
        self.folder = Path(folder) / self.fingerprint[:24]
        self._model = model
        self._index: dict[str, Path] = {}
        self._open: dict[Path, object] = {}
        self.built = 0  # trees computed and stored by this object
        self.computed = 0  # trees computed on the fly (not stored) by this object
        self.refresh()
        if self.folder.is_dir():
            touch_last_used(self.folder)

    def refresh(self) -> None:
        """Re-read which trees the folder's shards hold (another process may have written one)."""
        from safetensors import safe_open

        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob("shard-*.safetensors")):
            if path in self._open:
                continue
            f = safe_open(str(path), framework="pt")
            if (f.metadata() or {}).get("fingerprint") != self.fingerprint:
                raise UserError(f"{path}: a trunk-cache shard of another model or layer in this model's folder; "
                                f"delete {self.folder} and run again")
            self._open[path] = f
            for key in f.keys():
                self._index.setdefault(key, path)

    def missing(self, trees: Sequence[Tree]) -> list[int]:
        return [t for t, tree in enumerate(trees) if tree_key(tree) not in self._index]

    def states(self, trees: Sequence[Tree]) -> list[Tensor]:
        """(n_tokens, hidden) per tree, in the model's dtype, on the CPU."""
        keys = [tree_key(t) for t in trees]
        todo = [t for t, k in enumerate(keys) if k not in self._index]
        fresh = dict(zip(todo, bottom_states(self._model, [trees[t] for t in todo], self.start))) if todo else {}
        self.computed += len(todo)
        return [fresh[t] if t in fresh else self._open[self._index[k]].get_tensor(k) for t, k in enumerate(keys)]

    def ensure(self, trees: Sequence[Tree], *, max_tokens_per_batch: int = 4096, progress: bool = False,
               shard_trees: int = SHARD_TREES) -> int:
        """Compute and store the states of every tree not stored yet, a shard per `shard_trees` trees (so a build
        killed after an hour keeps all but its last shard's work); returns how many."""
        todo = {k: t for k, t in ((tree_key(t), t) for t in trees) if k not in self._index}  # each tree hashed once
        if not todo:
            return 0
        self._check_disk(list(todo.values()))
        _remove_dead_temps(self.folder)
        keys = list(todo)
        from tqdm.auto import tqdm

        with tqdm(total=len(keys), desc="trunk cache", unit="tree", disable=None if progress else True) as bar:
            for lo in range(0, len(keys), shard_trees):
                part = keys[lo:lo + shard_trees]
                states = _batched_states(self._model, [todo[k] for k in part], self.start, max_tokens_per_batch, bar)
                self._write_shard({k: st.contiguous() for k, st in zip(part, states)})
        touch_last_used(self.folder)
        return len(keys)

    def _write_shard(self, tensors: dict[str, Tensor]) -> None:
        """One write-once shard (temp, then rename), named by its trees; indexed at once."""
        from safetensors.torch import save_file

        name = hashlib.sha256("".join(sorted(tensors)).encode()).hexdigest()[:24]
        meta = {"fingerprint": self.fingerprint, "start": str(self.start), "trees": str(len(tensors))}
        with io.atomic_path(self.folder / f"shard-{name}.safetensors", suffix=f".{os.getpid()}.tmp") as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        self.built += len(tensors)
        self.refresh()

    def _check_disk(self, trees: list[Tree]) -> None:
        emb = base_model(self._model).get_input_embeddings().weight  # (vocab, hidden): the states' width and dtype
        need = sum(t.n_tokens() for t in trees) * emb.shape[1] * torch.finfo(emb.dtype).bits // 8
        self.folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.folder).free
        if need > free - (256 << 20):  # keep 256 MiB for everything else
            raise UserError(f"trunk cache: {need / 2**20:,.0f} MiB needed for {len(trees)} trees in {self.folder}, "
                            f"{free / 2**20:,.0f} MiB free there; choose another place (--cache-dir, "
                            f"trunk_cache_dir) or turn the cache off (trunk_cache: false)")

    def describe(self) -> dict:
        return {"start_layer": self.start, "folder": str(self.folder), "fingerprint": self.fingerprint,
                "stored_trees": len(self._index), "built": self.built, "computed_unstored": self.computed}


def _remove_dead_temps(folder: Path) -> None:
    """Remove the temp files of killed builds (`.shard-*.<pid>.tmp` whose process is gone)."""
    for tmp in folder.glob(".shard-*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            print(f"prefrec: removing {tmp}, left by a killed trunk-cache build", file=sys.stderr)
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    return True


def bottom_states(model, trees: Sequence[Tree], start: int) -> list[Tensor]:
    """The states entering layer `start` of every tree, computed now in one packed forward (no grad)."""
    base = base_model(model)
    batch = pack_trees(trees, pad_id=base.config.pad_token_id or 0)
    with torch.no_grad():
        hidden = decoder_hidden(model, batch, layers=(0, start), final_norm=False)
    return [hidden[r, off:off + n].detach().cpu().clone() for r, off, n in batch.tree_slots]


def _batched_states(model, trees: list[Tree], start: int, max_tokens: int, bar):
    """bottom_states over many trees in batches of at most `max_tokens` padded tokens, longest first; returns them in
    the order of `trees`, advancing the progress bar `bar` as it goes."""
    order = sorted(range(len(trees)), key=lambda t: -trees[t].n_tokens())
    out: dict[int, Tensor] = {}
    lo = 0
    while lo < len(order):
        per = max(1, max_tokens // trees[order[lo]].n_tokens())
        chunk = order[lo:lo + per]
        out.update(zip(chunk, bottom_states(model, [trees[t] for t in chunk], start)))
        bar.update(len(chunk))
        lo += per
    return [out[t] for t in range(len(trees))]


def attach(model, cache: TrunkCache | None) -> None:
    """Make every packed forward of `model` run from `cache` (None: detach)."""
    base = base_model(model)
    if cache is None:
        if hasattr(base, TRUNK_ATTR):
            delattr(base, TRUNK_ATTR)
        return
    setattr(base, TRUNK_ATTR, cache)


def attached(model) -> TrunkCache | None:
    return getattr(base_model(model), TRUNK_ATTR, None)


# ---------------------------------------------------------------------------------------------------------------
# What is stored, and removing what is no longer used (`prefrec cache list|prune`)

LAST_USED = ".last-used"  # touched each time a TrunkCache opens its folder, so that prune knows what is in use


def touch_last_used(folder: Path) -> None:
    """Mark `folder` as used now (a read-only cache is still readable: the mark is best effort)."""
    try:
        (folder / LAST_USED).touch()
    except OSError:
        pass


def stored_caches(root: str | os.PathLike) -> list[dict]:
    """Each folder under `root` (the trunk cache place: cache_dir()/trunk or a trunk_cache_dir): its size, shards,
    trees, start layer and when a run last opened it. `owned` is False for a folder holding anything but this
    module's files (its shards, whose metadata names the folder's fingerprint; the last-used mark; temp files):
    such a folder is never pruned. `building` names the live process of a build in progress."""
    root = Path(root)
    return [_describe_folder(f) for f in sorted(root.iterdir()) if f.is_dir()] if root.is_dir() else []


def _describe_folder(folder: Path) -> dict:
    from safetensors import safe_open

    size, trees, start, owned, building, stamps = 0, 0, None, True, None, []
    for path in sorted(folder.iterdir()):
        stat = path.lstat()
        size += stat.st_size
        if path.name == LAST_USED:
            stamps.append(stat.st_mtime)
        elif path.name.startswith(".shard-") and path.name.endswith(".tmp") and path.is_file():
            pid = path.name.rsplit(".", 2)[-2]
            building = int(pid) if pid.isdigit() and _alive(int(pid)) else building
        elif path.name.startswith("shard-") and path.name.endswith(".safetensors") and path.is_file():
            try:
                with safe_open(str(path), framework="numpy") as f:
                    meta = f.metadata() or {}
            except Exception:  # not a safetensors file: not ours
                meta = {}
            owned &= meta.get("fingerprint", "").startswith(folder.name) and len(folder.name) == 24
            trees += int(meta.get("trees", 0)) if str(meta.get("trees", "")).isdigit() else 0
            start = meta.get("start", start)
            stamps.append(stat.st_mtime)
        else:
            owned = False
    return {"folder": str(folder), "size_bytes": size, "trees": trees, "start_layer": start,
            "last_used": max(stamps) if stamps else folder.stat().st_mtime, "owned": owned, "building": building}


def prune(root: str | os.PathLike, older_than_s: float | None, *, now: float, dry_run: bool = False) -> list[dict]:
    """Remove every owned, idle cache folder under `root` last used more than `older_than_s` seconds before `now`
    (None: every one); returns each folder's description with `action`: removed (or "would remove" with dry_run),
    kept (recent), skipped (not prefrec's, or a build in progress)."""
    out = []
    for c in stored_caches(root):
        if not c["owned"] or c["building"] is not None:
            action = "skipped: " + ("not a prefrec trunk cache" if not c["owned"] else f"pid {c['building']} is "
                                    "building it")
        elif older_than_s is not None and now - c["last_used"] <= older_than_s:
            action = "kept"
        else:
            action = "would remove" if dry_run else "removed"
            if not dry_run:
                shutil.rmtree(c["folder"])
        out.append({**c, "action": action})
    return out
