"""Model loading and LoRA: adapters saved by prefrec load with plain transformers + peft, run folders resolve."""

import json

import pytest
import torch
from conftest import make_tiny_lm

from prefrec.errors import UserError
from prefrec.model import add_lora, is_run_dir, load_model, parse_dtype


def _lora_with_nonzero_b(model):
    peft_model = add_lora(model, r=4, alpha=8, dropout=0.0)
    # LoRA's B starts at zero (adapter = identity); perturb it so a wrong reload would show in the logits.
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return peft_model


def _saved_run(tmp_path, tokenizer, seed):
    """A tiny base model and a run folder holding a non-identity adapter on it; returns (the PEFT model, the run)."""
    base = make_tiny_lm(tokenizer, seed=seed)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    peft_model = _lora_with_nonzero_b(base).eval()
    run = tmp_path / "run"
    peft_model.save_pretrained(run / "adapter")
    (run / "run.json").write_text(json.dumps({"base_model": str(tmp_path / "base"), "stages": ["sft"]}))
    return peft_model, run


def test_lora_targets_and_trainable(tiny_lm):
    model, _ = tiny_lm
    peft_model = add_lora(model)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    for target in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert any(target in n for n in trainable)
    assert not any("mlp" in n for n in trainable)


def test_adapter_reloads_with_plain_transformers_and_peft(tmp_path, embedded_tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = make_tiny_lm(embedded_tokenizer, seed=1)
    base.save_pretrained(tmp_path / "base")
    peft_model = _lora_with_nonzero_b(base).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[1, 5, 9, 200, 31]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(plain, tmp_path / "adapter").eval()
    with torch.no_grad():
        got = reloaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_load_model_resolves_run_folder(tmp_path, embedded_tokenizer):
    peft_model, run = _saved_run(tmp_path, embedded_tokenizer, seed=2)
    assert is_run_dir(run)
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    model, tok = load_model(str(run), device="cpu")
    with torch.no_grad():
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert tok.pad_token_id is not None


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        load_model(str(tmp_path / "no-such-model"), device="cpu")


def test_parse_dtype():
    assert parse_dtype("bf16") is torch.bfloat16
    assert parse_dtype(None) is None
    with pytest.raises(UserError, match="dtype"):
        parse_dtype("int3")


@pytest.mark.slow
def test_embedded_model_loads_fp32_with_chat_template(embedded_lm):
    model, tok = embedded_lm
    assert model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tok.chat_template
    text = tok.apply_chat_template([{"role": "user", "content": "Name one film."}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer.strip()


@pytest.mark.parametrize("value", ["flash_attention_2", "flash_attention_3", "flex_attention", "sdpa2"])
def test_attn_implementation_without_4d_mask_support_is_rejected(value):
    """The packed scorer's 4D mask is honoured by eager and sdpa only: anything else is one clear error, raised
    before any model is loaded."""
    with pytest.raises(UserError, match=rf"attn_implementation '{value}': expected one of \['eager', 'sdpa'\]"):
        load_model("embedded", attn_implementation=value, device="cpu")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_merge_adapter_folds_the_adapter_into_the_base(tmp_path, embedded_tokenizer, dtype):
    """merge_adapter leaves no PEFT wrapper; in fp32 the logits equal the unmerged adapter's, in bf16 they are as
    close to the fp32 model's as the unmerged bf16 adapter's are (the merge rounds W + BA once more)."""
    peft_model, run = _saved_run(tmp_path, embedded_tokenizer, seed=3)
    ids = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        exact = peft_model(input_ids=ids).logits.double()
    unmerged, _ = load_model(str(run), device="cpu", dtype=dtype)
    merged, _ = load_model(str(run), device="cpu", dtype=dtype, merge_adapter=True)
    assert hasattr(unmerged, "peft_config") and not hasattr(merged, "peft_config")
    with torch.no_grad():
        err_unmerged = (unmerged(input_ids=ids).logits.double() - exact).abs().mean().item()
        err_merged = (merged(input_ids=ids).logits.double() - exact).abs().mean().item()
    if dtype == "fp32":
        assert err_unmerged < 1e-6 and err_merged < 1e-5
    else:
        assert 0 < err_merged < 2 * err_unmerged + 1e-3


# ---- issue 31: a damaged run or adapter folder is one clear error naming the file ---------------------------------

def test_truncated_adapter_weights_name_the_file(tmp_path, embedded_tokenizer):
    _, run = _saved_run(tmp_path, embedded_tokenizer, seed=4)
    weights = run / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(UserError, match=r"adapter_model\.safetensors: not a complete safetensors file"):
        load_model(str(run), device="cpu")
    weights.write_bytes(b"\x00" * 3)
    with pytest.raises(UserError, match=r"adapter_model\.safetensors: not a complete safetensors file"):
        load_model(str(run / "adapter"), device="cpu")


def test_corrupt_adapter_config_names_the_file_and_line(tmp_path, embedded_tokenizer):
    _, run = _saved_run(tmp_path, embedded_tokenizer, seed=4)
    cfg = run / "adapter" / "adapter_config.json"
    cfg.write_text('{\n  "r": 4,\n  \n}')
    for target in (run, run / "adapter"):
        with pytest.raises(UserError, match=r"adapter_config\.json: not valid JSON \(Expecting property name .*line 4"):
            load_model(str(target), device="cpu")


def test_missing_adapter_weights_name_the_folder(tmp_path, embedded_tokenizer):
    _, run = _saved_run(tmp_path, embedded_tokenizer, seed=4)
    (run / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(UserError, match=r"adapter: no adapter_model\.safetensors"):
        load_model(str(run), device="cpu")
    (run / "adapter" / "adapter_config.json").unlink()
    with pytest.raises(UserError, match=r"adapter: no adapter_config\.json"):
        load_model(str(run), device="cpu")


def test_model_cache_folders_get_the_ordinary_modes(tmp_path):
    """safetensors writes its files 0600 and mkdtemp its folders 0700; the converted cache gets 0644/0755."""
    import os
    import stat

    from prefrec.model import _save_folder

    def save(folder):
        os.close(os.open(folder / "model.safetensors", os.O_CREAT | os.O_WRONLY, 0o600))

    old = os.umask(0o022)
    try:
        out = _save_folder(tmp_path, tmp_path / "converted", save)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["converted"]


# ---- Hugging Face ids: the standard HF cache, revision pinning, HF_HUB_OFFLINE, trust_remote_code (issue 30) ----
# No test touches the network: ids are served from a cache folder built here, with HF_HUB_OFFLINE on, or reach a
# from_pretrained replaced by a recorder.

def _offline(monkeypatch, cache):
    """HF_HUB_OFFLINE on and the HF cache at `cache`, for this test (huggingface_hub reads both once, at import)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))


def _cache_snapshot(cache, repo_id, commit, model, tokenizer, refs=()):
    """Lay out one snapshot of `repo_id` as `hf download` leaves it: snapshots/<commit>/ and refs/<name> -> commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    model.save_pretrained(repo / "snapshots" / commit)
    tokenizer.save_pretrained(repo / "snapshots" / commit)
    for ref in refs:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)


def _no_network(monkeypatch):
    import transformers

    def refuse(*a, **kw):
        raise AssertionError("from_pretrained must not be reached")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def test_mistyped_paths_and_names_fail_at_once_without_the_network(tmp_path, monkeypatch):
    from prefrec.model import known_model_names

    _no_network(monkeypatch)
    with pytest.raises(UserError) as e:
        load_model("embeded")
    msg = str(e.value)
    assert "model 'embeded': not found" in msg and "run.json" in msg and "'embedded'" in msg
    assert all(known in msg for known in known_model_names())
    # anything that reads as a local path says "no such folder" (with the nearest name), never asks the Hub
    (tmp_path / "runs" / "tiny-dmpo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    for name, hint in (("runs/tiny-dpmo", "did you mean 'runs/tiny-dmpo'?"), ("./runs//x", "nearest existing"),
                       (str(tmp_path / "runs" / "sft-typo"), "nearest existing folder"), ("~/no-such-run-xyz", "")):
        with pytest.raises(UserError) as e:
            load_model(name)
        assert f"model {name!r}: no such folder" in str(e.value) and hint in str(e.value)
    with pytest.raises(UserError, match="not found"):  # an 'owner/name' whose owner is no local folder: an id
        load_model("no/such id")


def test_offline_and_not_cached_says_how_to_get_it(tmp_path, monkeypatch):
    _offline(monkeypatch, tmp_path / "hub")
    _no_network(monkeypatch)
    with pytest.raises(UserError) as e:
        load_model("some-org/some-model", revision="v1.0")
    msg = str(e.value)
    assert "HF_HUB_OFFLINE" in msg and "hf download some-org/some-model --revision v1.0" in msg
    assert str(tmp_path / "hub") in msg


def test_hub_id_loads_from_the_hf_cache_and_revision_pins_a_snapshot(tmp_path, monkeypatch, embedded_tokenizer):
    cache = tmp_path / "hub"
    first, second = make_tiny_lm(embedded_tokenizer, seed=1), make_tiny_lm(embedded_tokenizer, seed=2)
    commit1, commit2 = "1" * 40, "2" * 40
    _cache_snapshot(cache, "tiny-org/tiny-llama", commit1, first, embedded_tokenizer, refs=("main",))
    _cache_snapshot(cache, "tiny-org/tiny-llama", commit2, second, embedded_tokenizer, refs=("v2",))
    _offline(monkeypatch, cache)
    ids = torch.tensor([[3, 4, 5, 6]])
    for revision, expected in ((None, first), ("v2", second), (commit1, first), (commit2, second)):
        model, tok = load_model("tiny-org/tiny-llama", revision=revision, device="cpu")
        with torch.no_grad():
            torch.testing.assert_close(model(input_ids=ids).logits, expected(input_ids=ids).logits, rtol=0, atol=0)
        assert tok.pad_token_id is not None
    with pytest.raises(UserError, match="revision v3"):
        load_model("tiny-org/tiny-llama", revision="v3", device="cpu")


def test_hub_id_goes_to_from_pretrained_with_revision_and_no_remote_code(monkeypatch, tiny_lm):
    import transformers
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # online: prefrec hands the id to transformers
    calls = []

    def record(result):
        def from_pretrained(path, **kw):
            calls.append((path, kw))
            return result
        return from_pretrained

    model, tok = tiny_lm
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", record(tok))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", record(model))
    load_model("meta-llama/Llama-3.2-1B", revision="abc123", device="cpu")
    assert [c[0] for c in calls] == ["meta-llama/Llama-3.2-1B"] * 2
    assert all(kw["revision"] == "abc123" and kw["trust_remote_code"] is False for _, kw in calls)
    assert all("local_files_only" not in kw and "cache_dir" not in kw for _, kw in calls)  # the standard HF cache
    with pytest.warns(UserWarning, match="trust_remote_code is on"):
        load_model("some-org/custom-arch", trust_remote_code=True, device="cpu")
    assert calls[-1][1]["trust_remote_code"] is True


def test_model_folders_without_whole_safetensors_weights_get_one_line(tmp_path, embedded_tokenizer):
    """#43: an empty folder asked for sentencepiece, a pickle-only folder and a truncated model.safetensors ran to
    66-129-line tracebacks; each is now one UserError naming the folder or file, before transformers reads it."""
    from typer.testing import CliRunner

    from prefrec.cli import app

    folder = tmp_path / "m"
    make_tiny_lm(embedded_tokenizer).save_pretrained(folder)
    embedded_tokenizer.save_pretrained(folder)
    load_model(str(folder), device="cpu")  # whole: loads
    weights = folder / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[:-100])
    with pytest.raises(UserError, match=r"model\.safetensors: not a complete safetensors file"):
        load_model(str(folder), device="cpu")
    weights.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(UserError, match=r"safetensors weights only, and this folder has pytorch_model\.bin"):
        load_model(str(folder), device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "h.txt").write_text("A (1990)\n")
    (tmp_path / "c.txt").write_text("B (1991)\nC (1992)\n")
    r = CliRunner().invoke(app, ["rank", str(empty), "--history", str(tmp_path / "h.txt"),
                                 "--candidates", str(tmp_path / "c.txt")])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "no weights and no tokenizer" in r.output, r.output


def test_target_modules_the_model_lacks_are_named_with_what_it_has(embedded_tokenizer):
    with pytest.raises(UserError, match=r"lora.target_modules: \['q_proj_x'\] not in LlamaForCausalLM; its linear "
                                        r"layers are \[.*'q_proj'.*\]"):
        add_lora(make_tiny_lm(embedded_tokenizer), target_modules=["q_proj", "q_proj_x"])
    add_lora(make_tiny_lm(embedded_tokenizer), target_modules=["model.layers.0.self_attn.q_proj"])  # full names too
