"""The machine's matmul ceiling and the useful FLOPs of a step, for "fraction of the ceiling" (CPU) and MFU (GPU).

Counting (per forward pass over one row of T tokens, of which R are response tokens whose log-probs are read):

    forward = 2 N T  +  4 n_layers d P  +  2 V d R

N = parameters of the transformer body (embedding table excluded: a lookup, not a matmul), P the causal (query, key)
pairs that carry information (T^2/2 for one plain row; for a packed tree the prompt's pairs plus each response's with
the prompt and itself), the middle term QK^T and AV (2 d FLOPs each per pair), the last the LM head at the
response positions only (prefrec never computes logits at prompt positions; a peer that does is not credited for
them). A LoRA training step with a frozen base costs forward + the input gradients of the backward = 2 x forward (no
weight gradients for the frozen matrices; LoRA's own are negligible), plus one forward when the reference pass runs
inside the step. These are *useful* FLOPs: padding, the dense mask's masked half and recomputation earn nothing.
"""

from __future__ import annotations

import torch

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_gflops(device: str = "cpu", dtype: str = "fp32", n: int | None = None, repeats: int = 5) -> float:
    """Achieved dense matmul rate, GFLOP/s (prefrec.model.matmul_gflops): median of `repeats` torch.mm of two n x n
    matrices (n = 2048 on CPU, 8192 on GPU), at the current torch thread count."""
    from prefrec.model import matmul_gflops as measure

    return measure(_DTYPES[dtype], n or (2048 if device == "cpu" else 8192), repeats, device)


def body_parameters(model) -> tuple[int, int]:
    """(N, V*d): non-embedding parameters of the base model (LoRA excluded) and the size of the LM head."""
    cfg = model.config
    head = cfg.vocab_size * cfg.hidden_size
    total = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    # tied embeddings are stored once; untied ones add a second V x d matrix that is the LM head itself
    embeddings = head * (1 if getattr(cfg, "tie_word_embeddings", True) else 2)
    return total - embeddings, head


def attention_pairs(prompt: int, responses: list[int], packed: bool) -> int:
    """Causal (query, key) pairs that carry information: packed = one prompt then every response attending to the
    prompt and its own earlier tokens (what prefrec's tree mask allows); naive = one row of prompt + response each."""
    if packed:
        return prompt * (prompt + 1) // 2 + sum(r * prompt + r * (r + 1) // 2 for r in responses)
    return sum((prompt + r) * (prompt + r + 1) // 2 for r in responses)


def forward_flops(model, tokens: int, pairs: int, response_tokens: int) -> float:
    """Useful FLOPs of one forward pass: `tokens` fed, `pairs` attention pairs, `response_tokens` scored."""
    n_body, head = body_parameters(model)
    cfg = model.config
    return 2 * n_body * tokens + 4 * cfg.num_hidden_layers * cfg.hidden_size * pairs + 2 * head * response_tokens


def tree_forward_flops(model, tree, packed: bool = True) -> float:
    """Useful FLOPs of one forward pass over a prefrec Tree (any number of branches): packed = the tree as one row
    (prefix once, each question after it, each response after its question), naive = one row per response."""
    p = len(tree.prefix)
    lengths = [[len(r) for r in b.responses] for b in tree.branches]
    per_branch = [attention_pairs(p + len(b.question), ls, packed) for b, ls in zip(tree.branches, lengths)]
    shared = p * (p + 1) // 2 if packed else 0  # the prefix's own pairs, counted once per branch above
    pairs = shared + sum(x - shared for x in per_branch)
    tokens = tree.n_tokens() if packed else tree.n_naive_tokens()
    return forward_flops(model, tokens, pairs, sum(map(sum, lengths)))
