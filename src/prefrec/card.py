"""Model cards: RUN/README.md and RUN/adapter/README.md in the Hugging Face Hub's card format.

A card is YAML front matter (base_model, library_name, license, tags, datasets: the keys the Hub reads) and a
Markdown body, filled from what the run folder knows: run.json (base, stages, validation metrics, provenance),
config.yaml (β, k, LoRA, learning rates), the prepared data's stats.json (dataset, protocol, split sizes) and every
RUN/eval/*/results.json (test metrics). `prefrec train` writes it; `prefrec eval` of a run and `prefrec export`
write it again, so it lists the test metrics known at that time. Nothing is invented: what is unknown says so.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from prefrec import io
from prefrec.results import RESULTS, RUN_JSON, read_results

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
    from prefrec.evaluation import tasks

    prefix, question, answer = tasks.task(task).example(domain, answers)
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


def model_card(run: str | Path, *, merged: bool = False) -> str:
    """The card of a run folder (run.json and config.yaml written by `prefrec train`); `merged`: the card of its
    `prefrec export` (a full transformers model with the adapter merged in)."""
    from prefrec.model import KNOWN_MODELS, hub_reference

    run = Path(run)
    info = _read_json(run / RUN_JSON)
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) if (run / "config.yaml").is_file() \
        else {}
    stats = _data_stats(config, run)
    base_name = info.get("base_model", "unknown")
    base = hub_reference(base_name)
    known = KNOWN_MODELS.get(base_name)
    stages = info.get("stages") or [s.get("kind") for s in config.get("stages") or []]
    dataset, task = stats.get("dataset"), stats.get("task")
    front = {"base_model": base, "library_name": "transformers" if merged else "peft",
             "license": known.license if known else "other", "pipeline_tag": "text-generation",
             "tags": ["prefrec", "lora", "recommendation", *[s for s in stages if s]] + ([task] if task else []),
             **({"datasets": [dataset]} if dataset else {})}
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# {run.name}: {' → '.join(s.upper() for s in stages)} on {dataset or 'unknown data'}"
             + (f" ({task})" if task else ""), "",
             ("The base model with a LoRA adapter merged in (`prefrec export`), " if merged else "A LoRA adapter ")
             + "trained with prefrec to rank items for a user from their history, by the log-probability of each "
             "candidate answer.", "",
             "## Base model", "", f"- `{base}`" + (f" (prefrec name `{base_name}`)" if base != base_name else ""),
             f"- Licence: {known.license if known else 'see the base model'}"]
    if known:
        lines.append(f"- Note: {known.note}.")
    lines += ["", "## Data", ""]
    if stats:
        proto = stats.get("protocol") or {}
        sizes = stats.get("split_sizes") or {}
        lines += [f"- Dataset: `{dataset}`, task `{task}`, domain `{stats.get('domain')}`",
                  f"- Protocol: {proto.get('name', task)}; negatives per sample {proto.get('negatives', '?')}; "
                  f"seed {stats.get('seed')}",
                  f"- Samples: train {sizes.get('train')}, valid {sizes.get('valid')}, test {sizes.get('test')}",
                  f"- Terms: {DATA_TERMS.get(dataset, 'see the data source')}"]
    else:
        lines.append(f"- Samples from `{(config.get('data') or {}).get('dir', '?')}` (its stats.json was not found)")
    lora = config.get("lora") or {}
    lines += ["", "## Training", "", f"Method: {' then '.join(stages)}; seed {info.get('seed', config.get('seed'))}; "
              f"LoRA r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, "
              f"targets {lora.get('target_modules')}.", "", *_stage_rows(config, info), "",
              "## Prompt format", "", *_prompt_example(task or "pairwise", stats.get("domain") or "movies",
                                               (stats.get("protocol") or {}).get("answers") or "title"), "",
              "## Results", ""]
    valid = [(f"valid ({k})", v) for k, v in (info.get("final_valid") or {}).items()]
    tests = [(f"{r.get('dataset')} {r.get('task')} {r.get('split')} (n={r.get('n_samples')})", r["metrics"])
             for r in _test_results(run)]
    lines += (["Validation at the end of each stage:", "", *_metric_table(valid), ""] if valid else
              ["No validation metrics recorded.", ""])
    lines += (["Test (`prefrec eval`):", "", *_metric_table(tests)] if tests else
              ["No test metrics yet (run `prefrec eval RUN --samples DATA`; it rewrites this card)."])
    use = (["from transformers import AutoModelForCausalLM, AutoTokenizer",
            "model = AutoModelForCausalLM.from_pretrained(\"PATH\")",
            "tokenizer = AutoTokenizer.from_pretrained(\"PATH\")"]
           if merged else
           ["from peft import AutoPeftModelForCausalLM",
            "model = AutoPeftModelForCausalLM.from_pretrained(\"PATH/adapter\")  # fetches the base from the Hub",
            "# or, offline with prefrec's own copy of the base:", "from prefrec.model import load_model",
            "model, tokenizer = load_model(\"PATH\")"])
    lines += ["", "## Use", "", "```python", *use, "```", "",
              f"Provenance: prefrec commit `{info.get('git_commit')}`, versions {info.get('versions')}.", ""]
    return "\n".join(lines)


def write_card(run: str | Path) -> Path:
    """Write the card to RUN/README.md and RUN/adapter/README.md (replacing PEFT's blank template)."""
    run = Path(run)
    text = model_card(run)
    for folder in (run, run / "adapter"):
        if folder.is_dir():
            io.write_text(folder / "README.md", text)
    return run / "README.md"
