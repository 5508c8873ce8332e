"""Greedy generation through vLLM, the optional backend of `prefrec eval --gen-backend vllm` on a CUDA GPU.

The model evaluation has loaded (a run's adapter already merged into its base) is written to a temporary folder in
safetensors and handed to vLLM, which generates from the very prompt token ids the transformers path uses
(prefrec.scoring.generation.generate_answers), greedily (temperature 0), stopping at the same end-of-turn ids. So
the two backends decode the same model from the same tokens; they may still differ where two tokens' logits tie
within the kernels' rounding. vLLM is not a dependency: `pip install vllm` where there is a GPU.
"""

from __future__ import annotations

import tempfile

from prefrec.errors import UserError

# vLLM reserves this share of the GPU's memory for its weights and KV cache; the transformers copy used for
# likelihood scoring is still on the same GPU, so the default 0.9 would not fit beside it
GPU_MEMORY_SHARE = 0.5


def require_vllm():
    """The vllm module, or one clear error when it is not installed or there is no CUDA GPU (checked before an
    evaluation starts, not after its likelihood scoring)."""
    try:
        import vllm
    except ImportError:
        raise UserError("--gen-backend vllm needs vLLM (pip install vllm, on a machine with a CUDA GPU); "
                        "the default backend is transformers") from None
    import torch

    if not torch.cuda.is_available():
        raise UserError("--gen-backend vllm needs a CUDA GPU; this machine has none (use the default transformers)")
    return vllm


def vllm_answers(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int, stop_ids: list[int],
                 progress: bool = True) -> list[str]:
    """The greedy answer text to each prompt (token ids), by vLLM on a copy of `model`."""
    vllm = require_vllm()
    with tempfile.TemporaryDirectory(prefix="prefrec-vllm-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        llm = vllm.LLM(model=tmp, tokenizer=tmp, dtype=dtype, seed=0, gpu_memory_utilization=GPU_MEMORY_SHARE)
        params = vllm.SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=list(stop_ids),
                                     skip_special_tokens=True)
        outs = llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=progress)
    return [o.outputs[0].text.strip() for o in outs]
