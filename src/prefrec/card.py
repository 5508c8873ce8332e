"""Model cards: RUN/README.md and RUN/adapter/README.md in the Hugging Face Hub's card format.

A card is YAML front matter (base_model, library_name, license, tags, datasets, and a `model-index` of the test
results when there are any: the keys the Hub reads), built with huggingface_hub's ModelCardData/EvalResult so the
Hub's own rules shape it, and a Markdown body, filled from what the run folder knows: run.json (base, stages, the
samples each stage really used, validation metrics, provenance), config.yaml (β, k, LoRA, learning rates), the
prepared data's stats.json (dataset, protocol, split sizes) and every RUN/eval/*/results.json (test metrics). `prefrec train` writes it; `prefrec eval` of a run and `prefrec export`
write it again, so it lists the test metrics known at that time. Nothing is invented: what is unknown says so.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from prefrec import io
from prefrec.model import KNOWN_MODELS, hub_reference
from prefrec.results import RESULTS, RUN_JSON, read_results, read_run_config
from prefrec.tasks import task as task_row

# Terms of the public rating logs prefrec reads (data/README.md of each source has the details). The Hub's
# `license` key is the model's: the base's licence; the data's terms go in the body, since they bind any use.
DATA_TERMS = {
    "ml-100k": "MovieLens 100K (GroupLens): research use; no redistribution without permission; cite Harper & "
               "Konstan 2015",
    "ml-1m": "MovieLens 1M (GroupLens): research use; no redistribution without permission; cite Harper & "
             "Konstan 2015",
    "amazon-2014": "Amazon reviews 2014 (McAuley et al.): research use",
    "amazon-2018": "Amazon reviews 2018 (Ni et al.): research use",
    "lastfm": "Last.fm HetRec 2011 (GroupLens): non-commercial research use",
    "goodreads": "Goodreads (Wan & McAuley): academic use",
}


_read_json = read_results  # any small JSON file of the run: {} when missing or unreadable


def _data_stats(config: dict, run: Path) -> dict:
    """The prepared folder's stats.json, if the run's data folder is still there."""
    d = (config.get("data") or {}).get("dir")
    if not d:
        return {}
    p = Path(d) if Path(d).is_absolute() else run / d
    return _read_json(p / "stats.json")


def _test_results(run: Path) -> list[dict]:
    return [r for r in (_read_json(p) for p in sorted((run / "eval").glob(f"*/{RESULTS}"))) if r.get("metrics")]


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _metric_table(rows: list[tuple[str, dict]]) -> list[str]:
    names = sorted({k for _, m in rows for k, v in m.items() if isinstance(v, (int, float))})
    out = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    out += [f"| {label} | " + " | ".join(_fmt(m.get(k, "")) for k in names) + " |" for label, m in rows]
    return out


def _prompt_example(task: str, domain: str, answers: str = "title") -> list[str]:
    prefix, question, answer = task_row(task).example(domain, answers)
    return ["One user turn (the base's chat template, generation prompt added), then the answer:", "", "```text",
            (prefix + question).rstrip(), "```", "", f"Answer (scored or generated): `{answer}`"]


def _stage_rows(config: dict, info: dict) -> list[str]:
    rows = ["| stage | k | β | ftx | lr | epochs | steps | global batch |", "|---|---|---|---|---|---|---|---|"]
    for st in config.get("stages") or []:
        plan = (info.get("stage_info") or {}).get(st.get("kind"), {})
        aligned = st.get("kind") != "sft"
        rows.append(f"| {st.get('kind')} | {plan.get('k', st.get('k')) if aligned else '-'} | "
                    f"{st.get('beta') if aligned else '-'} | {st.get('ftx') if aligned else '-'} | {st.get('lr')} | "
                    f"{st.get('epochs')} | {plan.get('steps', '?')} | {plan.get('global_batch', '?')} |")
    return rows


def _used_counts(info: dict, sizes: dict) -> str:
    """Samples each split contributed, as training read them (run.json stage_info: data.max_train_samples and
    max_valid_samples may take fewer than were prepared)."""
    plans = [p for p in (info.get("stage_info") or {}).values() if isinstance(p, dict) and "train_samples" in p]
    if not plans:
        return (f"train {sizes.get('train')}, valid {sizes.get('valid')} prepared (the run did not record how many "
                "it used)")
    used = {k: plans[0].get(f"{k}_samples") for k in ("train", "valid")}
    return ", ".join(f"{k} {n}" + (f" of {sizes[k]} prepared" if sizes.get(k) not in (None, n) else "")
                     for k, n in used.items())


def _eval_results(tests: list[dict]) -> list[EvalResult]:
    """The Hub's model-index entries: one per numeric metric of each results.json."""
    return [EvalResult(task_type="text-generation", task_name=f"{r.get('task')} recommendation (prefrec)",
                       dataset_type=str(r.get("dataset")), dataset_name=str(r.get("dataset")),
                       dataset_split=r.get("split"), dataset_args={"n_samples": r.get("n_samples")},
                       metric_type=name, metric_name=name, metric_value=value)
            for r in tests for name, value in r["metrics"].items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "n"]


def _front(run: Path, info: dict, config: dict, stats: dict, merged: bool, tests: list[dict]) -> ModelCardData:
    base_name = info.get("base_model", "unknown")
    known = KNOWN_MODELS.get(base_name)
    stages = info.get("stages") or [s.get("kind") for s in config.get("stages") or []]
    dataset, task = stats.get("dataset"), stats.get("task")
    results = _eval_results(tests)
    return ModelCardData(base_model=hub_reference(base_name), library_name="transformers" if merged else "peft",
                         license=known.license if known else "other", pipeline_tag="text-generation",
                         tags=["prefrec", "lora", "recommendation", *[s for s in stages if s]] + ([task] if task else []),
                         datasets=[dataset] if dataset else None, model_name=run.name if results else None,
                         eval_results=results or None)


def _data_lines(stats: dict, info: dict, config: dict) -> list[str]:
    if not stats:
        return [f"- Samples from `{(config.get('data') or {}).get('dir', '?')}` (its stats.json was not found)"]
    proto, sizes, dataset = stats.get("protocol") or {}, stats.get("split_sizes") or {}, stats.get("dataset")
    return [f"- Dataset: `{dataset}`, task `{stats.get('task')}`, domain `{stats.get('domain')}`",
            f"- Protocol: {proto.get('name', stats.get('task'))}; negatives per sample {proto.get('negatives', '?')}; "
            f"seed {stats.get('seed')}",
            f"- Samples used in training: {_used_counts(info, sizes)}; test split: {sizes.get('test')} prepared",
            f"- Terms: {DATA_TERMS.get(dataset, 'see the data source')}"]


def _item_lines(items: dict | None) -> list[str]:
    """The hybrid-prompt section (run.json "items"): which table, the projector's size, the curriculum."""
    if not items:
        return []
    cur = items.get("curriculum")
    what = (f"A hybrid run (LLaRA-style): after each history and candidate title the prompt holds one soft token, "
            f"the item's embedding from a frozen `{items.get('model') or 'sequential'}` recommender "
            f"({items.get('rows')} items x {items.get('dim')}, dataset `{items.get('dataset')}`, table "
            f"`{items.get('embeddings')}`, sha256 `{str(items.get('table_sha256'))[:12]}…`) mapped by a projector "
            f"Linear {items.get('dim')} -> {items.get('projector_hidden')} -> GELU -> Linear -> "
            f"{items.get('d_model')} ({items.get('projector_parameters')} parameters, trained with LoRA).")
    return ["## Collaborative item tokens", "", what,
            (f"Items of the training samples in the table: {items.get('item_coverage', '?')}; curriculum: "
             + (f"text-only for the first {cur.get('text_only')} of SFT, then a hybrid share rising to 1 over "
                f"{cur.get('ramp')} of it" if cur else "none (hybrid prompts from the first step)") + "."), ""]


def _use_lines(merged: bool) -> list[str]:
    use = (["from transformers import AutoModelForCausalLM, AutoTokenizer",
            "model = AutoModelForCausalLM.from_pretrained(\"PATH\")",
            "tokenizer = AutoTokenizer.from_pretrained(\"PATH\")"]
           if merged else
           ["from peft import AutoPeftModelForCausalLM",
            "model = AutoPeftModelForCausalLM.from_pretrained(\"PATH/adapter\")  # fetches the base from the Hub",
            "# or, offline with prefrec's own copy of the base:", "from prefrec.model import load_model",
            "model, tokenizer = load_model(\"PATH\")"])
    return ["## Use", "", "```python", *use, "```"]


def model_card(run: str | Path, *, merged: bool = False) -> str:
    """The card of a run folder (run.json and config.yaml written by `prefrec train`); `merged`: the card of its
    `prefrec export` (a full transformers model with the adapter merged in)."""
    run = Path(run)
    info = _read_json(run / RUN_JSON)
    config = read_run_config(run) or {}
    stats, tests = _data_stats(config, run), _test_results(run)
    base_name = info.get("base_model", "unknown")
    base, known = hub_reference(base_name), KNOWN_MODELS.get(base_name)
    stages = info.get("stages") or [s.get("kind") for s in config.get("stages") or []]
    dataset, task = stats.get("dataset"), stats.get("task")
    lines = [f"# {run.name}: {' → '.join(s.upper() for s in stages)} on {dataset or 'unknown data'}"
             + (f" ({task})" if task else ""), "",
             ("The base model with a LoRA adapter merged in (`prefrec export`), " if merged else "A LoRA adapter ")
             + "trained with prefrec to rank items for a user from their history, by the log-probability of each "
             "candidate answer.", "",
             "## Base model", "", f"- `{base}`" + (f" (prefrec name `{base_name}`)" if base != base_name else ""),
             f"- Licence: {known.license if known else 'see the base model'}"]
    if known:
        lines.append(f"- Note: {known.note}.")
    lines += ["", "## Data", "", *_data_lines(stats, info, config)]
    lora = config.get("lora") or {}
    lines += ["", "## Training", "", f"Method: {' then '.join(stages)}; seed {info.get('seed', config.get('seed'))}; "
              f"LoRA r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, "
              f"targets {lora.get('target_modules')}"
              + (f", on the top {lora['layers']} decoder layers only." if lora.get("layers") else "."), "", *_stage_rows(config, info), "",
              *_item_lines(info.get("items")),
              "## Prompt format", "", *(_prompt_example(task, stats.get("domain") or "movies",
                                                 (stats.get("protocol") or {}).get("answers") or "title") if task
                                else ["The training data's folder records no task (no stats.json)."]), "",
              "## Results", ""]
    valid = [(f"valid ({k})", v) for k, v in (info.get("final_valid") or {}).items()]
    rows = [(f"{r.get('dataset')} {r.get('task')} {r.get('split')} (n={r.get('n_samples')})", r["metrics"])
            for r in tests]
    lines += (["Validation at the end of each stage:", "", *_metric_table(valid), ""] if valid else
              ["No validation metrics recorded.", ""])
    lines += (["Test (`prefrec eval`; also in the card's model-index):", "", *_metric_table(rows)] if rows else
              ["No test metrics yet (run `prefrec eval RUN --samples DATA`; it rewrites this card)."])
    lines += ["", *_use_lines(merged), "",
              f"Provenance: prefrec commit `{info.get('git_commit')}`, versions {info.get('versions')}.", ""]
    front = _front(run, info, config, stats, merged, tests)
    return str(ModelCard(f"---\n{front.to_yaml()}\n---\n\n" + "\n".join(lines)))


def write_card(run: str | Path) -> Path:
    """Write the card to RUN/README.md and RUN/adapter/README.md (replacing PEFT's blank template)."""
    run = Path(run)
    text = model_card(run)
    for folder in (run, run / "adapter"):
        if folder.is_dir():
            io.write_text(folder / "README.md", text)
    return run / "README.md"
