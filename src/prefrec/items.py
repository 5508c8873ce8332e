"""Collaborative item tokens (LLaRA, Liao et al. 2024): a trained sequential recommender's item
embedding, mapped into the LM's embedding width by a small MLP, beside each item title in the prompt.

    table   (n_items, d_rec)  the recommender's item embeddings, frozen (a buffer: no gradient, no optimizer state)
    ids     item key -> row   the raw item ids of the prepared folder (Sample.history_items / candidate_items)
    projector                 Linear(d_rec, hidden) -> GELU -> Linear(hidden, d_model), LLaRA's shape, trained with
                              LoRA in every stage
    soft token of item i      projector(table[ids[i]]), written into `inputs_embeds` at the placeholder position that
                              follows the item's title (prefrec.scoring.soft marks the prompt, encoding tokenises it)

Files. `prefrec baseline sasrec` (and every sequential baseline) writes beside its results.json
    item_embeddings.safetensors   tensor "embeddings" (n, d) float32; metadata: format, dataset, items_tsv_sha256
    item_ids.json                 {"format", "dataset", "items_tsv_sha256", "model", "rows", "dim", "ids": {key: row},
                                   "titles": {key: title}}
where dataset is the prepared folder's stats.json name and items_tsv_sha256 the SHA-256 of its items.tsv, so a table
is refused for another dataset's samples. A trained run keeps copies of both files in RUN/ and its projector as
projector.safetensors inside every adapter folder it writes (RUN/adapter/, RUN/best/, each checkpoint's adapter/),
so that a best or resumed adapter always comes with its own projector; the projector's metadata holds the SHA-256 of
the two table files it was trained with, so a run whose table was swapped or damaged is refused.

The item tokens travel with the model: `attach(model, items)` registers them as the submodule `prefrec_items` of the
transformers model (under a PEFT wrapper: of its base model, which PEFT's merge keeps), so every scorer, generation,
the server and explain find them with `attached(model)` without another argument. PEFT never saves them (its state
dict holds LoRA weights only); this module does.
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from prefrec import io
from prefrec.errors import UserError
from prefrec.paths import sha256_file

TABLE_FILE = "item_embeddings.safetensors"
IDS_FILE = "item_ids.json"
PROJECTOR_FILE = "projector.safetensors"
LOADER_FILE = "item_tokens.py"  # the export's standalone loader
FORMAT = "prefrec-item-embeddings/1"
ATTR = "prefrec_items"  # the submodule name on the transformers model


# ---------------------------------------------------------------------------------------------------------------
# The table and its id map

@dataclass
class ItemTable:
    embeddings: Tensor  # (n, d) float32
    ids: dict[str, int]  # item key -> row
    titles: dict[str, str] = field(default_factory=dict)  # item key -> title (new users name items by title)
    dataset: str = ""
    items_sha256: str | None = None  # of the prepared folder's items.tsv
    model: str = ""  # the recommender that learnt it (sasrec, ...)
    folder: Path | None = None  # where it was read from
    table_sha256: str | None = None  # of the two files as read: what a projector was trained with
    ids_sha256: str | None = None

    @functools.cached_property
    def title_rows(self) -> dict[str, int]:
        """title -> row for titles that name one item only (an ambiguous title stays text): how the titles of a new
        user's request (prefrec rank, serve) find their items."""
        rows: dict[str, list[int]] = {}
        for key, title in self.titles.items():
            if key in self.ids:
                rows.setdefault(title, []).append(self.ids[key])
        return {t: r[0] for t, r in rows.items() if len(r) == 1}


def save_table(folder: str | Path, embeddings: Tensor, keys: list[str], *, titles: dict[str, str], dataset: str,
               items_tsv: Path | None, model: str) -> Path:
    """Write FOLDER/item_embeddings.safetensors and FOLDER/item_ids.json (row i = keys[i]); returns the table path."""
    from safetensors.torch import save_file

    folder = Path(folder)
    fingerprint = sha256_file(items_tsv) if items_tsv is not None and items_tsv.is_file() else None
    meta = {"format": FORMAT, "dataset": dataset, "items_tsv_sha256": fingerprint or ""}
    with io.atomic_path(folder / TABLE_FILE) as tmp:
        save_file({"embeddings": embeddings.detach().float().cpu().contiguous()}, str(tmp), metadata=meta)
    io.write_json(folder / IDS_FILE, {"format": FORMAT, "dataset": dataset, "items_tsv_sha256": fingerprint,
                                      "model": model, "rows": len(keys), "dim": int(embeddings.shape[1]),
                                      "ids": {k: i for i, k in enumerate(keys)},
                                      "titles": {k: titles[k] for k in keys if k in titles}})
    return folder / TABLE_FILE


def _table_paths(path: str | Path) -> tuple[Path, Path]:
    """(table, id map) of a folder, or of a .safetensors path with the map beside it."""
    p = Path(path)
    if p.suffix == ".safetensors" and not p.is_dir():
        return p, p.with_name(IDS_FILE)
    return p / TABLE_FILE, p / IDS_FILE


def _read_tensor(path: Path) -> tuple[Tensor, dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if "embeddings" not in f.keys():  # noqa: SIM118 - a safetensors file, not a dict
                raise UserError(f"{path}: holds no tensor 'embeddings' (expected a table written by `prefrec "
                                f"baseline`)")
            emb = f.get_tensor("embeddings")
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: not a complete safetensors file ({e}); run the baseline again") from None
    if emb.ndim != 2 or not emb.is_floating_point() or not torch.isfinite(emb).all():
        raise UserError(f"{path}: 'embeddings' must be a finite float matrix (items x dim), got shape "
                        f"{tuple(emb.shape)} {emb.dtype}")
    return emb.float(), meta


def read_table(path: str | Path) -> ItemTable:
    """The table in a baseline's (or run's) folder, or at a .safetensors path with item_ids.json beside it; one
    UserError naming the file when a file is missing, damaged, or the two files do not belong together."""
    table, ids_path = _table_paths(path)
    for f, what in ((table, "the item embedding table"), (ids_path, "its item-id map")):
        if not f.is_file():
            raise UserError(f"{f}: missing ({what}); expected {TABLE_FILE} and {IDS_FILE} as written by `prefrec "
                            f"baseline sasrec --out ...` (or another sequential baseline)")
    emb, meta = _read_tensor(table)
    doc = io.json_value(ids_path.read_text(encoding="utf-8"), str(ids_path), dict,
                        "{where}: not valid JSON ({msg} at line {line}, column {col})",
                        "{where}: a JSON {type}, expected an object")
    ids = doc.get("ids")
    if doc.get("format") != FORMAT or not isinstance(ids, dict):
        raise UserError(f"{ids_path}: expected format {FORMAT!r} with an 'ids' mapping (item key -> row)")
    rows = sorted(ids.values()) if all(isinstance(v, int) and not isinstance(v, bool) for v in ids.values()) else None
    if rows != list(range(emb.shape[0])):
        raise UserError(f"{ids_path}: maps {len(ids)} item(s) to rows, but {table} has {emb.shape[0]} rows; expected "
                        f"each row 0..{emb.shape[0] - 1} exactly once (the two files are from different runs)")
    for key in ("dataset", "items_tsv_sha256"):
        if (meta.get(key) or None) != (doc.get(key) or None):
            raise UserError(f"{ids_path}: {key} is {doc.get(key)!r} but {table} says {meta.get(key)!r}; the map and "
                            f"the table are from different datasets")
    return ItemTable(emb, {str(k): v for k, v in ids.items()}, dict(doc.get("titles") or {}), str(doc["dataset"]),
                     doc.get("items_tsv_sha256"), str(doc.get("model") or ""), table.parent, sha256_file(table),
                     sha256_file(ids_path))


def check_table_for_data(table: ItemTable, data_dir: Path, samples: list) -> dict:
    """UserError unless the table was learnt on this prepared folder (its stats.json dataset and items.tsv
    fingerprint); returns its coverage of the samples' items (share of history and candidate items in the map)."""
    where = table.folder / IDS_FILE if table.folder else IDS_FILE
    items_tsv = data_dir / "items.tsv"
    if not items_tsv.is_file():
        raise UserError(f"{data_dir}: no items.tsv, so {where} cannot be checked against the data; item tokens need "
                        f"samples prepared from a log (`prefrec data prepare`)")
    stats = io.json_value((data_dir / "stats.json").read_text(encoding="utf-8"), str(data_dir / "stats.json"), dict,
                          "{where}: not valid JSON ({msg} at line {line}, column {col})",
                          "{where}: a JSON {type}, expected an object") if (data_dir / "stats.json").is_file() else {}
    have = (str(stats.get("dataset") or data_dir.name), sha256_file(items_tsv))
    if (table.dataset, table.items_sha256) != have:
        raise UserError(f"{where}: the item table was learnt on dataset {table.dataset!r} (items.tsv sha256 "
                        f"{str(table.items_sha256)[:12]}…), but the training data {data_dir} is {have[0]!r} "
                        f"(items.tsv sha256 {have[1][:12]}…); use the table of a baseline run on {data_dir}")
    keys = [k for s in samples for k in list(s.history_items) + list(s.candidate_items)]
    known = sum(k in table.ids for k in keys)
    if keys and not known:
        raise UserError(f"{where}: none of the {len(keys)} item ids of the training samples is in the map")
    if not keys:
        raise UserError(f"{data_dir}: the samples carry no history_items/candidate_items, so no item has a soft "
                        f"token; item tokens need samples prepared from a log")
    return {"item_coverage": round(known / len(keys), 4)}


# ---------------------------------------------------------------------------------------------------------------
# The projector and the module the model carries

class Projector(nn.Sequential):
    """LLaRA's projector: Linear(d_in, hidden) -> GELU -> Linear(hidden, d_out)."""

    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


class ItemTokens(nn.Module):
    """The frozen table (a non-persistent buffer: it moves with .to(device), takes no gradient and is in no state
    dict) and the trainable projector. forward(rows (S,)) -> soft tokens (S, d_model)."""

    def __init__(self, table: ItemTable, d_model: int, hidden: int):
        super().__init__()
        self.register_buffer("table", table.embeddings.clone(), persistent=False)
        self.projector = Projector(table.embeddings.shape[1], hidden, d_model)
        self.source = table
        self.ids = table.ids
        self.hidden = hidden
        self.coverage: dict = {}  # share of the training samples' items in the map (for_training)

    def forward(self, rows: Tensor) -> Tensor:
        return self.projector(self.table[rows])

    def describe(self) -> dict:
        """What run.json and the model card say about the item tokens."""
        t = self.source
        return {"embeddings": str(t.folder), "model": t.model, "dataset": t.dataset, "rows": int(self.table.shape[0]),
                "dim": int(self.table.shape[1]), "projector_hidden": self.hidden,
                "d_model": int(self.projector[2].out_features), "table_sha256": t.table_sha256,
                "ids_sha256": t.ids_sha256, "projector_parameters": sum(p.numel() for p in self.projector.parameters())}


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def attach(model, items: ItemTokens) -> None:
    """Give `model` (a transformers model or a PEFT model around one) its item tokens, on its embedding's device."""
    base = _base(model)
    setattr(base, ATTR, items.to(base.get_input_embeddings().weight.device))


def attached(model) -> ItemTokens | None:
    """The item tokens `model` carries, or None (a text-only model)."""
    return getattr(_base(model), ATTR, None)


def detach(model) -> ItemTokens | None:
    """Remove and return the model's item tokens (a merged model saved for transformers must not hold them)."""
    items = attached(model)
    if items is not None:
        delattr(_base(model), ATTR)
    return items


def item_ids(model) -> dict[str, int] | None:
    """item key -> row of the model's table, or None: what the encoders take to mark a prompt."""
    items = attached(model)
    return None if items is None else items.ids


# ---------------------------------------------------------------------------------------------------------------
# Projector files

def save_projector(folder: str | Path, items: ItemTokens, state: dict | None = None) -> None:
    """FOLDER/projector.safetensors: `state` (gathered by projector_state), else the module's own weights."""
    from safetensors.torch import save_file

    state = state if state is not None else items.projector.state_dict()
    meta = {"format": FORMAT, "d_in": str(items.table.shape[1]), "hidden": str(items.hidden),
            "d_out": str(items.projector[2].out_features), "table_sha256": items.source.table_sha256 or "",
            "ids_sha256": items.source.ids_sha256 or "", "dataset": items.source.dataset}
    with io.atomic_path(Path(folder) / PROJECTOR_FILE) as tmp:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in state.items()}, str(tmp), metadata=meta)


def _read_projector(path: Path) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise UserError(f"{path}: missing (the item-token projector trained with this adapter)")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}  # noqa: SIM118
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: not a complete safetensors file ({e})") from None


def load_projector(items: ItemTokens, folder: str | Path) -> None:
    """Load FOLDER/projector.safetensors into `items`; UserError when it was trained with another table or has
    another shape."""
    path = Path(folder) / PROJECTOR_FILE
    state, meta = _read_projector(path)
    _check_projector_meta(meta, items.source, path)
    try:
        items.projector.load_state_dict({k: v.to(items.table.device) for k, v in state.items()})
    except RuntimeError as e:
        raise UserError(f"{path}: does not fit a projector of hidden size {items.hidden} ({str(e)[:200]})") from None


def _check_projector_meta(meta: dict, table: ItemTable, path: Path) -> None:
    got = (meta.get("table_sha256"), meta.get("ids_sha256"))
    if got != (table.table_sha256, table.ids_sha256):
        raise UserError(f"{path}: was trained with another item table (its metadata names {TABLE_FILE} sha256 "
                        f"{str(got[0])[:12]}…, {IDS_FILE} {str(got[1])[:12]}…; {table.folder} holds "
                        f"{str(table.table_sha256)[:12]}…, {str(table.ids_sha256)[:12]}…): the table beside the run "
                        f"is missing, damaged or replaced")


def projector_state(acc, prepared) -> dict | None:
    """The projector's weights, gathered whole like the adapter's (runfolder.adapter_state); None on processes other
    than the main one, and for a text-only model."""
    if attached(acc.unwrap_model(prepared).lm) is None:
        return None
    full = acc.get_state_dict(prepared)
    if not acc.is_main_process:
        return None
    mark = f"{ATTR}.projector."
    return {k.split(mark, 1)[1]: v for k, v in full.items() if mark in k}


# ---------------------------------------------------------------------------------------------------------------
# Training and run folders

def for_training(lm, items_cfg, data_dir: Path, samples: list, where: str) -> ItemTokens | None:
    """Attach the run's item tokens to the policy and make the projector trainable: the starting model's own (an SFT
    run trained with items, its projector as SFT left it), else a fresh projector over `items_cfg.embeddings`. The
    table must belong to the training data. None for a text-only run."""
    current = attached(lm)
    if items_cfg is None:
        if current is not None:
            raise UserError(f"{where}: model.name is a run trained with item tokens; give the config the same "
                            f"`items:` section (embeddings: {current.source.folder})")
        return None
    table = read_table(items_cfg.embeddings)
    coverage = check_table_for_data(table, data_dir, samples)
    if current is not None:
        if (current.source.table_sha256, current.source.ids_sha256) != (table.table_sha256, table.ids_sha256) \
                or current.hidden != items_cfg.projector_hidden:
            raise UserError(f"{where}: items.embeddings {items_cfg.embeddings} (projector_hidden "
                            f"{items_cfg.projector_hidden}) is not the table and projector the starting run "
                            f"{current.source.folder} was trained with (hidden {current.hidden})")
        items, items.source = current, table  # the same files: run.json names the configured folder
    else:
        d_model = _base(lm).get_input_embeddings().weight.shape[1]
        items = ItemTokens(table, d_model, items_cfg.projector_hidden)
        attach(lm, items)
    items.coverage = coverage
    items.projector.requires_grad_(True)
    return items


def write_run_items(run: Path, items: ItemTokens) -> None:
    """Copies of the frozen table and its map in RUN/ (a run stays usable when the baseline folder is gone)."""
    src = items.source
    for name in (TABLE_FILE, IDS_FILE):
        if src.folder is None or (src.folder / name).resolve() != (run / name).resolve():
            with io.atomic_path(run / name) as tmp:
                shutil.copyfile(src.folder / name, tmp)


def attach_run_items(model, run: str | Path, adapter: str | Path | None = None) -> ItemTokens | None:
    """Attach a run's item tokens (its table copies and the projector in its adapter folder) to a loaded model;
    nothing for a text-only run. UserError, naming the file, for a missing or mismatched table or map."""
    run = Path(run)
    adapter = Path(adapter) if adapter is not None else run / "adapter"
    path = adapter / PROJECTOR_FILE
    if not path.is_file():
        return None
    table = read_table(run)
    state, meta = _read_projector(path)
    _check_projector_meta(meta, table, path)
    items = ItemTokens(table, int(meta["d_out"]), int(meta["hidden"]))
    items.projector.load_state_dict(state)
    attach(model, items)
    return items


# ---------------------------------------------------------------------------------------------------------------
# Export: the merged model cannot hold the projector, so it travels beside it

LOADER = '''"""Collaborative item tokens of a prefrec export (LLaRA-style): load them and build `inputs_embeds`.

Needs torch and safetensors only. The model was trained with one placeholder token right after every item title in
the prompt (history and candidates); the placeholder's embedding is replaced by projector(table[row]), where row is
the item's row in item_ids.json ("ids": item key -> row, "titles": item key -> title).

    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(EXPORT)
    tokens = load_item_tokens(EXPORT)
    embeds = tokens.inputs_embeds(model, input_ids, positions, rows)  # then model(inputs_embeds=embeds, ...)
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


class ItemTokenLoader:
    def __init__(self, folder):
        folder = Path(folder)
        self.table = load_file(str(folder / "item_embeddings.safetensors"))["embeddings"]
        self.ids = json.loads((folder / "item_ids.json").read_text(encoding="utf-8"))["ids"]
        state = load_file(str(folder / "projector.safetensors"))
        hidden, d_in = state["0.weight"].shape
        d_out = state["2.weight"].shape[0]
        self.projector = torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.GELU(),
                                             torch.nn.Linear(hidden, d_out))
        self.projector.load_state_dict(state)

    @torch.no_grad()
    def inputs_embeds(self, model, input_ids, positions, rows):
        """input_ids (B, L); positions: (batch index, position) of each placeholder; rows: its item's table row."""
        embeds = model.get_input_embeddings()(input_ids)
        if len(rows):
            self.projector.to(embeds.device)
            soft = self.projector(self.table.to(embeds.device)[torch.as_tensor(rows, device=embeds.device)])
            b, p = torch.as_tensor(positions, device=embeds.device).T
            embeds[b, p] = soft.to(embeds.dtype)
        return embeds


def load_item_tokens(folder):
    return ItemTokenLoader(folder)
'''


def write_export_items(folder: Path, items: ItemTokens) -> list[str]:
    """The projector, the table, its map and the standalone loader, into an export folder; returns the names."""
    save_projector(folder, items)
    for name in (TABLE_FILE, IDS_FILE):
        shutil.copyfile(items.source.folder / name, folder / name)
    io.write_text(folder / LOADER_FILE, LOADER)
    return [PROJECTOR_FILE, TABLE_FILE, IDS_FILE, LOADER_FILE]


def export_readme(items: ItemTokens) -> str:
    """The README section of an export that carries item tokens: what else the model needs."""
    d = items.describe()
    what = (f"This model was trained with LLaRA-style item tokens: a {d['model'] or 'sequential'} recommender's "
            f"item embedding ({d['rows']} items x {d['dim']}, dataset `{d['dataset']}`) mapped by an MLP projector "
            f"(Linear {d['dim']} -> {d['projector_hidden']}, GELU, Linear -> {d['d_model']}) into one token right "
            "after each item title of the prompt, history and candidates alike. The merged weights cannot hold the "
            f"projector, so it is beside them: `{PROJECTOR_FILE}`, `{TABLE_FILE}`, `{IDS_FILE}` (item key -> row, "
            f"and titles), and `{LOADER_FILE}`, a loader that needs torch and safetensors only. Without them the "
            "model gets text-only prompts, unlike the hybrid prompts it was trained on.")
    how = ("Each placeholder is one token (any id: its embedding is replaced) right after the title's closing quote; "
           "prefrec builds the prompts this way (`prefrec.scoring.soft`), and `prefrec.model.load_model(RUN)` of "
           "the run folder attaches everything by itself.")
    return "\n".join(["", "## Collaborative item tokens (what else this model needs)", "", what, "",
                      "```python", f"from item_tokens import load_item_tokens  # {LOADER_FILE} in this folder",
                      "tokens = load_item_tokens(\"PATH\")",
                      "embeds = tokens.inputs_embeds(model, input_ids, positions, rows)",
                      "out = model(inputs_embeds=embeds, attention_mask=attention_mask)", "```", "", how, ""])
