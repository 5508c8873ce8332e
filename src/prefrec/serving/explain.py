"""Why did the model prefer this answer? Per-token conditional probabilities of each candidate (DMPO paper §6.4).

The DMPO case study feeds a user's history and the positive and negative candidates to the model and reads off the
conditional probability of every token of every candidate,

    p_t = π(y_t | x, y_<t) = exp(logp_t),        logp(y|x) = Σ_t logp_t,        Π_t p_t = exp(logp(y|x)),

(Figure 8: one example, SFT vs SFT+DMPO), and averages them over the test set (Figure 7: mean conditional probability
of positive vs negative candidates and their gap). This module produces both:

    explain_sample(model, tokenizer, sample)      -> per-token probabilities of each response of one sample (dict)
    write_explanation(explanations, out_dir)      -> explanation.html (tokens coloured by p), explanation.png, .json
    compare_models(["sft=runs/sft", ...], file)   -> Figure-7 table: conditional_probs.{json,md,png}

What counts as a candidate: each comparison's chosen response (positive) against its rejected ones (negatives). For
the pairwise task these are the two orderings "pos, neg" / "neg, pos"; for the yes/no task "Yes." / "No."; for the
candidates task the explanation scores the target against every other title shown in the prompt (Sample.candidates),
and the Figure-7 table uses the sample's chosen/rejected titles. Responses are scored exactly as in training and
evaluation (prefrec.scoring.packing: chat template, end-of-turn token appended, one packed forward). The per-token tables show
every scored token, the end-of-turn token included (so their product is the response probability); the Figure-7
means use the text tokens only: the end-of-turn token belongs to no candidate's text (the paper's case study shows
title tokens), and its probability says whether the model would stop there, not which item it prefers.

Titles are untrusted text: every string that reaches the HTML page goes through html.escape.
"""

from __future__ import annotations

import html
import math
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from prefrec import io
from prefrec.data.prepared import read_split
from prefrec.errors import UserError
from prefrec.items import item_ids
from prefrec.model import load_model
from prefrec.provenance import provenance
from prefrec.scoring.budget import check_tokens, token_budget
from prefrec.scoring.encoding import encode_sample, encode_texts, end_of_turn_id
from prefrec.scoring.packing import response_logps, score_trees
from prefrec.scoring.soft import mark_sample, split_marked
from prefrec.tasks import task as task_row

# ---------------------------------------------------------------------------------------------------------------------
# Scoring


def _responses_of(sample) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """(questions, responses, is_positive) for the sample's comparisons, as its task's row says (candidates: every
    shown candidate's answer)."""
    return task_row(sample.task).responses(sample)


def token_pieces(tokenizer, ids: Sequence[int]) -> list[str]:
    """The text each token adds, by incremental decoding (so a multi-byte character split over two tokens shows up
    whole at the token that completes it rather than as two replacement characters)."""
    pieces, prev = [], ""
    for i in range(len(ids)):
        cur = tokenizer.decode(list(ids[: i + 1]), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if cur.endswith("\ufffd") and i + 1 < len(ids):
            pieces.append("")  # incomplete character: shown with the next token
            continue
        pieces.append(cur[len(prev):] if cur.startswith(prev) else tokenizer.decode([ids[i]]))
        prev = cur
    return pieces


def special_ids(tokenizer) -> set[int]:
    """Ids shown as special and left out of text-token means: the tokenizer's special tokens and the end-of-turn
    token (Gemma's `<end_of_turn>` is a special added token that `all_special_ids` does not list)."""
    eot = end_of_turn_id(tokenizer)
    return set(tokenizer.all_special_ids) | ({eot} if eot is not None else set())


def explain_sample(model, tokenizer, sample, *, label: str = "model") -> dict:
    """Per-token conditional probabilities of every response of `sample`, from one packed forward.

    Returns {"model", "sample_id", "task", "history", "groups": [{"question", "responses": [{"text", "positive",
    "logp", "mean_p", "tokens": [{"piece", "id", "logp", "p", "special"}]}]}]}; responses keep the sample's order
    (positive first)."""
    import torch


    questions, responses, positive = _responses_of(sample)
    item_map = item_ids(model)
    marked = mark_sample(sample, item_map, questions) if item_map is not None else None
    if marked is None:
        tree = encode_texts(tokenizer, sample.prefix, questions, responses)
    else:  # a model trained with item tokens: its prompt has them, shown as labelled cells
        tree = encode_texts(tokenizer, marked.prefix, marked.questions, responses, marked=True)
    check_tokens(tree.n_tokens(), token_budget(model), f"sample {sample.id}")  # before the L×L mask is built
    with torch.inference_mode():
        scores = response_logps(model, [tree], per_token=True)
    special = special_ids(tokenizer)
    groups = [{"question": q, "responses": []} for q in questions]
    if marked is not None:
        for g, q in zip(groups, marked.questions):
            g["question_cells"] = prompt_cells(q, item_map)
    for n, (_, b, r) in enumerate(scores.index):
        ids = list(tree.branches[b].responses[r])
        logps = scores.token_logps[n].detach().double().cpu().tolist()
        if len(logps) != len(ids):
            raise RuntimeError(f"packing returned {len(logps)} token log-probs for a {len(ids)}-token response")
        toks = [{"piece": piece, "id": int(i), "logp": lp, "p": math.exp(lp), "special": int(i) in special}
                for piece, i, lp in zip(token_pieces(tokenizer, ids), ids, logps)]
        text_p = [t["p"] for t in toks if not t["special"]]
        groups[b]["responses"].append({
            "text": responses[b][r], "positive": positive[b][r], "logp": float(scores.summed[n]),
            "mean_p": float(np.mean(text_p)) if text_p else None, "tokens": toks})
    out = {"model": label, "sample_id": sample.id, "task": sample.task, "domain": sample.domain,
           "history": list(sample.history), "groups": groups}
    if marked is not None:
        out["prefix_cells"] = prompt_cells(marked.prefix, item_map)
        out["item_tokens"] = {"n": marked.n_soft, "text_only": marked.fallback}
    return out


def prompt_cells(marked_text: str, ids: dict[str, int]) -> list[dict]:
    """A marked prompt text (prefrec.scoring.soft) as cells: {"text": ...} pieces and {"item": key, "row": row} for
    each item token (one position of the prompt, shown as one labelled cell)."""
    key_of = {row: key for key, row in ids.items()}
    return [{"item": key_of.get(p, "?"), "row": p} if isinstance(p, int) else {"text": p}
            for p in split_marked(marked_text) if p != ""]


# ---------------------------------------------------------------------------------------------------------------------
# Rendering: one colour scale for the HTML page and the PNG


_CMAP = "RdYlGn"  # red = improbable, green = probable; readable by most colour-blind viewers with the printed numbers


def _rgb(p: float) -> tuple[int, int, int]:
    from matplotlib import colormaps

    r, g, b, _ = colormaps[_CMAP](0.0 if not math.isfinite(p) else min(max(p, 0.0), 1.0))
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _ink(rgb: tuple[int, int, int]) -> str:
    lum = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]
    return "#111" if lum > 110 else "#fff"


def _show(piece: str, special: bool) -> str:
    """Visible form of a token piece: spaces as '·' at the edges would be lost in HTML, newlines as '⏎'."""
    if special:
        return "⟨end⟩"
    if piece == "":
        return "…"
    return piece.replace("\n", "⏎")


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:24px;color:#222;
background:#fafafa;max-width:1400px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;font-size:13px;margin-bottom:12px}
.legend{display:flex;align-items:center;gap:8px;font-size:13px;margin:8px 0 16px}
.bar{width:260px;height:14px;border-radius:3px;border:1px solid #bbb}
.q{font-size:13px;color:#444;background:#fff;border-left:3px solid #999;padding:6px 10px;margin:10px 0;
white-space:pre-wrap}
.verdict{font-size:13px;margin:0 0 8px}.ok{color:#1a7f37;font-weight:600}.bad{color:#b42318;font-weight:600}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:14px}
.col h3{font-size:14px;margin:4px 0 6px}.pos h3{color:#1a7f37}.neg h3{color:#b42318}
.resp{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:8px 10px;margin-bottom:8px}
.toks{display:flex;flex-wrap:wrap;gap:2px;font-family:'DejaVu Sans Mono',Menlo,Consolas,monospace;font-size:14px}
.t{display:inline-flex;flex-direction:column;align-items:center;padding:2px 3px;border-radius:3px;min-width:14px}
.t .w{white-space:pre}.t .p{font-size:10px;opacity:.85}
.stats{font-size:12px;color:#555;margin-top:6px}
.sp .w{font-size:11px}
.soft{display:inline-block;font-size:10px;background:#334;color:#fff;border-radius:3px;padding:0 4px;margin:0 2px}
.hist{font-size:12px;line-height:1.45;background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:6px 10px;
margin:6px 0 12px;color:#333}.hist b{color:#555;font-weight:600}
"""


def _response_html(resp: dict) -> str:
    spans = []
    for t in resp["tokens"]:
        rgb = _rgb(t["p"])
        spans.append(f'<span class="t{" sp" if t["special"] else ""}" '
                     f'style="background:rgb{rgb};color:{_ink(rgb)}" '
                     f'title="p = {t["p"]:.4f} · log p = {t["logp"]:.3f}">'
                     f'<span class="w">{html.escape(_show(t["piece"], t["special"]))}</span>'
                     f'<span class="p">{t["p"]:.2f}</span></span>')
    return (f'<div class="resp"><div class="toks">{"".join(spans)}</div>'
            f'<div class="stats">log p = {resp["logp"]:.3f} · mean text-token p = {resp["mean_p"] or 0:.3f} · '
            f'{len(resp["tokens"])} tokens</div></div>')


def _cells_html(cells: list[dict]) -> str:
    """Prompt text with each item token as one labelled cell."""
    return "".join(html.escape(c["text"]) if "text" in c else
                   f"<span class='soft' title='collaborative item token: row {c['row']} of the item table'>"
                   f"item {html.escape(str(c['item']))}</span>" for c in cells)


def render_html(explanations: list[dict]) -> str:
    """One self-contained page (inline CSS, no scripts): a section per model, positives beside negatives."""
    from matplotlib import colormaps  # noqa: F401  (fail early if matplotlib is missing)

    first = explanations[0]
    stops = ", ".join(f"rgb{_rgb(x / 10)} {x * 10}%" for x in range(11))
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>prefrec explanation: {html.escape(str(first['sample_id']))}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Token-level conditional probabilities</h1>",
        f"<div class='meta'>sample <b>{html.escape(str(first['sample_id']))}</b> · task "
        f"{html.escape(first['task'])} · domain {html.escape(first['domain'])} · models: "
        f"{html.escape(', '.join(e['model'] for e in explanations))}. Each token of each candidate answer is "
        "coloured by π(token | prompt, previous tokens); hover for the exact value.</div>",
        f"<div class='legend'><span>p = 0</span><div class='bar' style='background:linear-gradient(to right,{stops})'>"
        "</div><span>p = 1</span><span style='margin-left:12px'>⟨end⟩ = end-of-turn token</span></div>",
    ]
    if first["history"]:
        items = " · ".join(html.escape(h) for h in first["history"])
        parts.append(f"<div class='hist'><b>user history ({len(first['history'])} titles, oldest first):</b> "
                     f"{items}</div>")
    if first.get("prefix_cells"):
        n = first["item_tokens"]
        parts.append(f"<div class='q'><b>prompt, with {n['n']} collaborative item tokens</b> (each "
                     f"<span class='soft'>item</span> is one position: the projected item embedding)"
                     + (f"; as text only: {html.escape(', '.join(n['text_only']))}" if n["text_only"] else "")
                     + f"<br>{_cells_html(first['prefix_cells'])}</div>")
    for e in explanations:
        parts.append(f"<h2>{html.escape(e['model'])}</h2>")
        for g in e["groups"]:
            if g.get("question_cells"):
                parts.append(f"<div class='q'>{_cells_html(g['question_cells'])}</div>")
            elif g["question"].strip():
                parts.append(f"<div class='q'>{html.escape(g['question'].strip())}</div>")
            pos = [r for r in g["responses"] if r["positive"]]
            neg = sorted((r for r in g["responses"] if not r["positive"]), key=lambda r: -r["logp"])
            if pos and neg:
                rank = 1 + sum(r["logp"] > pos[0]["logp"] for r in neg)
                margin = pos[0]["logp"] - neg[0]["logp"]
                ok = rank == 1
                said = "✓ prefers the positive" if ok else "✗ prefers a negative"
                verdict = (f"<span class='{'ok' if ok else 'bad'}'>{said}</span> · log p margin over the best "
                           f"negative {margin:+.3f}"
                           + (f" · positive ranked {rank} of {len(neg) + 1}" if len(neg) > 1 else ""))
                parts.append(f"<div class='verdict'>{verdict}</div>")
            parts.append("<div class='cols'>")
            parts.append("<div class='col pos'><h3>positive (chosen)</h3>"
                         + "".join(_response_html(r) for r in pos) + "</div>")
            parts.append("<div class='col neg'><h3>negative (rejected)</h3>"
                         + "".join(_response_html(r) for r in neg) + "</div>")
            parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_heatmap(explanations: list[dict], path: str | os.PathLike, max_rows: int = 24) -> None:
    """PNG heatmap: one panel per model, a row per response (+ positive, − negative), a cell per token with its
    text and probability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import colormaps

    panels = []
    for e in explanations:
        rows = []
        for gi, g in enumerate(e["groups"]):
            for r in g["responses"]:
                tag = "+" if r["positive"] else "−"
                name = r["text"] if len(r["text"]) <= 38 else r["text"][:36] + "…"
                prefix = f"Q{gi + 1} " if len(e["groups"]) > 1 else ""
                rows.append((f"{prefix}{tag} {name}", r["tokens"]))
        panels.append((e["model"], rows[:max_rows]))
    width = max(len(toks) for _, rows in panels for _, toks in rows)
    n_rows = sum(len(rows) for _, rows in panels)
    fig_w = min(4.0 + 0.62 * width, 40)
    fig_h = 1.0 + 0.38 * n_rows + 0.6 * len(panels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(fig_w, fig_h), squeeze=False,
                             gridspec_kw={"height_ratios": [max(len(r), 1) for _, r in panels]})
    cmap = colormaps[_CMAP]
    for ax, (title, rows) in zip(axes[:, 0], panels):
        grid = np.full((len(rows), width), np.nan)
        for i, (_, toks) in enumerate(rows):
            grid[i, : len(toks)] = [t["p"] for t in toks]
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, aspect="auto")
        for i, (_, toks) in enumerate(rows):
            for j, t in enumerate(toks):
                rgb = _rgb(t["p"])
                piece = _show(t["piece"], t["special"]).strip() or "␣"
                piece = piece if len(piece) <= 8 else piece[:7] + "…"
                ax.text(j, i, f"{piece}\n{t['p']:.2f}", ha="center", va="center", fontsize=6.5, color=_ink(rgb))
        ax.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=8)
        ax.set_xticks(range(width), [str(j + 1) for j in range(width)], fontsize=7)
        ax.set_xlabel("token position in the answer", fontsize=8)
        ax.set_title(f"{title}: conditional probability of each answer token", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01, label="p")
    fig.tight_layout()
    io.write_figure(fig, path, dpi=150)
    plt.close(fig)


def write_explanation(explanations: list[dict], out_dir: str | os.PathLike, stem: str = "explanation") -> dict:
    """Write OUT/{stem}.html, OUT/{stem}.png and OUT/{stem}.json (with provenance); returns the paths."""
    out = Path(out_dir)
    paths = {"html": out / f"{stem}.html", "png": out / f"{stem}.png", "json": out / f"{stem}.json"}
    io.write_text(paths["html"], render_html(explanations))
    render_heatmap(explanations, paths["png"])
    io.write_json(paths["json"], {"kind": "explanation", "explanations": explanations, **provenance()},
                  allow_nan=False)
    return {k: str(v) for k, v in paths.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Loading models and samples for the CLI

_LABEL = re.compile(r"^[\w+ .-]{1,40}$")


def parse_model_spec(spec: str) -> tuple[str, str]:
    """'sft+dmpo=runs/dmpo' -> ('sft+dmpo', 'runs/dmpo'); a bare name is its own label. A spec that exists as a path
    is always a bare name (paths may contain '=')."""
    if "=" in spec and not Path(spec).exists():
        label, name = spec.split("=", 1)
        if _LABEL.match(label) and name:
            return label, name
    return spec, spec


def read_test_samples(samples_file: str | os.PathLike, limit: int | None = None) -> list:
    path = Path(samples_file)
    if not (path.is_file() or (path / "test.jsonl").is_file()):
        raise UserError(f"--samples {samples_file}: no such file (expected a samples .jsonl or a prepared folder "
                        "with test.jsonl)")
    samples = read_split(path)
    if not samples:
        raise UserError(f"{path}: contains no samples")
    return samples[:limit] if limit else samples


def explain_file(models: Sequence[str], samples_file: str | os.PathLike, out_dir: str | os.PathLike, *,
                 index: int = 0, sample_id: str | None = None, dtype: str | None = None) -> dict:
    """`prefrec explain`: explain one sample (by position or id) under one or more models; write HTML/PNG/JSON."""
    samples = read_test_samples(samples_file)
    if sample_id is not None:
        found = [s for s in samples if s.id == sample_id]
        if not found:
            raise UserError(f"{samples_file}: no sample with id {sample_id!r}")
        sample = found[0]
    else:
        if not -len(samples) <= index < len(samples):
            raise UserError(f"--index {index}: {samples_file} has {len(samples)} samples (0..{len(samples) - 1})")
        sample = samples[index]
    explanations = []
    for spec in models:
        label, name = parse_model_spec(spec)
        model, tokenizer = load_model(name, dtype=dtype)
        explanations.append(explain_sample(model, tokenizer, sample, label=label))
        del model
    return write_explanation(explanations, out_dir, stem=f"explanation-{_safe(sample.id)}")


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", str(name))[:80] or "sample"


# ---------------------------------------------------------------------------------------------------------------------
# Figure 7: mean conditional probability of positive vs negative candidates, several models side by side


def sample_mean_probs(model, tokenizer, samples: list, *, max_tokens_per_batch: int = 4096,
                      progress: bool = True) -> dict:
    """Per sample: mean text-token probability of its positive responses and of its negative responses.

    For a response y with text tokens t = 1..T (end-of-turn excluded), m(y) = (1/T) Σ_t exp(logp_t). Per sample,
    pos = mean of m over the chosen responses, neg = mean of m over the rejected ones (encode_sample keeps each
    comparison's responses as [chosen, *rejected]). Returns arrays (N,) "pos", "neg" in float64."""
    special = special_ids(tokenizer)
    trees = [encode_sample(tokenizer, s, which="all", items=item_ids(model)) for s in samples]
    scores = score_trees(model, trees, per_token=True, max_tokens_per_batch=max_tokens_per_batch,
                         progress=progress, desc="conditional probabilities")
    acc = [([], []) for _ in samples]
    for (t, b, r), lps in zip(scores.index, scores.token_logps):
        ids = trees[t].branches[b].responses[r]
        probs = [math.exp(lp) for i, lp in zip(ids, lps.double().tolist()) if i not in special]
        acc[t][0 if r == 0 else 1].append(float(np.mean(probs)) if probs else float("nan"))
    return {"pos": np.array([np.mean(p) for p, _ in acc]), "neg": np.array([np.mean(q) for _, q in acc])}


def summarize_probs(pos: np.ndarray, neg: np.ndarray) -> dict:
    """Dataset means, the gap pos − neg, its standard error over samples, and how often pos > neg."""
    gap = pos - neg
    n = len(gap)
    return {"positive": float(pos.mean()), "negative": float(neg.mean()), "gap": float(gap.mean()),
            "gap_se": float(gap.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
            "pos_gt_neg": float((gap > 0).mean()), "n": n}


def compare_models(models: list[str], samples_file: str | os.PathLike, out_dir: str | os.PathLike, *,
                   limit: int | None = 200, dtype: str | None = None, max_tokens_per_batch: int = 4096,
                   loaded: dict | None = None) -> dict:
    """The DMPO paper's Figure 7 for several models: writes OUT/conditional_probs.{json,md,png}.

    `models` are load_model names, optionally labelled ("sft=runs/sft"). `loaded` maps a label to an already-loaded
    (model, tokenizer) pair (tests)."""
    samples = read_test_samples(samples_file, limit)
    rows = []
    for spec in models:
        label, name = parse_model_spec(spec)
        if loaded and label in loaded:
            model, tokenizer = loaded[label]
        else:
            model, tokenizer = load_model(name, dtype=dtype)
        probs = sample_mean_probs(model, tokenizer, samples, max_tokens_per_batch=max_tokens_per_batch)
        rows.append({"label": label, "model": name, **summarize_probs(probs["pos"], probs["neg"])})
        del model
    out = Path(out_dir)
    result = {"kind": "conditional_probs", "samples": str(samples_file), "n_samples": len(samples),
              "task": samples[0].task, "definition": "mean over samples of the mean text-token conditional "
              "probability exp(logp_t) of the chosen (positive) and of the rejected (negative) responses; "
              "gap = positive - negative", "models": rows, **provenance()}
    paths = {"json": out / "conditional_probs.json", "md": out / "conditional_probs.md",
             "png": out / "conditional_probs.png"}
    io.write_json(paths["json"], result, allow_nan=False)
    io.write_text(paths["md"], _probs_markdown(result))
    _probs_chart(rows, paths["png"], title=f"{Path(samples_file).name}: {len(samples)} samples ({samples[0].task})")
    return {k: str(v) for k, v in paths.items()}


def _probs_markdown(result: dict) -> str:
    lines = [f"Mean conditional probability of candidate tokens ({result['n_samples']} samples of "
             f"`{result['samples']}`, task {result['task']}).", "",
             "| model | positive (%) | negative (%) | gap (pp) | ± s.e. | samples with pos > neg |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in result["models"]:
        se = f"{100 * r['gap_se']:.2f}" if r["gap_se"] is not None else "–"
        lines.append(f"| {r['label']} | {100 * r['positive']:.2f} | {100 * r['negative']:.2f} | "
                     f"{100 * r['gap']:+.2f} | {se} | {100 * r['pos_gt_neg']:.1f} % |")
    lines += ["", "Per response: mean over its text tokens of π(token | prompt, previous tokens) (end-of-turn token "
              "excluded); per sample: mean over its chosen (positive) and rejected (negative) responses; "
              "gap in percentage points, standard error over samples. DMPO paper, Figure 7.", ""]
    return "\n".join(lines)


def _probs_chart(rows: list[dict], path: Path, title: str) -> None:
    """Left: mean probability of positive vs negative per model (y axis zoomed: the differences are points, the
    levels near 80-90 %); right: the gap with ±1 standard error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    pos = np.array([100 * r["positive"] for r in rows])
    neg = np.array([100 * r["negative"] for r in rows])
    gap = np.array([100 * r["gap"] for r in rows])
    se = np.array([100 * (r["gap_se"] or 0.0) for r in rows])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(max(7.5, 2.6 * len(rows) + 3), 3.8),
                                 gridspec_kw={"width_ratios": [3, 2]})
    ax.bar(x - 0.18, pos, 0.36, label="positive", color="#2e8b57")
    ax.bar(x + 0.18, neg, 0.36, label="negative", color="#c0392b")
    lo, hi = float(min(pos.min(), neg.min())), float(max(pos.max(), neg.max()))
    pad = max(1.0, 0.25 * (hi - lo))
    ax.set_ylim(max(0.0, lo - pad), min(100.0, hi + pad))
    for i in range(len(rows)):
        ax.annotate(f"{pos[i]:.1f}", (i - 0.18, pos[i]), textcoords="offset points", xytext=(0, 2), ha="center",
                    fontsize=7)
        ax.annotate(f"{neg[i]:.1f}", (i + 0.18, neg[i]), textcoords="offset points", xytext=(0, 2), ha="center",
                    fontsize=7)
    ax.set_xticks(x, [r["label"] for r in rows])
    ax.set_ylabel("mean conditional probability (%)")
    ax.set_title("positive vs negative candidates (y axis zoomed)", fontsize=9)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    bx.bar(x, gap, 0.5, yerr=se, capsize=4, color=["#2e8b57" if g >= 0 else "#c0392b" for g in gap])
    bx.axhline(0, color="#444", lw=0.8)
    for i in range(len(rows)):
        bx.annotate(f"{gap[i]:+.2f}", (i, gap[i] + (se[i] if gap[i] >= 0 else -se[i])), textcoords="offset points",
                    xytext=(0, 3 if gap[i] >= 0 else -10), ha="center", fontsize=8)
    bx.set_xticks(x, [r["label"] for r in rows])
    bx.set_ylabel("gap positive − negative (pp)")
    bx.set_title("gap ± 1 s.e. over samples", fontsize=9)
    bx.margins(y=0.25)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    io.write_figure(fig, path, dpi=150)
    plt.close(fig)
