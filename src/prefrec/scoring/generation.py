"""Greedy generation of a sample's answer: the one generation driver (likelihood scoring is prefrec.scoring.packing).

The prompt tokens are the very ones the scorer uses (chat template with the generation prompt, or the plain format);
prompts are left-padded in batches and generation stops at the end-of-turn token. A task that reads answers back
(the candidates task) passes the trie of each sample's answers to decode through, or matches free answers itself.
"""

from __future__ import annotations

import torch

from prefrec.errors import UserError
from prefrec.items import item_ids
from prefrec.samples import Sample
from prefrec.scoring.encoding import encode_sample, prompt_format, stop_token_ids
from prefrec.scoring.packing import base_model, float32_head
from prefrec.scoring.soft import embed
from prefrec.scoring.trees import Tree
from prefrec.scoring.trie import AnswerTrie
from prefrec.scoring.vllm_generate import vllm_answers


def generate_answers(model, tokenizer, samples: list[Sample], *, max_new_tokens: int = 64, batch_size: int = 8,
                     progress: bool = True, tries: list[AnswerTrie] | None = None,
                     backend: str = "transformers") -> list[str]:
    """Greedy answers to each sample's comparison-0 prompt: the very prompt tokens the scorer uses (chat template
    with the generation prompt, or the plain format), left-padded in batches; generation stops at the end-of-turn
    token (prefrec.scoring.encoding.stop_token_ids). In the plain format (base models) the answer is its first line: an
    untuned base model rarely emits eos and runs on into more titles, while every trained response is one line.
    tries: decode sample i through tries[i] (prefrec.scoring.trie, its task's answers), so that every answer is one
    of them. The LM head runs in float32 (scoring.packing.float32_head): a bf16 model's argmax
    would otherwise break ties of rounded logits by token id. backend "vllm": the same prompts and stop ids through
    vLLM (GPU only; no trie, no item tokens: prefrec.scoring.vllm_generate)."""
    from tqdm.auto import tqdm
    from transformers import GenerationConfig  # loaded when a sample is generated, not with the task table

    trees = [encode_sample(tokenizer, s, which="chosen", items=item_ids(model)) for s in samples]
    prompts = [t.prefix + t.branches[0].question for t in trees]
    first_line = prompt_format(tokenizer)["kind"] == "plain"
    if backend != "transformers":
        return _other_backend(backend, model, tokenizer, prompts, trees, max_new_tokens=max_new_tokens,
                              constrained=tries is not None, first_line=first_line,
                              progress=progress)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                           eos_token_id=stop_token_ids(tokenizer, model), pad_token_id=pad)
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths share a batch
    answers: list[str] = [""] * len(prompts)
    with torch.inference_mode(), float32_head(model), tqdm(total=len(prompts), desc="generating", unit="sample",
                                                           disable=not progress) as bar:
        for lo in range(0, len(order), batch_size):
            idx = order[lo:lo + batch_size]
            L = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), L), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), L), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, L - len(prompts[i]):] = torch.tensor(prompts[i])
                mask[r, L - len(prompts[i]):] = 1
            allowed = None if tries is None else \
                (lambda b, seq, idx=idx, L=L: tries[idx[b]].allowed(seq[L:].tolist()))
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=cfg,
                                 prefix_allowed_tokens_fn=allowed,
                                 **_prompt_embeds(model, ids.to(device), [trees[i] for i in idx], L))
            for r, i in enumerate(idx):
                text = tokenizer.decode(gen[r, L:], skip_special_tokens=True).strip()
                answers[i] = text.split("\n", 1)[0].strip() if first_line else text
            bar.update(len(idx))
    return answers


BACKENDS = ("transformers", "vllm")


def _other_backend(backend: str, model, tokenizer, prompts, trees, *, max_new_tokens: int, constrained: bool,
                   first_line: bool, progress: bool) -> list[str]:
    """Greedy answers by a backend other than transformers' generate (vLLM), or one clear refusal."""
    if backend not in BACKENDS:
        raise UserError(f"generation backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if constrained:
        raise UserError("--constrained decodes through prefrec's answer trie, with the transformers backend only")
    if any(t.prompt_soft(0) for t in trees):
        raise UserError("a model with collaborative item tokens generates with the transformers backend only")

    texts = vllm_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                         stop_ids=stop_token_ids(tokenizer, model), progress=progress)
    return [t.split("\n", 1)[0].strip() if first_line else t for t in texts]


def _prompt_embeds(model, ids, trees: list[Tree], L: int) -> dict:
    """{"inputs_embeds"} of left-padded prompts when they carry item tokens, else {}. generate() given both
    input_ids and inputs_embeds runs the first step on the embeddings and still returns the prompt ids first."""
    soft = [(r, L - len(t.prefix) - len(t.branches[0].question) + p, row)
            for r, t in enumerate(trees) for p, row in t.prompt_soft(0)]
    if not soft:
        return {}
    rows, pos, items = (torch.tensor([x[j] for x in soft], dtype=torch.long) for j in range(3))
    return {"inputs_embeds": embed(base_model(model), ids, rows, pos, items)}
