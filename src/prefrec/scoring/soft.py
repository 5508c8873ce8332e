"""Soft item tokens in prompts (LLaRA's hybrid prompt, prefrec.items): where they go and how they enter the model.

Where: one placeholder right after each item title the prompt quotes, for the history (in the prefix) and for the
candidates (in the questions), when the item is in the table's id map; other items stay text only.

    "Heat (1995)"⟨item⟩, "Fargo (1996)"⟨item⟩, ...        the prompt as the model sees it

`mark_prompt` writes a marker ITEM_MARK + row + ITEM_MARK after each such title's closing quote. The marker is
private-use text that no prompt contains and no chat template touches; the encoder (prefrec.scoring.encoding)
tokenises the text in pieces around the markers and puts exactly one placeholder id in place of each, whatever the
tokenizer, recording (position, row) in the tree (Tree.soft, Branch.soft).

How: `model_inputs` gives the decoder `inputs_embeds` = the token embeddings with each placeholder's row replaced by
projector(table[row]). In a packed batch the prefix of a tree appears once, so its soft tokens are computed once per
tree (and each distinct item once per batch), as the prompt's hidden states are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from prefrec.errors import UserError
from prefrec.items import attached

ITEM_MARK = "\ue001"  # private use; prefrec.scoring.encoding.SENTINEL uses U+E000


def marker(row: int) -> str:
    return f"{ITEM_MARK}{row}{ITEM_MARK}"


@dataclass
class Marked:
    """A prompt with markers: the prefix, each question, how many soft tokens they hold, and the titles shown as text
    only because their item is not in the id map."""
    prefix: str
    questions: list[str]
    n_soft: int = 0
    fallback: list[str] = field(default_factory=list)


def mark_text(text: str, items: Sequence[tuple[str, str]], ids: Mapping[str, int]) -> tuple[str, int, list[str]]:
    """`text` with a marker after the quoted title of each (title, key) of `items` found in it (left to right: the
    earliest next occurrence of a not yet placed item, the longest title on a tie; each item placed once, so a
    history with a title twice marks both in order); returns (text, markers, titles found but not in `ids`)."""
    if ITEM_MARK in text:
        raise UserError("prompt text contains prefrec's reserved item marker U+E001")
    left = [(f'"{title}"', key, title) for title, key in items if title]
    out, pos, n, fallback = [], 0, 0, []
    while left:
        found = [(text.find(q, pos), -len(q), j) for j, (q, _, _) in enumerate(left)]
        found = [f for f in found if f[0] >= 0]
        if not found:
            break
        start, neg_len, j = min(found)
        _, key, title = left.pop(j)
        end = start - neg_len
        out.append(text[pos:end])
        if key in ids:
            out.append(marker(ids[key]))
            n += 1
        else:
            fallback.append(title)
        pos = end
    out.append(text[pos:])
    return "".join(out), n, fallback


def mark_prompt(prefix: str, questions: Sequence[str], history: Sequence[tuple[str, str]],
                candidates: Sequence[tuple[str, str]], ids: Mapping[str, int]) -> Marked:
    """Markers for the history items in the prefix and for the candidate items in each question."""
    text, n, fallback = mark_text(prefix, history, ids)
    marked = Marked(text, [], n, fallback)
    for q in questions:
        text, n, fb = mark_text(q, candidates, ids)
        marked.questions.append(text)
        marked.n_soft += n
        marked.fallback += [t for t in fb if t not in marked.fallback]
    return marked


def sample_items(sample) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(history (title, item id) pairs, candidate pairs) of a sample; empty where the sample carries no item ids
    (imported prompts)."""
    hist = list(zip(sample.history, sample.history_items)) if len(sample.history_items) == len(sample.history) else []
    cands = list(zip(sample.candidates, sample.candidate_items)) \
        if len(sample.candidate_items) == len(sample.candidates) else []
    return hist, cands


def mark_sample(sample, ids: Mapping[str, int], questions: Sequence[str] | None = None) -> Marked:
    """The sample's prompt with markers (its own comparisons' questions, or `questions`)."""
    hist, cands = sample_items(sample)
    qs = [c.question for c in sample.comparisons] if questions is None else list(questions)
    return mark_prompt(sample.prefix, qs, hist, cands, ids)


def split_marked(text: str) -> list[str | int]:
    """Text pieces and table rows, alternating (text, row, text, ..., text)."""
    pieces = text.split(ITEM_MARK)
    if len(pieces) % 2 == 0:
        raise ValueError("unbalanced item marker in a prompt")
    return [int(p) if j % 2 else p for j, p in enumerate(pieces)]


# ---------------------------------------------------------------------------------------------------------------
# Into the model

def embed(base, input_ids: Tensor, soft_row: Tensor, soft_pos: Tensor, soft_item: Tensor) -> Tensor:
    """Token embeddings (B, L, H) of `input_ids` (on the model's device) with the soft token of item row
    soft_item[s] at (soft_row[s], soft_pos[s]). The graph reaches the projector, never the frozen table."""
    items = attached(base)
    if items is None:
        raise ValueError("these prompts carry item tokens, but the model has no item tokens attached "
                         "(prefrec.items.attach)")
    emb = base.get_input_embeddings()(input_ids)
    device = emb.device
    if len(soft_item):
        uniq, inverse = soft_item.to(device).unique(return_inverse=True)  # each distinct item projected once
        vectors = items(uniq)[inverse].to(emb.dtype)
        emb = emb.index_put((soft_row.to(device), soft_pos.to(device)), vectors)
    elif torch.is_grad_enabled():
        # a text-only batch (the curriculum's early steps) still involves every trainable parameter, with a zero
        # gradient: DDP expects it, and one process and several then take the same optimizer steps
        emb = emb + 0.0 * items(torch.zeros(1, dtype=torch.long, device=device)).sum().to(emb.dtype)
    return emb


def model_inputs(base, input_ids: Tensor, soft_row: Tensor, soft_pos: Tensor, soft_item: Tensor, device) -> dict:
    """{"input_ids"} for a text-only model (the path is then exactly the one before item tokens existed), else
    {"inputs_embeds"} with the soft tokens in place."""
    if attached(base) is None and not len(soft_item):
        return {"input_ids": input_ids.to(device)}
    return {"inputs_embeds": embed(base, input_ids.to(device), soft_row, soft_pos, soft_item)}
