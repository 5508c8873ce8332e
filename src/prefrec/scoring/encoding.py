"""Text -> token trees: the prompt through the chat template (or the plain format of base models), split where the
shared prefix ends, and every response closed by the end-of-turn token (the one rule for it, in training, scoring
and generation alike)."""

from __future__ import annotations

import hashlib
import weakref
from typing import Mapping, Sequence

from prefrec.errors import UserError
from prefrec.scoring.soft import mark_sample, split_marked
from prefrec.scoring.trees import Branch, Tree

# A private-use character pair: never in real prompt text, untouched by chat templates; marks where the shared
# prefix ends inside the templated user message.
SENTINEL = "\ue000prefrec-split\ue000"
# Prompt format of a model without a chat template (base models): prefix + question + PLAIN_ANSWER + response + eos.
# The newline at its end keeps the first response token from merging with the prompt's last one, and a response
# starts as text starts after a line break (no leading space), whichever tokenizer.
PLAIN_ANSWER = "\n\nAnswer:\n"


def _leading_special_ids(tokenizer) -> list[int]:
    """Ids a tokenizer puts before the text by itself (BOS for Llama-like tokenizers, nothing for GPT-2-like)."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    n = len(with_special) - len(without)
    return list(with_special[:n]) if n > 0 and with_special[n:n + len(without)] == without else []


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def placeholder_id(tokenizer) -> int:
    """The id at an item token's position. Any id would do (its embedding is replaced); unk, else pad, else eos."""
    for i in (tokenizer.unk_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id):
        if i is not None:
            return int(i)
    return 0


def _encode_marked(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of text with item markers (prefrec.scoring.soft): the text between markers tokenised piece by piece,
    one placeholder id per marker, so an item token takes exactly one position whatever the tokenizer; and the
    (position, table row) of each placeholder."""
    ids, soft = [], []
    for piece in split_marked(text):
        if isinstance(piece, int):
            soft.append((len(ids), piece))
            ids.append(placeholder_id(tokenizer))
        else:
            ids += _encode(tokenizer, piece)
    return ids, soft


def _prompt_parts(tokenizer, prefix: str, question: str) -> tuple[str, str]:
    """The final prompt text, split where the shared prefix ends: (template head + prefix, question + template tail);
    without a chat template (prefix, question + PLAIN_ANSWER)."""
    for name, text in (("prefix", prefix), ("question", question)):
        if SENTINEL in text:
            raise UserError(f"prompt {name} contains prefrec's reserved split marker U+E000")
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prefix + SENTINEL + question}],
                                             tokenize=False, add_generation_prompt=True)
        if not isinstance(text, str) or text.count(SENTINEL) != 1:
            raise ValueError("the chat template did not keep the user message intact; cannot split the prompt")
        head, tail = text.split(SENTINEL)
        return head, tail
    return prefix, question + PLAIN_ANSWER


def _template_end_of_turn(tokenizer) -> int | None:
    """The special token the chat template writes right after an assistant message's content, or None."""
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "x"},
                                              {"role": "assistant", "content": SENTINEL}], tokenize=False)
    except Exception:  # noqa: BLE001 - a template that rejects this conversation tells us nothing
        return None
    if not isinstance(text, str) or text.count(SENTINEL) != 1:
        return None
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    for i in _encode(tokenizer, text.split(SENTINEL)[1]):
        if i in special:
            return int(i)
        if tokenizer.decode([i]).strip():  # plain text before any special token: the template has no end marker
            return None
    return None


_EOT_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def end_of_turn_id(tokenizer) -> int | None:
    """The token that ends a response, in training, scoring and generation alike (the one rule for it).

    With a chat template: the special token the template puts after an assistant message (`<|im_end|>` for ChatML
    models such as SmolLM2, `<end_of_turn>` for Gemma, `<|eot_id|>` for Llama-3), which is often not the
    tokenizer's eos (Gemma's eos is `<eos>`, Llama-3's `<|end_of_text|>`). Without a template, or when the template
    writes no special token there: the tokenizer's eos. None when there is neither.
    """
    key = (getattr(tokenizer, "chat_template", None), tokenizer.eos_token_id, len(tokenizer))
    hit = _EOT_CACHE.get(tokenizer)
    if hit is not None and hit[0] == key:
        return hit[1]
    eot = _template_end_of_turn(tokenizer) if key[0] else None
    if eot is None and tokenizer.eos_token_id is not None:
        eot = int(tokenizer.eos_token_id)
    _EOT_CACHE[tokenizer] = (key, eot)
    return eot


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end greedy generation: the end of turn first, then the tokenizer's and the model's
    generation-config eos ids (a model that writes eos instead has ended its answer too)."""
    ids = [end_of_turn_id(tokenizer), tokenizer.eos_token_id]
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    ids += extra if isinstance(extra, (list, tuple)) else [extra]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def prompt_format(tokenizer) -> dict:
    """How prompts and responses are laid out for this tokenizer (recorded in run.json as prompt_format):
    kind "chat-template" (the tokenizer's template, its sha256) or "plain" (PLAIN_ANSWER), and the end-of-turn
    token."""
    template = getattr(tokenizer, "chat_template", None)
    eot = end_of_turn_id(tokenizer)
    out = {"kind": "chat-template" if template else "plain",
           "end_of_turn": tokenizer.convert_ids_to_tokens(eot) if eot is not None else None}
    if template:
        out["chat_template_sha256"] = hashlib.sha256(str(template).encode("utf-8")).hexdigest()
    else:
        out["answer_separator"] = PLAIN_ANSWER
    return out


def check_prompt_format(tokenizer, recorded: dict, where: str) -> None:
    """UserError when `tokenizer` would lay prompts out differently (kind or end-of-turn token) from `recorded`."""
    now = prompt_format(tokenizer)
    keys = ("kind", "end_of_turn", "answer_separator")
    if any(recorded.get(k) != now.get(k) for k in keys):
        raise UserError(f"{where}: prompt_format {({k: recorded.get(k) for k in keys})} was used in training, but "
                        f"the base model's tokenizer now gives {({k: now.get(k) for k in keys})}; evaluate with the "
                        f"tokenizer the run was trained with")


def response_ids(tokenizer, text: str) -> list[int]:
    """Response tokens = the text's tokens + the end-of-turn token (`end_of_turn_id`)."""
    ids = _encode(tokenizer, text)
    eot = end_of_turn_id(tokenizer)
    if eot is not None:
        ids.append(eot)
    if not ids:
        raise UserError("empty response text (and the tokenizer has no end-of-turn token)")
    return ids


def encode_texts(tokenizer, prefix: str, questions: Sequence[str], responses: Sequence[Sequence[str]], *,
                 marked: bool = False) -> Tree:
    """Tree for prompts `prefix + questions[i]` (each as one user message through the chat template, with the
    generation prompt) and their `responses[i]`. The template text is split at the end of `prefix`, each part
    tokenised with add_special_tokens=False, so prefix tokens are shared and the naive path sees the very same ids
    (prefix + question + response). Without a chat template (base models) the prompt is the plain text
    prefix + question + PLAIN_ANSWER, after the tokenizer's own leading special tokens (BOS) if it adds any. Every
    response ends with `end_of_turn_id(tokenizer)`. marked=True: the texts carry item markers (prefrec.scoring.soft),
    each encoded as one placeholder position recorded in Tree.soft / Branch.soft."""
    if len(questions) != len(responses):
        raise ValueError(f"{len(questions)} questions but {len(responses)} response lists")
    parts = [_prompt_parts(tokenizer, prefix, q) for q in questions]
    heads = {h for h, _ in parts}
    lead = [] if getattr(tokenizer, "chat_template", None) else _leading_special_ids(tokenizer)
    enc = (lambda text: _encode_marked(tokenizer, text)) if marked else (lambda text: (_encode(tokenizer, text), []))
    if len(heads) == 1:
        shared, soft = enc(parts[0][0])
        shared, soft = lead + shared, [(len(lead) + p, row) for p, row in soft]
        qs = [enc(tail) for _, tail in parts]
    else:  # a template that renders the prefix differently per question: share nothing, still exact
        shared, soft = list(lead), []
        qs = [_joined(enc(h), enc(t)) for h, t in parts]
    branches = [Branch(question=q, responses=[response_ids(tokenizer, r) for r in rs], soft=qsoft)
                for (q, qsoft), rs in zip(qs, responses)]
    tree = Tree(prefix=shared, branches=branches, soft=soft)
    if any(not tree.prefix and not b.question for b in branches):
        raise UserError("empty prompt: a response needs at least one prompt token before it")
    return tree


def _joined(a: tuple[list[int], list], b: tuple[list[int], list]) -> tuple[list[int], list]:
    return a[0] + b[0], a[1] + [(len(a[0]) + p, row) for p, row in b[1]]


def encode_sample(tokenizer, sample, *, which: str = "all", items: Mapping[str, int] | None = None) -> Tree:
    """Tree of a prefrec Sample: one branch per comparison, responses [chosen] + rejected (which="all") or
    [chosen] only (which="chosen", for SFT and for scoring the positive). items (item key -> table row, a model's
    `prefrec.items.item_ids`): one item token after each history and candidate title whose item is in it."""
    if which not in ("all", "chosen"):
        raise ValueError(f"which={which!r}: expected 'all' or 'chosen'")
    responses = [[c.chosen] + (list(c.rejected) if which == "all" else []) for c in sample.comparisons]
    if items is None:
        return encode_texts(tokenizer, sample.prefix, [c.question for c in sample.comparisons], responses)
    m = mark_sample(sample, items)
    return encode_texts(tokenizer, m.prefix, m.questions, responses, marked=True)
