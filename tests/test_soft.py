"""prefrec.scoring.soft: where the collaborative item tokens go in a prompt (and the encoder's one placeholder per
item), and that the packed forward with soft tokens is the naive one-sequence-per-response forward.

Independent checks: the placeholder positions against the decoded prompt text (each must follow its own title's
closing quote, with two tokenizer families), the packed log-probs and projector gradients against
naive_response_logps in float64 (where the two paths agree to ~1e-14 without soft tokens, test_packing.py), greedy
generation against a hand-written greedy loop over full forwards on inputs_embeds.
"""

import copy

import pytest
import torch
from conftest import make_tiny_lm

from prefrec import prompts
from prefrec.errors import UserError
from prefrec.scoring.generation import generate_answers
from prefrec.items import ItemTable, ItemTokens, attach, attached
from prefrec.model import add_lora
from prefrec.samples import Comparison, Sample
from prefrec.scoring.encoding import encode_sample, placeholder_id
from prefrec.scoring.packing import (
    base_model,
    naive_response_logps,
    pack_trees,
    response_logps,
)
from prefrec.scoring.soft import embed, mark_sample, mark_text, model_inputs
from prefrec.tasks import yesno as task_yesno
from prefrec.tasks import candidates as task_candidates
from prefrec.tasks import pairwise as task_pairwise

TITLES = {f"i{j}": t for j, t in enumerate(["Heat (1995)", "Fargo (1996)", "Girl, Interrupted (1999)", "Alien (1979)",
                                             "Aliens (1986)", "Jaws (1975)", "Big (1988)", "Up (2009)", "Ran (1985)"])}
KNOWN = {key: row for row, key in enumerate(["i0", "i1", "i2", "i3", "i4", "i5", "i6"])}  # i7, i8: not in the map


def _candidates_sample(answers="title") -> Sample:
    hist, cands = ["i0", "i1", "i2", "i7"], ["i4", "i3", "i8", "i5"]
    h, c = [TITLES[k] for k in hist], [TITLES[k] for k in cands]
    notes = ["mean rating 3.9 from 12 users", "", "no other user rated it", "mean rating 2.0 from 1 user"]
    return Sample(id="c", task="candidates", domain="movies", prefix=prompts.history_prefix("movies", h),
                  comparisons=[Comparison(task_candidates.TASK.format(answers).question("movies", c, notes),
                                          c[0] if answers == "title" else "1", c[1:] if answers == "title" else
                                          ["2", "3", "4"])],
                  history=h, history_items=hist, candidates=c, candidate_items=cands, target=c[0], target_item=cands[0],
                  answer_format=answers)


def _pairwise_sample() -> Sample:
    hist, pos, negs = ["i6", "i0", "i6"], "i3", ["i4", "i5"]  # a title twice in the history: both marked, in order
    h = [TITLES[k] for k in hist]
    comps = [Comparison(task_pairwise.title_question("movies", TITLES[n], TITLES[pos]),
                        f"{TITLES[pos]}, {TITLES[n]}", [f"{TITLES[n]}, {TITLES[pos]}"]) for n in negs]
    return Sample(id="p", task="pairwise", domain="movies", prefix=prompts.history_prefix("movies", h),
                  comparisons=comps, history=h, history_items=hist, candidates=[TITLES[pos]] + [TITLES[n] for n in negs],
                  candidate_items=[pos] + negs, target=TITLES[pos], target_item=pos)


def _yesno_sample() -> Sample:
    liked, disliked, target = ["i1", "i5"], ["i2"], "i6"
    return Sample(id="y", task="yesno", domain="movies",
                  prefix=task_yesno.yesno_prefix("movies", [TITLES[k] for k in liked], [TITLES[k] for k in disliked]),
                  comparisons=[Comparison(task_yesno.yesno_question("movies", TITLES[target]), "Yes.", ["No."])],
                  history=[TITLES[k] for k in ["i1", "i2", "i5"]], history_items=["i1", "i2", "i5"],
                  candidates=[TITLES[target]], candidate_items=[target], target=TITLES[target], target_item=target,
                  label=1)


SAMPLES = {"candidates": _candidates_sample, "candidates-number": lambda: _candidates_sample("number"),
           "pairwise": _pairwise_sample, "yesno": _yesno_sample}


@pytest.fixture(scope="module")
def gemma_tokenizer():
    """Gemma 3's real tokenizer (SentencePiece, no chat template: the plain prompt format)."""
    from transformers import AutoTokenizer

    from prefrec.model import GEMMA3_270M, offline_tokenizer_dir

    return AutoTokenizer.from_pretrained(offline_tokenizer_dir(GEMMA3_270M))


def _expected(sample: Sample, text: str, pairs) -> list[tuple[int, str, str]]:
    """(end of the quoted title in `text`, title, item) of every shown title, found by a plain scan of the text."""
    found = []
    for title, key in pairs:
        start = 0
        while (i := text.find(f'"{title}"', start)) >= 0:
            found.append((i + len(title) + 2, title, key))
            start = i + 1
    return sorted(set(found))


@pytest.mark.parametrize("family", ["smollm2", "gemma"])
@pytest.mark.parametrize("kind", list(SAMPLES))
def test_one_placeholder_right_after_each_known_title(kind, family, embedded_tokenizer, gemma_tokenizer):
    tok = embedded_tokenizer if family == "smollm2" else gemma_tokenizer
    sample = SAMPLES[kind]()
    text_tree = encode_sample(tok, sample)
    tree = encode_sample(tok, sample, items=KNOWN)
    ph = placeholder_id(tok)
    hist = list(zip(sample.history, sample.history_items))
    cands = list(zip(sample.candidates, sample.candidate_items))
    for b, comp in enumerate(sample.comparisons):
        want = [(t, k) for _, t, k in _expected(sample, sample.prefix, hist)] + \
               [(t, k) for _, t, k in _expected(sample, comp.question, cands)]
        want = [(t, k) for t, k in want if k in KNOWN]
        ids = tree.prefix + tree.branches[b].question
        soft = tree.prompt_soft(b)
        assert len(soft) == len(want) > 0
        assert [row for _, row in soft] == [KNOWN[k] for _, k in want]
        places = {p for p, _ in soft}
        assert all(ids[p] == ph for p in places)
        plain = [i for j, i in enumerate(ids) if j not in places]
        # the placeholders are the only difference: the text around them is the text-only prompt
        assert tok.decode(plain) == tok.decode(text_tree.prefix + text_tree.branches[b].question)
        for (p, _), (title, _) in zip(soft, want):
            before = tok.decode([i for j, i in enumerate(ids[:p]) if j not in places])
            assert before.endswith(f'"{title}"'), (before[-40:], title)


def test_mark_text_rules():
    ids = {"a": 0, "b": 1, "c": 2}
    text = 'Seen "Alien", "Aliens", "Alien" and "Up".'
    got, n, fallback = mark_text(text, [("Aliens", "b"), ("Alien", "a"), ("Alien", "c"), ("Up", "z"), ("Ran", "a")],
                                 ids)
    # earliest occurrence first, each item once (the two "Alien" entries mark the two occurrences in list order),
    # an item not in the map stays text and is reported, a title not shown is skipped
    assert got == 'Seen "Alien"\ue0010\ue001, "Aliens"\ue0011\ue001, "Alien"\ue0012\ue001 and "Up".'
    assert n == 3 and fallback == ["Up"]
    with pytest.raises(UserError, match="U\\+E001"):
        mark_text("bad \ue001 text", [], ids)
    marked = mark_sample(_candidates_sample(), KNOWN)
    assert marked.n_soft == 6 and marked.fallback == [TITLES["i7"], TITLES["i8"]]


def _hybrid(tok, dtype=torch.float64, impl="sdpa", seed=0):
    model = make_tiny_lm(tok, seed=seed, attn_implementation=impl)
    g = torch.Generator().manual_seed(seed)
    table = ItemTable(torch.randn(len(KNOWN), 8, generator=g), dict(KNOWN))
    attach(model, ItemTokens(table, model.config.hidden_size, 16))
    return model.to(dtype)


def _trees(tok):
    return [encode_sample(tok, f(), items=KNOWN) for f in SAMPLES.values()]


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_packed_equals_naive_with_soft_tokens(impl, embedded_tokenizer):
    tok = embedded_tokenizer
    model = _hybrid(tok, impl=impl)
    trees = _trees(tok)
    with torch.no_grad():
        naive = naive_response_logps(model, trees, per_token=True)
        for pack_tokens in (None, 10_000):  # a row per tree, and every tree in one row
            packed = response_logps(model, trees, per_token=True, pack_tokens=pack_tokens)
            assert torch.allclose(packed.summed, naive.summed, atol=1e-10 if impl == "sdpa" else 1e-6, rtol=0)
        # the soft tokens matter: another projector gives other scores, and the text-only prompt others again
        other = copy.deepcopy(model)
        torch.nn.init.normal_(attached(other).projector[2].weight)
        assert (response_logps(other, trees).summed - packed.summed).abs().max() > 1e-3
        text = [encode_sample(tok, f()) for f in SAMPLES.values()]
        assert (response_logps(model, text).summed - packed.summed).abs().max() > 1e-3
    batch = pack_trees(trees, pack_tokens=10_000)
    assert len(batch.soft_item) == sum(len(t.soft) + sum(len(b.soft) for b in t.branches) for t in trees)


def test_gradients_reach_the_projector_and_lora_never_the_table(embedded_tokenizer):
    tok = embedded_tokenizer
    model = add_lora(_hybrid(tok), r=4, alpha=8, dropout=0.0)
    items = attached(model)
    items.projector.requires_grad_(True)
    trees = _trees(tok)
    grads = []
    for scorer in (response_logps, naive_response_logps):
        model.zero_grad(set_to_none=True)
        scorer(model, trees).summed.sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    packed, naive = grads
    assert packed.keys() == naive.keys()
    proj = [n for n in packed if "prefrec_items.projector" in n]
    assert len(proj) == 4 and all(packed[n].abs().max() > 0 for n in proj)
    assert any("lora_A" in n for n in packed)
    for n in packed:  # PEFT makes the LoRA weights float32, so ~1e-8 of the largest gradient (measured 1.3e-8)
        assert (packed[n] - naive[n]).abs().max() <= 1e-6 * naive[n].abs().max(), n
    assert not items.table.requires_grad and items.table.grad is None
    assert "table" not in dict(items.named_parameters()) and "table" not in items.state_dict()


def test_text_only_models_take_the_input_ids_path_unchanged(embedded_tokenizer):
    tok = embedded_tokenizer
    plain = make_tiny_lm(tok).double()
    text = [encode_sample(tok, f()) for f in SAMPLES.values()]
    assert all(not t.soft and not any(b.soft for b in t.branches) for t in text)
    batch = pack_trees(text)
    assert set(model_inputs(plain, batch.input_ids, batch.soft_row, batch.soft_pos, batch.soft_item, "cpu")) == \
        {"input_ids"}
    # a hybrid model on text-only trees goes through its embeddings and gets exactly the plain model's numbers
    hybrid = _hybrid(tok)
    with torch.no_grad():
        assert torch.equal(response_logps(hybrid, text).summed, response_logps(plain, text).summed)
    with pytest.raises(ValueError, match="no item tokens attached"):
        response_logps(plain, _trees(tok))


def test_generation_feeds_the_soft_tokens(embedded_tokenizer):
    """Greedy answers equal a hand-written greedy loop: full forward on inputs_embeds, argmax, append."""
    tok = embedded_tokenizer
    model = _hybrid(tok).eval()  # float64: a random model's near-ties must not flip between the two paths
    samples = [_candidates_sample(), _candidates_sample("number")]
    got = generate_answers(model, tok, samples, max_new_tokens=5, batch_size=2, progress=False)
    for s, answer in zip(samples, got):
        tree = encode_sample(tok, s, which="chosen", items=KNOWN)
        ids = tree.prefix + tree.branches[0].question
        rows = [(0, p, r) for p, r in tree.prompt_soft(0)]
        r_, p_, i_ = (torch.tensor([x[j] for x in rows]) for j in range(3))
        out = []
        with torch.no_grad():
            for _ in range(5):
                emb = embed(base_model(model), torch.tensor([ids + out]), r_, p_, i_)
                nxt = int(model(inputs_embeds=emb).logits[0, -1].argmax())
                if nxt in (tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id):
                    break
                out.append(nxt)
        assert answer == tok.decode(out, skip_special_tokens=True).strip()
