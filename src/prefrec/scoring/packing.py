"""One prompt, many responses: score every response of a sample in one packed forward pass (docs/packing.md).

A recommendation sample has one long prompt (the user's history, ~300–600 tokens) and k+1 short responses (item
titles, ~10–30 tokens). The usual way (TRL, the S-DPO code) feeds k+1 full sequences and so runs the prompt k+1
times. Here a sample is a *tree* and is fed once:

    Tree   = prefix (shared by everything: system prompt, history)
             + branches, each = question (this comparison's own prompt text, may be empty) + its responses

    packed row:  [ prefix | q_0 | r_00 | r_01 | q_1 | r_10 | r_11 | … | padding ]

    attention (✓ = may attend; within a segment causally):
                   prefix  q_0  r_00  r_01  q_1  r_10
        prefix       ✓
        q_0          ✓      ✓
        r_00         ✓      ✓    ✓
        r_01         ✓      ✓          ✓
        q_1          ✓                      ✓
        r_10         ✓                      ✓    ✓

    position_ids: the position along the token's own root-to-leaf path, i.e. what it would have in the naive
    sequence prefix + question + response: r_00 and r_01 both start at len(prefix) + len(q_0).

So every token sees exactly what it would see in its own naive sequence, at the same positions, and its hidden
state, hence its log-prob, is the same number up to floating-point summation order (tolerances measured in
tests/test_packing.py and docs/packing.md).

How transformers is driven (checked with transformers 5.23, Llama family, `eager` and `sdpa`):
- the mask is a 4D *additive float* mask (B, 1, L, L) in the model's dtype, 0 where allowed and dtype-min elsewhere;
  transformers passes a 4D mask through unchanged (`masking_utils._preprocess_mask_arguments`). A boolean 4D mask
  is read the other way round by `eager` (it is added to the scores), so we never pass one.
- `position_ids` are always passed together with the mask: without them positions run 0..L-1 and the responses are
  wrong; with them and no mask, transformers' packed-sequence detection cuts the row at every position restart.
- padding query rows attend to themselves only, so no softmax row is empty (no NaN); no real token sees padding.
- the LM head runs only at the positions that predict a response token (the decoder's hidden states are gathered
  first): full-vocabulary logits at every prompt position are most of the memory and a quarter of the time.
- log-softmax in (at least) float32 whatever the model's dtype, as logit[target] − logsumexp(logits).

Works when `model` is a transformers causal LM or a PEFT (LoRA-type) model wrapping one: it calls the decoder trunk
(`get_decoder()`) and the output embedding directly, applying the final-logit transforms of Gemma-2/3
(`final_logit_softcapping`), Cohere (`logit_scale`) and Granite (`logits_scaling`). Prompt-learning adapters (prefix
tuning, which add virtual tokens in PeftModel.forward) are not supported.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from dataclasses import dataclass, field
from typing import Generator, Sequence

import torch
from torch import Tensor
from transformers import AttentionInterface, DynamicCache

from prefrec.errors import UserError
from prefrec.scoring.budget import check_tokens, token_budget
from prefrec.scoring.soft import model_inputs
from prefrec.scoring.trees import Scores, Tree

# The packed scorer passes a 4D additive attention mask; only these implementations apply it as given
# (flash-attention kernels take no arbitrary mask, so responses would see each other).
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")

# ---------------------------------------------------------------------------------------------------------------
# Packing trees into rows

@dataclass
class PackedBatch:
    """Rows of packed trees, right-padded to one length L, plus where to read each response token's log-prob.

    input_ids, position_ids (B, L) long; segment (B, L): which tree of the row (-1 = padding); branch (B, L): branch
    within the tree (-1 = prefix); response (B, L): response within the tree (-1 = prefix or question).
    gather_row/gather_pos/targets (T,): the hidden state at (row, pos) predicts token `targets`; token_response (T,)
    the response n each of the T response tokens belongs to; lengths (N,) tokens per response.
    soft_row/soft_pos/soft_item (S,): the collaborative item tokens (prefrec.scoring.soft): table row soft_item[s]
    goes in at (soft_row[s], soft_pos[s]); empty for text-only trees.
    """

    input_ids: Tensor
    position_ids: Tensor
    segment: Tensor
    branch: Tensor
    response: Tensor
    gather_row: Tensor
    gather_pos: Tensor
    targets: Tensor
    token_response: Tensor
    lengths: list[int]
    index: list[tuple[int, int, int]]
    causal_prefix: int = 0  # every row's first P tokens attend causally to each other only (the shared prefix)
    soft_row: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    soft_pos: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    soft_item: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    tree_slots: list[tuple[int, int, int]] = field(default_factory=list)  # per tree: (row, first column, tokens)

    def model_inputs(self, base, device) -> dict:
        """The decoder's token inputs: input_ids, or inputs_embeds with the item tokens in place."""
        return model_inputs(base, self.input_ids, self.soft_row, self.soft_pos, self.soft_item, device)

    def attention_mask(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                       rows: tuple[int, int] | None = None) -> Tensor:
        """4D additive mask (B, 1, L, L): 0 where query i may attend key j, finfo(dtype).min elsewhere.

        allowed(i, j) = j ≤ i  ∧  same tree  ∧  key j is in the prefix or in i's branch
                        ∧  key j is in no response or in i's response;  plus every token attends to itself.
        rows=(start, stop): only queries start..stop-1 against keys 0..stop-1, (B, 1, stop-start, stop), for a
        forward in chunks over a KV cache (memory (stop-start)×stop instead of L×L).
        """
        start, stop = rows or (0, self.input_ids.shape[1])
        q, k = torch.arange(start, stop, device=device), torch.arange(stop, device=device)
        seg, br, rs = (x[:, :stop].to(device) for x in (self.segment, self.branch, self.response))
        qs, qb, qr = seg[:, start:], br[:, start:], rs[:, start:]
        allowed = (q[None, :, None] >= k[None, None, :]) & (qs[:, :, None] == seg[:, None, :])
        allowed &= (br[:, None, :] < 0) | (br[:, None, :] == qb[:, :, None])
        allowed &= (rs[:, None, :] < 0) | (rs[:, None, :] == qr[:, :, None])
        allowed &= (seg >= 0)[:, None, :]  # no one attends to padding...
        allowed |= q[None, :, None] == k[None, None, :]  # ...but a padding query sees itself: no empty row
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        return mask[:, None]


def _tree_columns(tree: Tree, t: int):
    """Flat per-token columns of one tree (ids, positions, branch, response), its response-token gathers and its
    item tokens (column, table row)."""
    if not tree.branches:
        raise ValueError(f"tree {t} has no branches")
    ids = list(tree.prefix)
    pos = list(range(len(tree.prefix)))
    br = [-1] * len(tree.prefix)
    rs = [-1] * len(tree.prefix)
    gathers = []  # per response: (positions in the tree's columns predicting its tokens, its token ids)
    index = []
    soft = list(tree.soft)  # the prefix's item tokens: once per tree, whatever the number of branches
    n_resp = 0
    for b, branch in enumerate(tree.branches):
        start = len(tree.prefix)
        prompt_len = start + len(branch.question)
        if prompt_len == 0:
            raise ValueError(f"tree {t} branch {b}: empty prompt (no prefix and no question)")
        soft += [(len(ids) + p, row) for p, row in branch.soft]
        ids += branch.question
        pos += range(start, prompt_len)
        br += [b] * len(branch.question)
        rs += [-1] * len(branch.question)
        # the prompt's last token: the end of the question, or of the prefix when the question is empty
        last_prompt = len(ids) - 1 if branch.question else len(tree.prefix) - 1
        if not branch.responses:
            raise ValueError(f"tree {t} branch {b}: no responses")
        for i, resp in enumerate(branch.responses):
            if not resp:
                raise ValueError(f"tree {t} branch {b} response {i}: empty")
            first = len(ids)
            ids += resp
            pos += range(prompt_len, prompt_len + len(resp))
            br += [b] * len(resp)
            rs += [n_resp] * len(resp)
            gathers.append(([last_prompt] + list(range(first, first + len(resp) - 1)), list(resp)))
            index.append((t, b, i))
            n_resp += 1
    return ids, pos, br, rs, gathers, index, soft


def pack_trees(trees: Sequence[Tree], *, pack_tokens: int | None = None, pad_id: int = 0) -> PackedBatch:
    """Lay trees out in rows: one tree per row (default), or with `pack_tokens` several consecutive trees per row
    while the row stays within pack_tokens tokens (block-diagonal attention between them; a longer tree gets a row
    of its own). Rows are right-padded with `pad_id` (never attended, so its value does not matter)."""
    rows: list[list[int]] = []  # tree indices per row
    row_len = 0
    for t, tree in enumerate(trees):
        n = tree.n_tokens()
        if rows and pack_tokens is not None and row_len + n <= pack_tokens:
            rows[-1].append(t)
            row_len += n
        else:
            rows.append([t])
            row_len = n
    cols = [_tree_columns(tree, t) for t, tree in enumerate(trees)]
    B, L = len(rows), max(sum(len(cols[t][0]) for t in row) for row in rows)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    position_ids = torch.zeros((B, L), dtype=torch.long)
    segment = torch.full((B, L), -1, dtype=torch.long)
    branch = torch.full((B, L), -1, dtype=torch.long)
    response = torch.full((B, L), -1, dtype=torch.long)
    # per response n (in tree order): its gather row/positions/targets
    per_response: dict[int, tuple[int, list[int], list[int]]] = {}
    index_of_tree: dict[int, list[tuple[int, int, int]]] = {}
    soft_rpi: list[tuple[int, int, int]] = []  # (row, position, table row) of every item token
    slots: dict[int, tuple[int, int, int]] = {}
    for r, row in enumerate(rows):
        offset = 0
        for s, t in enumerate(row):
            ids, pos, br, rs, gathers, index, soft = cols[t]
            soft_rpi += [(r, offset + c, item) for c, item in soft]
            n = len(ids)
            input_ids[r, offset:offset + n] = torch.tensor(ids)
            position_ids[r, offset:offset + n] = torch.tensor(pos)
            segment[r, offset:offset + n] = s
            branch[r, offset:offset + n] = torch.tensor(br)
            response[r, offset:offset + n] = torch.tensor(rs)
            for j, (where, targets) in enumerate(gathers):
                per_response[(t, j)] = (r, [offset + p for p in where], targets)
            index_of_tree[t] = index
            slots[t] = (r, offset, n)
            offset += n
    g_row, g_pos, tgt, tok_resp, lengths, index = [], [], [], [], [], []
    for t in range(len(trees)):
        for j, idx in enumerate(index_of_tree[t]):
            r, where, targets = per_response[(t, j)]
            n = len(index)
            g_row += [r] * len(where)
            g_pos += where
            tgt += targets
            tok_resp += [n] * len(targets)
            lengths.append(len(targets))
            index.append(idx)
    as_long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    prefix = min(len(trees[row[0]].prefix) for row in rows)
    soft_cols = [as_long([x[j] for x in soft_rpi]) for j in range(3)]
    return PackedBatch(input_ids, position_ids, segment, branch, response, as_long(g_row), as_long(g_pos),
                       as_long(tgt), as_long(tok_resp), lengths, index, causal_prefix=prefix,
                       soft_row=soft_cols[0], soft_pos=soft_cols[1], soft_item=soft_cols[2],
                       tree_slots=[slots[t] for t in range(len(trees))])


# ---------------------------------------------------------------------------------------------------------------
# Attention over a tree: a causal prefix, then a masked tail

TREE_ATTENTION = "prefrec_tree"


def tree_attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                   dropout: float = 0.0, scaling: float | None = None, prefrec_causal_prefix: int = 0, **kwargs):
    """Attention of a packed row in two SDPA calls instead of one with the whole (L, L) tree mask.

    The first P tokens of every row are the shared prefix: they attend causally among themselves only, so SDPA runs
    them with is_causal=True (the kernel's own causal path: no mask tensor, and the blocks above the diagonal are
    skipped). The other L − P queries (questions, responses, padding) attend with their rows of the tree mask,
    `attention_mask` (B, 1, L − P, L), over all L keys. The same numbers as one masked call, with about half the
    attention FLOPs for a prefix of ~80 % of the row. query (B, H, L, D); key, value (B, H_kv, L, D); returns
    (B, L, H, D) as transformers' attention functions do."""
    P = prefrec_causal_prefix
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: every query head reads its key/value head
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    parts = []
    if P:
        parts.append(torch.nn.functional.scaled_dot_product_attention(
            query[:, :, :P], key[:, :, :P], value[:, :, :P], is_causal=True, scale=scaling))
    if P < query.shape[2]:
        parts.append(torch.nn.functional.scaled_dot_product_attention(
            query[:, :, P:], key, value, attn_mask=attention_mask, scale=scaling))
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(TREE_ATTENTION, tree_attention)


SPLIT_ATTENTION = True  # False: one SDPA call with the whole tree mask, as before (benchmarks compare the two)


def _tree_kernel(base) -> bool:
    """Use the split attention for models loaded with SDPA (eager stays the reference path of the tests)."""
    return SPLIT_ATTENTION and getattr(base.config, "_attn_implementation", None) == "sdpa"


@contextlib.contextmanager
def _attention(base, split: int):
    """Run the forward with tree_attention when `split` > 0 (the model's config names its attention function, read
    by every attention layer at each call), and give the config its own back after."""
    if not split:
        yield
        return
    configs = {id(c): c for c in (base.config, getattr(base.config, "text_config", None)) if c is not None}
    before = {k: c._attn_implementation for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = TREE_ATTENTION
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation = before[k]


# ---------------------------------------------------------------------------------------------------------------
# Running part of the decoder (prefrec.scoring.trunk)

@contextlib.contextmanager
def layer_span(base, lo: int, hi: int | None, final_norm: bool):
    """A context in which the decoder's own forward runs only layers lo … hi−1, and its final norm only when
    `final_norm`. The family's own code still builds the masks and rotary embeddings; per-layer settings
    (`config.layer_types`: Gemma 3's sliding and full layers, Qwen's) are sliced the same way."""
    dec = base.get_decoder()
    layers, norm = dec.layers, getattr(dec, "norm", None)
    if norm is None and not final_norm:
        raise UserError(f"{type(dec).__name__}: no final `norm` module, so its layers cannot be run in two parts; "
                        "leave lora.layers unset")
    configs = [c for c in {id(c): c for c in (base.config, dec.config)}.values()
               if isinstance(getattr(c, "layer_types", None), list)]
    types = [c.layer_types for c in configs]
    try:
        dec.layers = torch.nn.ModuleList(list(layers)[lo:hi])
        if not final_norm:
            dec.norm = torch.nn.Identity()
        for c, t in zip(configs, types):
            c.layer_types = t[lo:hi]
        yield
    finally:
        dec.layers = layers
        if not final_norm:
            dec.norm = norm
        for c, t in zip(configs, types):
            c.layer_types = t


# ---------------------------------------------------------------------------------------------------------------
# Scoring

# the attribute of a transformers model that carries its prefrec.scoring.trunk.TrunkCache (trunk.attach)
TRUNK_ATTR = "prefrec_trunk"

def base_model(model):
    """The transformers model under a PEFT wrapper (LoRA layers are injected in place, so they still run)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _head_logits(base, hidden: Tensor) -> Tensor:
    """LM head on hidden states (..., H) -> float32 logits (..., V), with the model's final-logit transforms.

    The head's product runs in float32 even on a bf16 model, outside autocast: bf16 logits of magnitude 32-64 lie
    0.25 apart, so a one-token answer's margin (the letter format) came out as 0 or ±0.25 — on ML-1M validation,
    300 comparisons took three distinct values. The head is applied at response positions only, so the fp32
    product costs little (the float32 copy of a frozen head's weight is made once, `_fp32_weight`)."""
    head = base.get_output_embeddings()
    with torch.autocast(hidden.device.type, enabled=False):
        if isinstance(head, torch.nn.Linear):
            bias = None if head.bias is None else _at_least_fp32(head.bias)
            logits = torch.nn.functional.linear(_at_least_fp32(hidden), _fp32_weight(head.weight), bias)
        else:
            logits = head(hidden)
    cfg = base.config
    if getattr(cfg, "logits_scaling", None):  # Granite divides
        logits = logits / cfg.logits_scaling
    if getattr(cfg, "model_type", "") == "cohere" and getattr(cfg, "logit_scale", None):
        logits = logits * cfg.logit_scale
    logits = _at_least_fp32(logits)
    cap = getattr(cfg, "final_logit_softcapping", None)  # Gemma-2/3
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


class _Float32Head(torch.nn.Module):
    """A linear LM head whose product runs in float32 (as _head_logits), for generate() to call in its place."""

    def __init__(self, head: torch.nn.Linear):
        super().__init__()
        # plain tensors, not parameters: one cast for the whole generation, invisible to model.parameters()
        self.weight = _at_least_fp32(head.weight.detach())
        self.bias = None if head.bias is None else _at_least_fp32(head.bias.detach())

    def forward(self, hidden: Tensor) -> Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            return torch.nn.functional.linear(_at_least_fp32(hidden), self.weight, self.bias)


@contextlib.contextmanager
def float32_head(model):
    """A context in which the model's forward computes its LM head in float32, for greedy generation: a bf16
    head rounds logits of magnitude 32-64 to 0.25, so two tokens tie and argmax takes the lower id. The model's own
    logit transforms (softcapping, scaling) still follow the head. Restores the head on exit."""
    base = base_model(model)
    head = base.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.weight.dtype in (torch.float32, torch.float64):
        yield model
        return
    base.set_output_embeddings(_Float32Head(head))
    try:
        yield model
    finally:
        base.set_output_embeddings(head)


def _at_least_fp32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


# id(frozen half-precision head weight) -> (a weak reference to it, its version counter, its float32 copy): scoring
# one tree per forward (the CPU default) cast SmolLM2's 28M-entry head once per tree, 19 % of an ML-1M SFT cell's
# validation and steps (py-spy, 2 cores). Keyed by identity: a tensor's == is elementwise, so no WeakKeyDictionary
_FP32_WEIGHTS: dict[int, tuple] = {}


def _fp32_weight(w: Tensor) -> Tensor:
    """`w` in at least float32; for a frozen lower-precision weight, one copy reused until `w` changes in place."""
    if w.requires_grad or w.dtype in (torch.float32, torch.float64):
        return _at_least_fp32(w)
    hit = _FP32_WEIGHTS.get(id(w))
    if hit is not None and hit[0]() is w and hit[1] == w._version:
        return hit[2]
    # a normal tensor even when first asked for under inference_mode (DMPO's reference pass): an inference tensor
    # cannot be saved for the backward of the training steps that reuse it
    with torch.inference_mode(False):
        copy = w.detach().float()
    if hit is None:  # the entry goes when the weight does
        weakref.finalize(w, _FP32_WEIGHTS.pop, id(w), None)
    _FP32_WEIGHTS[id(w)] = (weakref.ref(w), w._version, copy)
    return copy


def _token_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits)[target] per row (T, V) -> (T,), computed as logit[target] − logsumexp(logits) in at least
    float32. More accurate than gathering from F.log_softmax in float32 (measured max error over 49k-token vocabularies:
    1.7e-6 vs 1.4e-5 against float64), and it never materialises a second (T, V) tensor."""
    return logits.gather(1, targets[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)


def mixed_precision(model, device: torch.device, dtype: torch.dtype):
    """A context in which a half-precision model runs every matmul in its precision, its LoRA adapters included.

    PEFT keeps LoRA weights in fp32 on a bf16 model (right: they are the trained master weights) and casts the
    activations up to fp32 for them, so 7 LoRA matmuls per layer ran in fp32 and the casts cost as much again.
    Under torch.autocast the adapters' matmuls take bf16 inputs while their weights and gradients stay fp32 (on a
    loaded AMX CPU, one thread: SFT step 2.79 -> 2.56 s, scoring 1.03 -> 0.75 s; fp32 4.74 and 1.76 s). Quiet, two
    threads, against fp32: SFT 1.35x, DMPO 1.16x, scoring 2.4x (benchmarks/results/train_throughput*.md). fp32
    models are left alone; fp16 autocast only on CUDA."""
    if dtype not in (torch.bfloat16, torch.float16) or (dtype == torch.float16 and device.type != "cuda"):
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    if hasattr(model, "get_base_model"):
        from peft.helpers import disable_input_dtype_casting

        stack.enter_context(disable_input_dtype_casting(model))
    stack.enter_context(torch.autocast(device.type, dtype=dtype))
    return stack


def _model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    emb = base_model(model).get_input_embeddings().weight
    return emb.device, emb.dtype


def _scores(token_logps: Tensor, token_response: Tensor, lengths: list[int], index, per_token: bool) -> Scores:
    summed = torch.zeros(len(lengths), dtype=token_logps.dtype, device=token_logps.device)
    summed = summed.index_add(0, token_response.to(token_logps.device), token_logps)
    return Scores(summed=summed, token_logps=list(token_logps.split(lengths)) if per_token else None, index=index)


def decoder_hidden(model, batch: PackedBatch, *, layers: tuple[int, int | None] | None = None,
                   final_norm: bool = True, inputs: dict | None = None) -> Tensor:
    """The decoder's hidden states (B, L, H) of a packed batch, under the tree mask and positions.

    layers=(lo, hi): run only decoder layers lo … hi−1 (prefrec.scoring.trunk.layer_span), from `inputs` (the
    stored states entering layer lo, as {"inputs_embeds": (B, L, H)}) or from the token embeddings; final_norm=False
    returns the states before the final norm (what enters the next layer)."""
    base = base_model(model)
    device, dtype = _model_device_dtype(model)
    split = batch.causal_prefix if _tree_kernel(base) else 0
    span = layer_span(base, *layers, final_norm) if layers is not None else contextlib.nullcontext()
    with mixed_precision(model, device, dtype), _attention(base, split), span:
        out = base.get_decoder()(
            **(inputs if inputs is not None else batch.model_inputs(base, device)),
            attention_mask=batch.attention_mask(dtype, device, rows=(split, batch.input_ids.shape[1])),
            position_ids=batch.position_ids.to(device),
            use_cache=False,
            prefrec_causal_prefix=split,
        )
    return out.last_hidden_state


def _placed(batch: PackedBatch, states: Sequence[Tensor], device, dtype) -> Tensor:
    """Each tree's stored states (n_tokens, H) at its columns of the packed rows: (B, L, H), zeros at padding."""
    B, L = batch.input_ids.shape
    out = torch.zeros(B, L, states[0].shape[-1], dtype=dtype, device=device)
    for (r, off, n), st in zip(batch.tree_slots, states):
        out[r, off:off + n] = st.to(device=device, dtype=dtype)
    return out


def response_logps(model, trees: Sequence[Tree], *, per_token: bool = False, pack_tokens: int | None = None) -> Scores:
    """Summed (and optionally per-token) log-probs of every response of every tree, in one forward pass.

    model: a causal LM (or a PEFT model around one). trees: B trees, one padded row each (or several per row with
    `pack_tokens`, see pack_trees). Returns Scores with summed (N,) float32, N = Σ responses, grad kept; call it
    under torch.no_grad()/inference_mode() when you do not need gradients (or use `score_trees`).
    A model with a trunk cache attached (prefrec.scoring.trunk.attach) runs only its top layers, from the stored
    states entering them: the same numbers as the full forward (tests/test_trunk.py).
    """
    if not trees:
        raise ValueError("response_logps: no trees")
    base = base_model(model)
    device, dtype = _model_device_dtype(model)
    batch = pack_trees(trees, pack_tokens=pack_tokens, pad_id=base.config.pad_token_id or 0)
    trunk = getattr(base, TRUNK_ATTR, None)
    if trunk is None:
        hidden = decoder_hidden(model, batch)
    else:
        states = {"inputs_embeds": _placed(batch, trunk.states(trees), device, dtype)}
        hidden = decoder_hidden(model, batch, layers=(trunk.start, None), inputs=states)
    with mixed_precision(model, device, dtype):
        logits = _head_logits(base, hidden[batch.gather_row.to(device), batch.gather_pos.to(device)])  # (T, V)
    logps = _token_logps(logits, batch.targets.to(device))
    return _scores(logps, batch.token_response, batch.lengths, batch.index, per_token)


def naive_response_logps(model, trees: Sequence[Tree], *, per_token: bool = False,
                         batch_size: int | None = None) -> Scores:
    """Reference path: one full sequence prefix + question + response per response, right-padded into one batch
    (or chunks of `batch_size` sequences) with an ordinary 2D padding mask and full-vocabulary logits at every
    position, as TRL's DPOTrainer does (its default, use_logits_to_keep=False): the decoder, then the same
    float32 head and log-softmax as the packed path (`model(...).logits` of a bf16 model are rounded to bf16).
    Same Scores layout as response_logps."""
    device, dtype = _model_device_dtype(model)
    base = base_model(model)
    pad_id = base.config.pad_token_id or 0
    seqs, index, softs = [], [], []
    for t, tree in enumerate(trees):
        for b, branch in enumerate(tree.branches):
            for i, resp in enumerate(branch.responses):
                seqs.append((tree.prefix + branch.question, resp))
                softs.append(tree.prompt_soft(b))  # each sequence computes its own copy of the prompt's soft tokens
                index.append((t, b, i))
    if not seqs:
        raise ValueError("naive_response_logps: no responses")
    step = batch_size or len(seqs)
    pieces = []
    for lo in range(0, len(seqs), step):
        chunk = seqs[lo:lo + step]
        L = max(len(p) + len(r) for p, r in chunk)
        ids = torch.full((len(chunk), L), pad_id, dtype=torch.long)
        attn = torch.zeros((len(chunk), L), dtype=torch.long)
        rows, cols, tgts = [], [], []
        for n, (p, r) in enumerate(chunk):
            ids[n, :len(p) + len(r)] = torch.tensor(p + r)
            attn[n, :len(p) + len(r)] = 1
            rows += [n] * len(r)
            cols += range(len(p) - 1, len(p) + len(r) - 1)
            tgts += r
        soft = [(n, p, row) for n, sp in enumerate(softs[lo:lo + step]) for p, row in sp]
        rows_pos_item = [torch.tensor([x[j] for x in soft], dtype=torch.long) for j in range(3)]
        with mixed_precision(model, device, dtype):
            inputs = model_inputs(base, ids, *rows_pos_item, device)
            hidden = base.get_decoder()(**inputs, attention_mask=attn.to(device), use_cache=False).last_hidden_state
            logits = _head_logits(base, hidden)  # full-vocabulary logits at every position, as a plain LM forward
        at = logits[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]  # (T, V)
        pieces.append(_token_logps(at, torch.tensor(tgts, device=device)))
    token_logps = torch.cat(pieces)
    lengths = [len(r) for _, r in seqs]
    summed = torch.stack([x.sum() for x in token_logps.split(lengths)])
    return Scores(summed=summed, token_logps=list(token_logps.split(lengths)) if per_token else None, index=index)


def score_trees(model, trees: Sequence[Tree], *, max_tokens_per_batch: int = 4096, per_token: bool = False,
                pack_tokens: int | None = None, progress: bool = True, desc: str = "scoring",
                max_tokens: int | None = None) -> Scores:
    """Evaluation helper: response_logps over a long list of trees under torch.inference_mode(), in batches of at
    most `max_tokens_per_batch` padded tokens (rows × longest row; a longer tree is a batch of its own), longest trees
    first to waste little padding, with a tqdm bar. Returns Scores in the order of `trees` (index as usual).
    Every tree must fit the token budget (prefrec.scoring.budget: the model's context, and `max_tokens` if given); one that
    does not is refused before any forward pass."""
    from tqdm.auto import tqdm


    if not trees:
        return Scores(summed=torch.zeros(0), token_logps=[] if per_token else None, index=[])
    budget = token_budget(model, max_tokens)
    for t, tree in enumerate(trees):
        check_tokens(tree.n_tokens(), budget, f"{desc}: item {t} (0-based, in input order)")
    trunk = getattr(base_model(model), TRUNK_ATTR, None)
    if trunk is not None:  # store the states of every tree first: the next method or adapter reads them
        trunk.ensure(trees, max_tokens_per_batch=max(max_tokens_per_batch, 4096), progress=progress)
    order = sorted(range(len(trees)), key=lambda t: -trees[t].n_tokens())
    batches, cur = [], []
    for t in order:
        longest = trees[cur[0]].n_tokens() if cur else trees[t].n_tokens()  # sorted: the first is the longest
        if cur and (len(cur) + 1) * longest > max_tokens_per_batch:
            batches.append(cur)
            cur = []
        cur.append(t)
    if cur:
        batches.append(cur)
    summed: dict[int, Tensor] = {}
    tokens: dict[int, list[Tensor]] = {}
    with torch.inference_mode(), tqdm(total=len(trees), desc=desc, unit="tree", disable=not progress) as bar:
        for batch in batches:
            s = response_logps(model, [trees[t] for t in batch], per_token=per_token, pack_tokens=pack_tokens)
            counts = [trees[t].n_responses() for t in batch]
            for t, part in zip(batch, s.summed.cpu().split(counts)):
                summed[t] = part
            if per_token:
                parts = iter([x.cpu() for x in s.token_logps])
                for t, c in zip(batch, counts):
                    tokens[t] = [next(parts) for _ in range(c)]
            bar.update(len(batch))
    index = [(t, b, i) for t, tree in enumerate(trees) for b, br in enumerate(tree.branches)
             for i in range(len(br.responses))]
    return Scores(summed=torch.cat([summed[t] for t in range(len(trees))]),
                  token_logps=[x for t in range(len(trees)) for x in tokens[t]] if per_token else None, index=index)


def chunked_response_logps(model, tree: Tree, *, chunk_tokens: int = 256, per_token: bool = False
                           ) -> Generator[int, None, list[float] | tuple[list[float], list[list[float]]]]:
    """Summed log-prob of every response of `tree` (as packing.response_logps), computed in forward chunks of
    `chunk_tokens` query tokens over a KV cache. A generator: it yields the number of tokens done after each chunk,
    so a caller can stop between chunks (client gone, time limit) or interleave other work, and returns the scores;
    with per_token, (scores, each response's token log-probs in order), for the serving page's picture.

    Each chunk's mask is (chunk × tokens so far) and its LM head runs only at its own response positions, so memory
    is bounded by chunk_tokens × budget instead of L × L. The cache is a plain DynamicCache (full attention on every
    layer), so the result equals the one-shot packed forward up to floating-point summation order."""
    base = base_model(model)
    device, dtype = _model_device_dtype(model)
    batch = pack_trees([tree], pad_id=base.config.pad_token_id or 0)
    L = batch.input_ids.shape[1]
    logps = torch.zeros(len(batch.targets), dtype=torch.float64)
    decoder = base.get_decoder()
    # transformers 5.24 renamed the decoder's `past_key_values` argument to `cache` (the old name still works, with
    # a deprecation warning per call)
    cache_arg = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    cache = DynamicCache()
    with torch.inference_mode(), mixed_precision(model, device, dtype):
        inputs = batch.model_inputs(base, device)  # input_ids, or inputs_embeds with the item tokens in place
        for start in range(0, L, chunk_tokens):
            stop = min(L, start + chunk_tokens)
            out = decoder(**{key: x[:, start:stop] for key, x in inputs.items()},
                          attention_mask=batch.attention_mask(dtype, device, rows=(start, stop)),
                          position_ids=batch.position_ids[:, start:stop].to(device), use_cache=True,
                          **{cache_arg: cache})
            here = ((batch.gather_pos >= start) & (batch.gather_pos < stop)).nonzero()[:, 0]
            if len(here):
                hidden = out.last_hidden_state[0, (batch.gather_pos[here] - start).to(device)]
                logps[here] = _token_logps(_head_logits(base, hidden), batch.targets[here].to(device)).double().cpu()
            yield stop
    summed = torch.zeros(len(batch.lengths), dtype=torch.float64).index_add_(0, batch.token_response, logps)
    if not per_token:
        return summed.tolist()
    # targets are laid out response by response, each in token order (pack_trees)
    return summed.tolist(), [x.tolist() for x in logps.split(batch.lengths)]
