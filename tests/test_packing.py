"""prefrec.scoring.packing: the packed tree layout against an independent brute force, and packed log-probs and LoRA
gradients against the naive one-sequence-per-response path.

Tolerances (max abs difference, packed vs naive; measured on this machine, see docs/packing.md):
- float64 (tiny model, sdpa): the two paths agree to ~1e-14, so the layout itself is exact; asserted at 1e-10.
  With eager, transformers takes the attention softmax in float32 even for float64 models: measured 4e-8,
  asserted at 1e-6.
- float32 (tiny model): per-token log-probs measured ≤ 1e-6, asserted at FP32_ATOL = 2e-5;
  summed log-probs (-10 .. -130 here) measured ≤ 1.5e-5, i.e. one float32 ulp at |logp| ≈ 130, so they are asserted
  at FP32_ATOL plus a relative 1e-6 (≈ 8 ulps; sums are accumulated in a different order). LoRA gradients: relative
  to the largest gradient, measured ≤ 7e-7; asserted at GRAD_RTOL = 2e-5.
- float32 (embedded SmolLM2-135M): measured ≤ 3e-5 on summed log-probs, the same size as the naive path's own
  batch-vs-single-sequence difference (3e-5); asserted at 1e-4.
"""

import copy

import pytest
import torch
from conftest import make_tiny_lm

from prefrec.model import add_lora
from prefrec.samples import Comparison, Sample
from prefrec.scoring.encoding import PLAIN_ANSWER, SENTINEL, encode_sample, encode_texts
from prefrec.scoring.packing import (
    _fp32_weight,
    _head_logits,
    _token_logps,
    float32_head,
    mixed_precision,
    naive_response_logps,
    pack_trees,
    response_logps,
    score_trees,
)
from prefrec.scoring.trees import Branch, Scores, Tree
from prefrec.training.losses import PreferenceBatch, dmpo_loss

FP32_ATOL = 2e-5
SUM_RTOL = 1e-6
GRAD_RTOL = 2e-5
IMPLS = ["eager", "sdpa"]


def _ids(g, n, vocab=49152):
    return torch.randint(3, vocab, (n,), generator=g).tolist()


def _trees(seed=0):
    """Different prefix/question/response lengths, 3 branches sharing a prefix, an empty question, k up to 4."""
    g = torch.Generator().manual_seed(seed)
    return [
        Tree(_ids(g, 23), [Branch(_ids(g, 5), [_ids(g, 3), _ids(g, 7), _ids(g, 1)]),
                           Branch(_ids(g, 2), [_ids(g, 4), _ids(g, 4)]),
                           Branch(_ids(g, 6), [_ids(g, 2), _ids(g, 9)])]),
        Tree(_ids(g, 9), [Branch([], [_ids(g, 5), _ids(g, 2), _ids(g, 6), _ids(g, 3), _ids(g, 4)])]),
        Tree([], [Branch(_ids(g, 11), [_ids(g, 2)])]),
        Tree(_ids(g, 40), [Branch(_ids(g, 1), [_ids(g, 12), _ids(g, 3)])]),
    ]


@pytest.fixture(scope="module")
def tok(embedded_tokenizer):
    return embedded_tokenizer


def _lm(tok, impl, dtype=torch.float32, seed=0):
    return make_tiny_lm(tok, seed=seed, attn_implementation=impl).to(dtype)


def _with_lora(model, seed=0):
    """LoRA with random (not zero) B, so the gradients of both A and B are non-trivial."""
    model = add_lora(model, r=4, alpha=8, dropout=0.0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
    return model


# ------------------------------------------------------------------------------------------------ layout

def test_layout_matches_brute_force_tree_semantics():
    """Token j is visible to token i iff j ≤ i and j's node (prefix (), question (b,), response (b, i)) is an
    ancestor-or-self of i's node; i's position is the number of tokens it sees minus one."""
    trees = _trees()
    batch = pack_trees(trees, pack_tokens=80)  # packs some trees into one row: block-diagonal check too
    mask = batch.attention_mask(torch.float32)[:, 0]
    # reconstruct each row's token labels independently from the trees
    rows, cur, cur_len = [], [], 0
    for t, tree in enumerate(trees):
        if cur and cur_len + tree.n_tokens() <= 80:
            cur.append(t)
            cur_len += tree.n_tokens()
        else:
            if cur:
                rows.append(cur)
            cur, cur_len = [t], tree.n_tokens()
    rows.append(cur)
    assert batch.input_ids.shape[0] == len(rows)
    for r, row in enumerate(rows):
        labels, ids = [], []
        for t in row:
            tree = trees[t]
            labels += [(t,)] * len(tree.prefix)
            ids += tree.prefix
            for b, br in enumerate(tree.branches):
                labels += [(t, b)] * len(br.question)
                ids += br.question
                for i, resp in enumerate(br.responses):
                    labels += [(t, b, i)] * len(resp)
                    ids += resp
        n = len(labels)
        assert batch.input_ids[r, :n].tolist() == ids
        assert (batch.segment[r, n:] == -1).all()
        for i in range(n):
            seen = [j for j in range(i + 1) if labels[i][:len(labels[j])] == labels[j]]
            allowed = (mask[r, i, :n] == 0).nonzero().flatten().tolist()
            assert allowed == seen, (r, i)
            assert batch.position_ids[r, i].item() == len(seen) - 1
            assert (mask[r, i, n:] < 0).all()  # never padding
        for i in range(n, mask.shape[-1]):  # a padding query sees only itself
            assert (mask[r, i] == 0).nonzero().flatten().tolist() == [i]


def test_gather_positions_predict_each_response_token():
    tree = Tree([5, 6, 7], [Branch([8], [[10, 11], [12]]), Branch([], [[13, 14, 15]])])
    b = pack_trees([tree])
    # row: 5 6 7 | 8 | 10 11 | 12 | 13 14 15   (positions of the 3 responses' predictors)
    assert b.gather_pos.tolist() == [3, 4, 3, 2, 7, 8]
    assert b.targets.tolist() == [10, 11, 12, 13, 14, 15]
    assert b.position_ids[0].tolist() == [0, 1, 2, 3, 4, 5, 4, 3, 4, 5]
    assert b.index == [(0, 0, 0), (0, 0, 1), (0, 1, 0)] and b.lengths == [2, 1, 3]


def test_bad_trees_are_rejected():
    with pytest.raises(ValueError, match="empty prompt"):
        pack_trees([Tree([], [Branch([], [[1]])])])
    with pytest.raises(ValueError, match="empty"):
        pack_trees([Tree([1], [Branch([], [[]])])])


# ------------------------------------------------------------------------------------------------ vs naive

@pytest.mark.parametrize("impl", IMPLS)
def test_packed_equals_naive_float64(tok, impl):
    model = _lm(tok, impl, torch.float64)
    trees = _trees()
    with torch.no_grad():
        p = response_logps(model, trees, per_token=True)
        n = naive_response_logps(model, trees, per_token=True)
    assert p.summed.dtype == torch.float64 and p.index == n.index
    # transformers' eager attention takes its softmax in float32 even for a float64 model
    atol = 1e-10 if impl == "sdpa" else 1e-6
    torch.testing.assert_close(p.summed, n.summed, rtol=0, atol=atol)
    for a, b in zip(p.token_logps, n.token_logps):
        torch.testing.assert_close(a, b, rtol=0, atol=atol)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("pack_tokens", [None, 120])
def test_packed_equals_naive_float32(tok, impl, pack_tokens):
    model = _lm(tok, impl)
    trees = _trees(seed=1)
    with torch.no_grad():
        p = response_logps(model, trees, per_token=True, pack_tokens=pack_tokens)
        n = naive_response_logps(model, trees, per_token=True)
    assert p.summed.dtype == torch.float32 and torch.isfinite(p.summed).all()
    assert p.summed.shape == (sum(t.n_responses() for t in trees),)
    torch.testing.assert_close(p.summed, n.summed, rtol=SUM_RTOL, atol=FP32_ATOL)
    assert [len(x) for x in p.token_logps] == [len(r) for t in trees for b in t.branches for r in b.responses]
    for a, b in zip(p.token_logps, n.token_logps):
        torch.testing.assert_close(a, b, rtol=0, atol=FP32_ATOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_lora_gradients_equal_naive(tok, impl):
    model = _with_lora(_lm(tok, impl))
    params = [p for p in model.parameters() if p.requires_grad]
    assert params
    trees = _trees(seed=2)
    p = response_logps(model, trees)
    gp = torch.autograd.grad(p.summed.sum(), params)
    n = naive_response_logps(model, trees)
    gn = torch.autograd.grad(n.summed.sum(), params)
    scale = max(g.abs().max() for g in gn)
    assert scale > 0
    for a, b in zip(gp, gn):
        torch.testing.assert_close(a, b, rtol=0, atol=GRAD_RTOL * scale.item())
    assert sum(g.abs().sum() for g in gp) > 0  # not trivially zero


def test_bf16_lora_runs_in_bf16_with_fp32_master_weights(tok):
    """Mixed precision on a bf16 model: the LoRA matmuls take bf16 activations (PEFT alone casts them up to fp32,
    which doubled a CPU step), the adapters stay fp32 and get fp32 gradients, and packed log-probs and gradients
    still agree with the naive path (same precision) and with the fp32 model (bf16 tolerance)."""
    fp32 = _with_lora(_lm(tok, "sdpa"))
    model = copy.deepcopy(fp32).to(torch.bfloat16)
    for name, p in model.named_parameters():  # the master weights of a bf16 model, as PEFT keeps them
        if "lora_" in name:
            p.data = p.data.float()
    seen = []
    lora_a = next(m for n, m in model.named_modules() if n.endswith("q_proj.lora_A.default"))
    hook = lora_a.register_forward_hook(lambda mod, args, out: seen.append((args[0].dtype, out.dtype)))
    trees = _trees(seed=2)
    p = response_logps(model, trees)
    hook.remove()
    assert seen and all(d == (torch.bfloat16, torch.bfloat16) for d in seen), seen
    params = [q for q in model.parameters() if q.requires_grad]
    gp = torch.autograd.grad(p.summed.sum(), params)
    assert params and all(q.dtype == torch.float32 for q in params) and all(g.dtype == torch.float32 for g in gp)
    n = naive_response_logps(model, trees)
    gn = torch.autograd.grad(n.summed.sum(), params)
    assert p.summed.dtype == torch.float32
    torch.testing.assert_close(p.summed, n.summed, rtol=0, atol=0.05 * n.summed.abs().max().item())
    for a, b in zip(gp, gn):
        torch.testing.assert_close(a, b, rtol=0, atol=0.05 * max(g.abs().max() for g in gn).item())
    ref = response_logps(fp32, trees).summed.detach()
    torch.testing.assert_close(p.summed.detach(), ref, rtol=0, atol=0.05 * ref.abs().max().item())


def test_bf16_head_logits_are_float32_not_rounded_to_bf16(tok):
    """A bf16 model's LM head runs in float32: logits of magnitude 32-64 in bf16 lie 0.25 apart, which turned a
    one-token answer's margin (the letter format) into 0 or ±0.25. Against the head in float64 on the same hidden
    states, under the mixed-precision context evaluation and training use."""
    model = _lm(tok, "sdpa", torch.bfloat16)
    head = model.get_output_embeddings()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 3.0)  # logits of tens, as a trained LM's
    hidden = torch.randn(6, head.weight.shape[1], generator=g).to(torch.bfloat16)
    with mixed_precision(model, torch.device("cpu"), torch.bfloat16):
        logits = _head_logits(model, hidden)
    ref = hidden.double() @ head.weight.double().T
    assert ref.abs().max() > 32  # where bf16 spacing is 0.25
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits.double(), ref, rtol=0, atol=1e-4)
    margins = torch.stack([_token_logps(logits, torch.full((6,), t)) for t in (5, 6)]).diff(dim=0)
    assert len(set(margins.flatten().tolist())) == 6  # no two margins rounded together


def test_a_frozen_bf16_heads_float32_copy_is_made_once_and_follows_in_place_changes(tok):
    """The float32 copy of a frozen head's weight is reused across calls (scoring one tree per forward cast it per
    tree) and made again when the weight changes in place; a trainable weight is cast each call (its gradient)."""
    model = _lm(tok, "sdpa", torch.bfloat16)
    head = model.get_output_embeddings()
    head.weight.requires_grad_(False)
    hidden = torch.randn(4, head.weight.shape[1], generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    first = _head_logits(model, hidden)
    assert _fp32_weight(head.weight) is _fp32_weight(head.weight)
    torch.testing.assert_close(first.double(), hidden.double() @ head.weight.double().T, rtol=0, atol=1e-4)
    with torch.no_grad():
        head.weight.mul_(2.0)
    again = _head_logits(model, hidden)
    torch.testing.assert_close(again.double(), hidden.double() @ head.weight.double().T, rtol=0, atol=1e-4)
    assert not torch.equal(first, again)
    head.weight.requires_grad_(True)
    assert _fp32_weight(head.weight).requires_grad  # the gradient reaches a trainable head


def test_a_heads_float32_copy_first_made_under_inference_mode_still_trains(tok):
    """DMPO's reference pass (inference_mode) is the first forward of an alignment run: the copy it made was an
    inference tensor, and the first training step then failed ("Inference tensors cannot be saved for backward",
    an ML-1M DMPO cell). The copy is a normal tensor whatever the mode it was first asked for in."""
    model = _lm(tok, "sdpa", torch.bfloat16)
    head = model.get_output_embeddings()
    head.weight.requires_grad_(False)
    g = torch.Generator().manual_seed(2)
    with torch.inference_mode():
        scored = _head_logits(model, torch.randn(3, head.weight.shape[1], generator=g).to(torch.bfloat16))
    hidden = torch.randn(3, head.weight.shape[1], generator=g).to(torch.bfloat16).requires_grad_(True)
    _head_logits(model, hidden).logsumexp(-1).sum().backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all() and scored.is_inference()


def test_float32_head_breaks_a_bf16_logit_tie_in_greedy_generation(tok):
    """Two tokens whose logits differ by less than bf16's spacing at 40 (0.25): a bf16 head rounds them equal and
    greedy generation takes the lower id; under float32_head it takes the truly larger one, and the head is restored."""
    model = _lm(tok, "sdpa", torch.bfloat16).eval()
    ids = torch.tensor([[3, 9, 4, 12]])
    head = model.get_output_embeddings()
    with torch.no_grad():
        h = model.model(input_ids=ids).last_hidden_state[0, -1]
        low = (40.0 * h.float() / h.float().square().sum()).to(torch.bfloat16)  # logit 40 for token 5
        ulp = 2.0 ** (torch.floor(torch.log2(low.float().abs())) - 7)  # one bf16 step of each weight
        j = int(((ulp * h.float().abs()).nan_to_num() - 0.03).abs().argmin())  # the step that moves the logit ~0.03
        high = low.clone()
        high[j] = (low[j].float() + h[j].float().sign() * ulp[j]).to(torch.bfloat16)
        head.weight[5], head.weight[7] = low, high  # tied to the input embeddings: the prompt has neither id
        exact = (h.double() @ head.weight.double().T)[[5, 7]]
        rounded = model(input_ids=ids).logits[0, -1, [5, 7]]
    assert 0.01 < exact[1] - exact[0] < 0.1 and rounded[0] == rounded[1]  # the premise: a tie only in bf16
    greedy = {"max_new_tokens": 1, "do_sample": False, "pad_token_id": 0}
    assert model.generate(ids, **greedy)[0, -1] == 5
    with float32_head(model):
        assert model.generate(ids, **greedy)[0, -1] == 7
    assert model.get_output_embeddings() is head


def test_lora_loss_gradients_equal_naive_float64(tok):
    """A DMPO loss through both paths in float64. Llama's RMSNorm computes in float32 even for a float64 model, so the
    backward rounds gradients to float32 at every norm: the packed path rounds the prefix's summed gradient once,
    the naive path each copy's; measured 3e-8 relative to the largest gradient, asserted at 1e-6."""
    model = _with_lora(_lm(tok, "sdpa", torch.float64))
    params = [p for p in model.parameters() if p.requires_grad]
    trees = _trees(seed=3)[:2]
    trees[0] = Tree(trees[0].prefix, trees[0].branches[:1])  # 1 chosen + 2 rejected, like the second tree: k = 2
    trees[1] = Tree(trees[1].prefix, [Branch([], trees[1].branches[0].responses[:3])])
    grads = []
    for fn in (response_logps, naive_response_logps):
        chosen, rejected = fn(model, trees).chosen_rejected()
        batch = PreferenceBatch(chosen, rejected, torch.ones_like(chosen), torch.ones_like(rejected),
                                chosen.detach() - 0.3, rejected.detach() + 0.1)
        loss = dmpo_loss(batch, 0.5)[0].mean()
        grads.append(torch.autograd.grad(loss, params))
    scale = max(g.abs().max() for g in grads[1]).item()
    assert scale > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6 * scale)


def test_siblings_padding_and_batch_mates_are_invisible(tok):
    """Functional check of the mask: changing a sibling response, another branch's question, the batch mate, or the
    padding value leaves a response's log-probs unchanged; changing its own question does not."""
    model = _lm(tok, "sdpa", torch.float64)
    g = torch.Generator().manual_seed(4)
    base = Tree(_ids(g, 15), [Branch(_ids(g, 4), [_ids(g, 5), _ids(g, 6)]), Branch(_ids(g, 3), [_ids(g, 4)])])
    other = Tree(_ids(g, 50), [Branch(_ids(g, 2), [_ids(g, 3)])])
    with torch.no_grad():
        ref = response_logps(model, [base]).summed
        sib = copy.deepcopy(base)
        sib.branches[0].responses[0] = _ids(g, 9)
        assert torch.equal(response_logps(model, [sib]).summed[1:], ref[1:])
        q = copy.deepcopy(base)
        q.branches[0].question = _ids(g, 7)
        changed = response_logps(model, [q]).summed
        torch.testing.assert_close(changed[2], ref[2], rtol=0, atol=1e-12)
        assert (changed[:2] - ref[:2]).abs().min() > 1e-3
        mixed = response_logps(model, [base, other]).summed[:3]  # padded to the longer tree
        torch.testing.assert_close(mixed, ref, rtol=0, atol=1e-12)
        model.config.pad_token_id = 17
        torch.testing.assert_close(response_logps(model, [base, other]).summed[:3], ref, rtol=0, atol=1e-12)


def test_works_through_peft_and_disabled_adapter(tok):
    plain = _lm(tok, "sdpa", torch.float64)
    trees = _trees(seed=5)
    with torch.no_grad():
        before = response_logps(plain, trees).summed
    model = _with_lora(plain)
    with torch.no_grad():
        with_adapter = response_logps(model, trees).summed
        with model.disable_adapter():
            without = response_logps(model, trees).summed
    torch.testing.assert_close(without, before, rtol=0, atol=1e-12)
    assert (with_adapter - before).abs().max() > 1e-4


# ------------------------------------------------------------------------------------------------ Scores, batching

def test_nested_and_chosen_rejected():
    s = Scores(summed=torch.arange(7.0), token_logps=None,
               index=[(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 0, 2)])
    nested = s.nested()
    assert [[x.tolist() for x in t] for t in nested] == [[[0, 1], [2, 3]], [[4, 5, 6]]]
    chosen, rejected = s.chosen_rejected()
    assert chosen.tolist() == [1.0, 4.0] and rejected.tolist() == [[1.0, 3.0], [5.0, 6.0]]
    # pairs: each rejected response next to the chosen of its own branch (DPO's pairs); SFT trees keep (B,)
    chosen, rejected = s.chosen_rejected(pairs=True)
    assert chosen.tolist() == [[0.0, 2.0], [4.0, 4.0]] and rejected.tolist() == [[1.0, 3.0], [5.0, 6.0]]
    sft = Scores(summed=torch.arange(3.0), token_logps=None, index=[(0, 0, 0), (0, 1, 0), (1, 0, 0)])
    assert sft.chosen_rejected(pairs=True)[0].tolist() == [0.5, 2.0]


@pytest.mark.parametrize("budget", [10_000, 60])
def test_score_trees_batches_and_keeps_order(tok, budget):
    model = _lm(tok, "sdpa")
    trees = _trees(seed=6) + _trees(seed=7)
    out = score_trees(model, trees, max_tokens_per_batch=budget, per_token=True, progress=False)
    with torch.no_grad():
        ref = response_logps(model, trees, per_token=True)
    assert out.index == ref.index and not out.summed.requires_grad
    torch.testing.assert_close(out.summed, ref.summed, rtol=SUM_RTOL, atol=FP32_ATOL)
    for a, b in zip(out.token_logps, ref.token_logps):
        torch.testing.assert_close(a, b, rtol=0, atol=FP32_ATOL)


# ------------------------------------------------------------------------------------------------ encoding

def _sample(k=3):
    comps = [Comparison(question=f"Rank Heat (1995) and Movie {i}.", chosen=f"Heat (1995), Movie {i}",
                        rejected=[f"Movie {i}, Heat (1995)"]) for i in range(k)]
    return Sample(id="s1", task="pairwise", domain="movies",
                  prefix="The user watched: Star Wars (1977), Fargo (1996).\n", comparisons=comps)


def test_encode_sample_splits_the_chat_template_at_the_prefix(tok):
    sample = _sample()
    tree = encode_sample(tok, sample)
    assert len(tree.branches) == 3 and all(len(b.responses) == 2 for b in tree.branches)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for i, (c, b) in enumerate(zip(sample.comparisons, tree.branches)):
        full = tok.apply_chat_template([{"role": "user", "content": sample.prompt(i)}], tokenize=False,
                                       add_generation_prompt=True)
        assert tok.decode(tree.prefix + b.question) == full
        assert tok.decode(tree.prefix).endswith(sample.prefix)
        for text, resp in zip([c.chosen] + c.rejected, b.responses):
            assert resp[-1] == im_end and tok.decode(resp[:-1]) == text
    chosen_only = encode_sample(tok, sample, which="chosen")
    assert [len(b.responses) for b in chosen_only.branches] == [1, 1, 1]
    assert chosen_only.prefix == tree.prefix
    with pytest.raises(ValueError):
        encode_sample(tok, sample, which="rejected")


def test_encode_texts_without_chat_template(tok):
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    tree = encode_texts(plain, "History: A, B.\n", ["Next?"], [["C", "D"]])
    assert plain.decode(tree.prefix) == "History: A, B.\n"
    # base models: a separator before the answer, so the response's first token never merges with the prompt's
    assert plain.decode(tree.branches[0].question) == "Next?" + PLAIN_ANSWER == "Next?\n\nAnswer:\n"
    assert [plain.decode(r) for r in tree.branches[0].responses] == ["C" + plain.eos_token, "D" + plain.eos_token]


def test_template_that_renders_the_prefix_per_question_shares_nothing(tok):
    """A template whose text before the prefix depends on the whole message (here: its length) cannot share a
    prefix; each branch then carries its full prompt, still exactly the templated text."""
    odd = copy.deepcopy(tok)
    odd.chat_template = "{{ messages[0]['content'] | length }}: {{ messages[0]['content'] }}."
    tree = encode_texts(odd, "History: A, B. ", ["Next?", "And then, later?"], [["C"], ["D"]])
    assert tree.prefix == []
    for q, b in zip(["Next?", "And then, later?"], tree.branches):
        text = "History: A, B. " + q
        assert odd.decode(b.question) == f"{len(text) + len(SENTINEL)}: {text}."
    broken = copy.deepcopy(tok)
    broken.chat_template = "{{ messages[0]['content'][::-1] }}"
    with pytest.raises(ValueError, match="chat template"):
        encode_texts(broken, "P", ["Q"], [["R"]])


def test_encoded_tree_naive_sequences_are_the_template_tokens(tok):
    """The naive path sees prefix + question + response, i.e. the templated prompt followed by the answer."""
    tree = encode_texts(tok, "P: ", ["Q1", "Q2?"], [["a"], ["b", "c"]])
    model = _lm(tok, "sdpa", torch.float64)
    with torch.no_grad():
        p = response_logps(model, [tree]).summed
        n = naive_response_logps(model, [tree]).summed
    torch.testing.assert_close(p, n, rtol=0, atol=1e-10)


# ------------------------------------------------------------------------------------------------ real model

@pytest.mark.slow
def test_embedded_model_packed_equals_naive(embedded_lm):
    model, tok = embedded_lm
    tree = encode_texts(tok, "The user watched: Star Wars (1977), Blade Runner (1982), Fargo (1996).\n",
                        ["Which movie next? Answer with one title."],
                        [["Alien (1979)", "Toy Story (1995)", "Casablanca (1942)"]])
    with torch.no_grad():
        p = response_logps(model, [tree], per_token=True)
        n = naive_response_logps(model, [tree], per_token=True)
    assert torch.isfinite(p.summed).all() and (p.summed < 0).all()
    torch.testing.assert_close(p.summed, n.summed, rtol=0, atol=1e-4)
    for a, b in zip(p.token_logps, n.token_logps):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
