"""Per-sample scores of a model on prepared samples, one function per task (the rows of prefrec.evaluation.tasks
call them): the packed scorer of prefrec.scoring.packing scores every response of a sample in one forward pass.

    pairwise   s_first = logp(chosen | x), s_second = logp(rejected | x) for every comparison of every sample: the
               two orderings "pos, neg" / "neg, pos" (title answers) or the two option letters (letter answers)
    candidates likelihood ranking: every candidate's answer (its title, or its number) as a response to the prompt,
               one packed forward per sample, ranked by summed logp (rank_*) and by mean logp per token (rank_norm_*);
               greedy generation of the answer (chat template, max_new_tokens), matched back to one candidate
    yesno      P(Yes) and P(No) = softmax over the whole vocabulary at the answer's first position, read at the first
               token of the "Yes." and "No." responses; score = P(Yes) / (P(Yes) + P(No)) = σ(log P(Yes) − log P(No)).
               One softmax: TALLRec's second softmax over the two logits gives the same AUC but is not a probability
               of the model (docs/evaluate.md, the papers' code).
"""

from __future__ import annotations

import numpy as np
import torch

from prefrec.answers import answer_format
from prefrec.errors import UserError
from prefrec.evaluation.metrics import generation_rates
from prefrec.items import item_ids
from prefrec.samples import Sample
from prefrec.scoring.encoding import (encode_sample, encode_texts, end_of_turn_id, prompt_format, response_ids,
                                     stop_token_ids)
from prefrec.scoring.matching import match
from prefrec.scoring.packing import _base, float32_head, score_trees
from prefrec.scoring.soft import embed, mark_sample
from prefrec.scoring.trees import Tree
from prefrec.scoring.trie import AnswerTrie

# ---- pairwise ----

def score_pairwise(model, tokenizer, samples: list[Sample], *, max_tokens_per_batch: int = 4096,
                   progress: bool = True) -> list[dict]:
    """Per sample: s_first[j] = logp(chosen ordering of comparison j), s_second[j] = logp(its first rejected one).
    One packed forward per sample (all comparisons share the history prefix)."""
    ids = item_ids(model)  # a model trained with item tokens is scored with them
    trees = [encode_sample(tokenizer, s, which="all", items=ids) for s in samples]
    nested = score_trees(model, trees, max_tokens_per_batch=max_tokens_per_batch, progress=progress,
                         desc="pairwise").nested()
    return [{"id": s.id, "user": s.user, "s_first": [float(b[0]) for b in branches], "s_second": [float(b[1]) for b in branches]}
            for s, branches in zip(samples, nested)]


# ---- candidates ----

def candidate_list(s: Sample) -> tuple[list[str], int]:
    """(candidate titles, index of the target). Samples without a `candidates` field fall back to the comparison's
    chosen + rejected responses."""
    cands = list(s.candidates) or [s.comparisons[0].chosen] + list(s.comparisons[0].rejected)
    target = s.target if s.target is not None else s.comparisons[0].chosen
    if target not in cands:
        raise UserError(f"sample {s.id}: target {target!r} is not among its {len(cands)} candidates")
    if len(set(cands)) != len(cands):
        raise UserError(f"sample {s.id}: candidate titles are not unique")
    return cands, cands.index(target)


def candidate_answers(s: Sample) -> list[str]:
    """The response that names each candidate, in candidate order: its title, or its number (the sample's answer
    format)."""
    return answer_format(s.answer_format).responses(candidate_list(s)[0])


def candidate_trees(tokenizer, samples: list[Sample], items: dict[str, int] | None = None) -> list[Tree]:
    """One tree per sample: the prompt of comparison 0 with every candidate's answer as a response (with item
    tokens when `items`, the model's id map, is given)."""
    if items is None:
        return [encode_texts(tokenizer, s.prefix, [s.comparisons[0].question], [candidate_answers(s)])
                for s in samples]
    marked = [mark_sample(s, items, [s.comparisons[0].question]) for s in samples]
    return [encode_texts(tokenizer, m.prefix, m.questions, [candidate_answers(s)], marked=True)
            for s, m in zip(samples, marked)]


def matched_candidate(s: Sample, answer: str) -> tuple[int | None, str]:
    """(candidate index or None, the rule that decided) of a generated answer, by the sample's answer format:
    titles through prefrec.scoring.matching, numbers and letters by their label."""
    cands = candidate_list(s)[0]
    fmt = answer_format(s.answer_format)
    if fmt.read is None:
        return match(answer, cands)
    j = fmt.read(answer, len(cands))
    return j, (fmt.name if j is not None else "none")


def score_candidates(model, tokenizer, samples: list[Sample], *, max_tokens_per_batch: int = 4096,
                     progress: bool = True) -> list[dict]:
    """Per sample: target_index, rank_scores (summed logp of each candidate title + end-of-turn token) and
    rank_norm_scores (the same divided by the response's token count)."""
    trees = candidate_trees(tokenizer, samples, item_ids(model))
    nested = score_trees(model, trees, max_tokens_per_batch=max_tokens_per_batch, progress=progress,
                         desc="candidates").nested()
    out = []
    for s, tree, branches in zip(samples, trees, nested):
        summed = branches[0].double().numpy()
        lengths = np.array([len(r) for r in tree.branches[0].responses], dtype=np.float64)
        out.append({"id": s.id, "user": s.user, "target_index": candidate_list(s)[1], "rank_scores": summed.tolist(),
                    "rank_norm_scores": (summed / lengths).tolist()})
    return out


def generate_answers(model, tokenizer, samples: list[Sample], *, max_new_tokens: int = 64, batch_size: int = 8,
                     progress: bool = True, constrained: bool = False, backend: str = "transformers") -> list[str]:
    """Greedy answers to each sample's comparison-0 prompt: the very prompt tokens the scorer uses (chat template
    with the generation prompt, or the plain format), left-padded in batches; generation stops at the end-of-turn
    token (prefrec.scoring.encoding.stop_token_ids). In the plain format (base models) the answer is its first line: an
    untuned base model rarely emits eos and runs on into more titles, while every trained response is one line.
    constrained: decode through the trie of the sample's candidate answers (prefrec.scoring.trie), so that every
    answer is one of them. The LM head runs in float32 (scoring.packing.float32_head): a bf16 model's argmax
    would otherwise break ties of rounded logits by token id. backend "vllm": the same prompts and stop ids through
    vLLM (GPU only; no trie, no item tokens: prefrec.evaluation.vllm_generate)."""
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    trees = [encode_sample(tokenizer, s, which="chosen", items=item_ids(model)) for s in samples]
    prompts = [t.prefix + t.branches[0].question for t in trees]
    first_line = prompt_format(tokenizer)["kind"] == "plain"
    if backend != "transformers":
        return _other_backend(backend, model, tokenizer, prompts, trees, max_new_tokens=max_new_tokens,
                              constrained=constrained, first_line=first_line, progress=progress)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                           eos_token_id=stop_token_ids(tokenizer, model), pad_token_id=pad)
    device = next(model.parameters()).device
    tries = [_trie(tokenizer, s) for s in samples] if constrained else None
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
    from prefrec.evaluation.vllm_generate import vllm_answers

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
    return {"inputs_embeds": embed(_base(model), ids, rows, pos, items)}


# ---- yes/no ----

def _is_yes(text: str) -> bool | None:
    t = text.strip().lower().rstrip(".!")
    return True if t == "yes" else False if t == "no" else None


def score_yesno(model, tokenizer, samples: list[Sample], *, max_tokens_per_batch: int = 4096,
                progress: bool = True) -> list[dict]:
    """Per sample: logp_yes, logp_no = log-softmax over the full vocabulary at the first answer position, read at the
    first token of the "Yes." and "No." responses; p_yes = σ(logp_yes − logp_no) = P(Yes) / (P(Yes) + P(No))."""
    trees, yes_at = [], []
    ids = item_ids(model)
    for s in samples:
        c = s.comparisons[0]
        answers = [c.chosen] + list(c.rejected)
        kinds = [_is_yes(a) for a in answers]
        if True not in kinds or False not in kinds:
            raise UserError(f"sample {s.id}: a yes/no sample needs responses 'Yes.' and 'No.', got {answers}")
        yes_at.append((kinds.index(True), kinds.index(False)))
        if ids is None:
            trees.append(encode_texts(tokenizer, s.prefix, [c.question], [answers]))
        else:
            m = mark_sample(s, ids, [c.question])
            trees.append(encode_texts(tokenizer, m.prefix, m.questions, [answers], marked=True))
    scores = score_trees(model, trees, max_tokens_per_batch=max_tokens_per_batch, per_token=True, progress=progress,
                         desc="yes/no")
    first = [t[0].item() for t in scores.token_logps]  # log P(first token of each response)
    out, n = [], 0
    for s, tree, (iy, ino) in zip(samples, trees, yes_at):
        resp = tree.branches[0].responses
        if resp[iy][0] == resp[ino][0]:
            raise UserError(f"sample {s.id}: 'Yes.' and 'No.' start with the same token; cannot read P(Yes)")
        ly, ln = first[n + iy], first[n + ino]
        n += len(resp)
        label = s.label if s.label is not None else int(iy == 0)
        out.append({"id": s.id, "user": s.user, "label": int(label), "logp_yes": ly, "logp_no": ln,
                    "p_yes": float(1.0 / (1.0 + np.exp(ln - ly)))})
    return out


def _trie(tokenizer, s: Sample) -> AnswerTrie:
    """The trie of a sample's candidate answers, tokenised as the scorer tokenises responses."""
    return AnswerTrie([response_ids(tokenizer, a) for a in candidate_answers(s)], end_of_turn_id(tokenizer))


def generate_and_match(model, tokenizer, samples: list[Sample], rows: list[dict], *, max_new_tokens: int,
                       batch_size: int, progress: bool, constrained: bool = False,
                       backend: str = "transformers") -> dict:
    """Greedy answers matched to one candidate each (the sample's answer format), added to the rows (answer,
    matched, rule, valid, hit); returns HR@1 and ValidRatio, the papers' numbers. constrained: also decode through
    the candidates' trie, beside it (fields and metrics with the suffix _constrained; ValidRatio 1 by
    construction)."""
    metrics = {}
    for suffix in ("", "_constrained") if constrained else ("",):
        answers = generate_answers(model, tokenizer, samples, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   progress=progress, constrained=bool(suffix),
                                   backend="transformers" if suffix else backend)
        for r, a, s in zip(rows, answers, samples):  # each answer matched once: rows and metrics both use it
            j, rule = matched_candidate(s, a)
            r.update({f"answer{suffix}": a, f"matched{suffix}": j, f"rule{suffix}": rule,
                      f"valid{suffix}": j is not None, f"hit{suffix}": j is not None and j == r["target_index"]})
        rates = generation_rates([r[f"valid{suffix}"] for r in rows], [r[f"hit{suffix}"] for r in rows])
        metrics.update({f"{k}{suffix}": v for k, v in rates.items() if k != "n"})
    return metrics
