import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prefrec.paths import cache_dir, shared_data_dir

SHARED = shared_data_dir()


@pytest.fixture(scope="session", autouse=True)
def own_cache(tmp_path_factory):
    """The tests' prefrec cache: a session folder, never the user's. The CLI fuzzer runs `prefrec cache prune`
    with random options, and `--all` on the user's cache removed every trunk cache there (a 4.7 GB build of the
    ML-1M curve); tests that train with the trunk cache wrote there too. The converted models are the one
    thing shared, through a link, so that no session converts them again (conversion is deterministic)."""
    models = cache_dir() / "models"
    models.mkdir(exist_ok=True)
    box = tmp_path_factory.mktemp("prefrec-cache")
    (box / "models").symlink_to(models, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFREC_CACHE", str(box))
        yield box


@pytest.fixture
def shared_data():
    """Path to ../shared/data; skips the test with a clear reason when it is absent."""
    if SHARED is None:
        pytest.skip("../shared/data is absent (the offline dataset copies live beside the repository in CI)")
    return SHARED


@pytest.fixture(scope="session")
def embedded_tokenizer():
    """The embedded model's real tokenizer (chat template included); converts the model once per machine."""
    from transformers import AutoTokenizer

    from prefrec.model import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def make_tiny_lm(tokenizer, seed: int = 0, attn_implementation: str = "sdpa"):
    """A 2-layer random-init Llama with the real tokenizer's vocabulary: fast, but exercises the real code paths."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    cfg._attn_implementation = attn_implementation
    model = LlamaForCausalLM(cfg).float().eval()
    return model


@pytest.fixture
def tiny_lm(embedded_tokenizer):
    """(model, tokenizer): tiny random-init Llama (fp32, sdpa) + the embedded model's tokenizer."""
    return make_tiny_lm(embedded_tokenizer), embedded_tokenizer


@pytest.fixture(scope="session")
def embedded_lm():
    """(model, tokenizer): the real embedded SmolLM2-135M-Instruct in fp32 on CPU. Slow: use sparingly."""
    from prefrec.model import load_model

    return load_model("embedded", dtype="fp32", device="cpu")


def save_tiny_model(folder, tokenizer, seed: int = 0):
    """make_tiny_lm + the tokenizer saved as a local model folder (what a config's model.name points at)."""
    make_tiny_lm(tokenizer, seed=seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def train_two_processes(cfg_path, *launch: str, args: tuple = ()) -> subprocess.CompletedProcess:
    """`prefrec train cfg_path` on 2 CPU processes, from the repository root: DDP over gloo, launched by `accelerate
    launch --multi_gpu` as docs/train.md says, or what the `launch` options ask (say `--config_file fsdp.yaml`)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *(launch or ["--multi_gpu"]), "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "prefrec", "train", str(cfg_path), *args]
    return subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
