"""prefrec.scoring.trunk: log-probs and LoRA gradients from the stored trunk states against the plain forward of the
same top-N LoRA model, on tiny random models of every family the tests build; the cache's keys and guards.

Tolerances: float32, max abs difference ≤ 1e-5 on summed and per-token log-probs (the stored states are the numbers
the full forward computes; only the batching of the bottom pass, hence the summation order, differs), LoRA
gradients relative to the largest ≤ 1e-5."""

import os
import shutil
import time

import pytest
import torch
from conftest import make_tiny_lm
from transformers import AutoConfig, AutoModelForCausalLM

from prefrec.errors import UserError
from prefrec.model import add_lora
from prefrec.scoring import trunk as tk
from prefrec.scoring.packing import response_logps
from prefrec.scoring.trees import Branch, Tree

ATOL = 1e-5
VOCAB = 512


def _ids(g, n):
    return torch.randint(3, VOCAB, (n,), generator=g).tolist()


def _trees(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        Tree(_ids(g, 21), [Branch(_ids(g, 4), [_ids(g, 3), _ids(g, 5)]), Branch(_ids(g, 2), [_ids(g, 4), _ids(g, 1)])]),
        Tree(_ids(g, 9), [Branch([], [_ids(g, 5), _ids(g, 2), _ids(g, 6)])]),
        Tree(_ids(g, 33), [Branch(_ids(g, 1), [_ids(g, 7), _ids(g, 3)])]),
    ]


FAMILIES = {
    "llama": {},
    "mistral": {},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "gemma3_text": {"head_dim": 16, "sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"] * 2,
                    "final_logit_softcapping": 30.0},
}


def _family_lm(family: str, seed: int = 0, impl: str = "sdpa"):
    """A 4-layer random-init model of `family`: small, but the family's own mask, rotary and layer_types code."""
    cfg = AutoConfig.for_model(family, vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                               pad_token_id=0, **FAMILIES[family])
    cfg._attn_implementation = impl
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).float().eval()


def _top_lora(model, n=2, seed=0):
    """LoRA on the top n layers with random (not zero) B, so gradients of A and B are non-trivial."""
    model = add_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "o_proj"], layers=n)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("pack_tokens", [None, 200])
def test_cached_logps_and_gradients_equal_the_full_forward(tmp_path, family, pack_tokens):
    model = _top_lora(_family_lm(family))
    lora_layers = {int(n.split("layers.")[1].split(".")[0]) for n, _ in model.named_parameters() if "lora_" in n}
    assert lora_layers == {2, 3}  # PEFT's layers_to_transform put LoRA on the top two only
    params = [p for p in model.parameters() if p.requires_grad]
    trees = _trees(1)
    full = response_logps(model, trees, per_token=True, pack_tokens=pack_tokens)
    g_full = torch.autograd.grad(full.summed.sum(), params)
    cache = tk.TrunkCache(tmp_path, model, start=2)
    assert cache.ensure(trees) == len(trees)
    tk.attach(model, cache)
    try:
        got = response_logps(model, trees, per_token=True, pack_tokens=pack_tokens)
        g_got = torch.autograd.grad(got.summed.sum(), params)
    finally:
        tk.attach(model, None)
    assert cache.computed == 0  # every state came from the shard
    torch.testing.assert_close(got.summed, full.summed, rtol=0, atol=ATOL)
    for a, b in zip(got.token_logps, full.token_logps):
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)
    scale = max(g.abs().max() for g in g_full).item()
    assert scale > 0
    for a, b in zip(g_got, g_full):
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL * scale)


def test_states_of_unstored_trees_are_computed_not_stored(tmp_path):
    model = _top_lora(_family_lm("llama"))
    cache = tk.TrunkCache(tmp_path, model, start=2)
    trees = _trees(2)
    tk.attach(model, cache)
    with torch.no_grad():
        got = response_logps(model, trees).summed
    tk.attach(model, None)
    with torch.no_grad():
        full = response_logps(model, trees).summed
    torch.testing.assert_close(got, full, rtol=0, atol=ATOL)
    assert cache.computed == len(trees) and cache.built == 0 and not list(cache.folder.glob("shard-*"))


def test_a_changed_tree_is_computed_anew_never_reused(tmp_path):
    model = _top_lora(_family_lm("llama"))
    trees = _trees(3)
    cache = tk.TrunkCache(tmp_path, model, start=2)
    cache.ensure(trees)
    changed = Tree(list(trees[0].prefix), trees[0].branches)
    changed.prefix[5] = (changed.prefix[5] + 1) % VOCAB
    assert tk.tree_key(changed) != tk.tree_key(trees[0])
    assert cache.missing([changed, trees[1]]) == [0]


def test_another_model_or_layer_gets_another_folder(tmp_path):
    """A stale cache is never read: other bottom weights, another start layer or dtype change the fingerprint."""
    a = _top_lora(_family_lm("llama", seed=0))
    b = _top_lora(_family_lm("llama", seed=0))
    with torch.no_grad():  # the same model but one bottom layer retrained
        b.get_base_model().model.layers[1].mlp.up_proj.weight.mul_(1.01)
    trees = _trees(4)
    ca = tk.TrunkCache(tmp_path, a, start=2)
    ca.ensure(trees)
    cb = tk.TrunkCache(tmp_path, b, start=2)
    assert cb.folder != ca.folder and cb.missing(trees) == [0, 1, 2]
    assert tk.TrunkCache(tmp_path, _top_lora(_family_lm("llama", seed=0), n=1), start=3).folder != ca.folder
    # the top layers (and the adapter) do not enter the fingerprint: every adapter of a grid shares one cache
    with torch.no_grad():
        a.get_base_model().model.layers[3].mlp.up_proj.weight.mul_(1.01)
    assert tk.TrunkCache(tmp_path, a, start=2).folder == ca.folder


def test_a_shard_of_another_model_in_the_folder_is_refused(tmp_path):
    a = _top_lora(_family_lm("llama", seed=0))
    b = _top_lora(_family_lm("llama", seed=1))
    trees = _trees(5)
    ca, cb = tk.TrunkCache(tmp_path, a, start=2), tk.TrunkCache(tmp_path, b, start=2)
    cb.ensure(trees)
    shard = next(cb.folder.glob("shard-*.safetensors"))
    ca.folder.mkdir(parents=True, exist_ok=True)
    os.replace(shard, ca.folder / shard.name)
    with pytest.raises(UserError, match="another model"):
        tk.TrunkCache(tmp_path, a, start=2)


def test_lora_below_the_start_layer_is_refused(tmp_path):
    model = add_lora(_family_lm("llama"), r=4, alpha=8, dropout=0.0)  # every layer
    with pytest.raises(UserError, match="not frozen"):
        tk.TrunkCache(tmp_path, model, start=2)
    assert tk.frozen_below(model, 0) is None  # the embeddings alone are frozen


def test_layers_out_of_range_is_one_clear_error():
    with pytest.raises(UserError, match="4 decoder layers"):
        add_lora(_family_lm("llama"), layers=5)


def test_too_little_disk_is_refused_before_any_work(tmp_path, monkeypatch):
    model = _top_lora(_family_lm("llama"))
    cache = tk.TrunkCache(tmp_path, model, start=2)
    monkeypatch.setattr(tk.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 1 << 30, 1 << 20))
    with pytest.raises(UserError, match="MiB needed"):
        cache.ensure(_trees(6))
    assert not list(cache.folder.glob("*.safetensors"))


def test_a_killed_builds_temp_file_is_removed_and_never_read(tmp_path):
    model = _top_lora(_family_lm("llama"))
    cache = tk.TrunkCache(tmp_path, model, start=2)
    cache.folder.mkdir(parents=True)
    dead = cache.folder / ".shard-abc.safetensors.x1.999999999.tmp"
    dead.write_bytes(b"half written")
    cache.refresh()  # not a shard: never read
    cache.ensure(_trees(7))
    assert not dead.exists()


def test_the_embedded_tokenizer_model_works_too(embedded_tokenizer, tmp_path):
    """The 2-layer Llama of the other tests, LoRA on its top layer, with real encoded samples' vocabulary."""
    model = add_lora(make_tiny_lm(embedded_tokenizer), r=4, alpha=8, dropout=0.0, layers=1)
    g = torch.Generator().manual_seed(0)
    trees = [Tree(torch.randint(3, 49152, (30,), generator=g).tolist(), [Branch([5, 6], [[7, 8], [9]])])]
    with torch.no_grad():
        full = response_logps(model, trees).summed
        cache = tk.TrunkCache(tmp_path, model, start=1)
        cache.ensure(trees)
        tk.attach(model, cache)
        got = response_logps(model, trees).summed
        tk.attach(model, None)
    torch.testing.assert_close(got, full, rtol=0, atol=ATOL)


def _age(folder, days):
    """Set every file of a cache folder `days` back in time (its last use included)."""
    then = time.time() - days * 86400
    for p in folder.iterdir():
        os.utime(p, (then, then))


def test_list_and_prune_remove_only_idle_caches_of_prefrec(tmp_path):
    """`prefrec cache list|prune`: a cache opened recently is kept, an idle one is removed (dry run: not), a folder
    holding a file prefrec did not write and a cache being built by a live process are never removed."""
    models = [_top_lora(_family_lm("llama", seed=seed)) for seed in range(3)]  # three bottoms: three folders
    old, recent, building = (tk.TrunkCache(tmp_path, m, start=2) for m in models)
    for t, cache in enumerate((old, recent, building)):
        cache.ensure(_trees(t))
    (building.folder / f".shard-abc.{os.getpid()}.tmp").write_bytes(b"")  # this live process "builds" it
    users = tmp_path / "notes"
    users.mkdir()
    (users / "mine.txt").write_text("keep me")
    for folder in (old.folder, building.folder, users):
        _age(folder, 40)
    listed = {os.path.basename(c["folder"]): c for c in tk.stored_caches(tmp_path)}
    assert listed[old.folder.name]["trees"] == 3 and listed[old.folder.name]["start_layer"] == "2"
    assert listed[old.folder.name]["owned"] and not listed["notes"]["owned"]
    assert listed[building.folder.name]["building"] == os.getpid()
    dry = tk.prune(tmp_path, 30 * 86400, now=time.time(), dry_run=True)
    assert [c["action"] for c in dry if c["folder"] == str(old.folder)] == ["would remove"] and old.folder.is_dir()
    done = {os.path.basename(c["folder"]): c["action"] for c in tk.prune(tmp_path, 30 * 86400, now=time.time())}
    assert done[old.folder.name] == "removed" and not old.folder.exists()
    assert done[recent.folder.name] == "kept" and recent.folder.is_dir()
    assert done["notes"].startswith("skipped") and (users / "mine.txt").read_text() == "keep me"
    assert done[building.folder.name].startswith("skipped: pid") and building.folder.is_dir()
    # opening a cache marks it used: an old cache read by a run is not idle
    _age(recent.folder, 40)
    tk.TrunkCache(tmp_path, models[1], start=2)
    again = {c["folder"]: c["action"] for c in tk.prune(tmp_path, 30 * 86400, now=time.time(), dry_run=True)}
    assert again[str(recent.folder)] == "kept"


def test_a_build_stores_a_shard_per_chunk_and_a_killed_build_keeps_its_finished_shards(tmp_path, monkeypatch):
    """ensure() writes a shard every `shard_trees` trees: when the build dies in its third chunk, the first two
    chunks' states are stored and read back, and the next build computes only the trees it lost."""
    model = _top_lora(_family_lm("llama"))
    trees = _trees(8) + _trees(9) + _trees(10)  # 9 trees
    cache = tk.TrunkCache(tmp_path, model, start=2)
    real, calls = tk.bottom_states, []

    def dies_on_the_third_chunk(m, ts, start):
        calls.append(len(ts))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(m, ts, start)

    monkeypatch.setattr(tk, "bottom_states", dies_on_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        cache.ensure(trees, max_tokens_per_batch=1 << 16, shard_trees=4)
    monkeypatch.setattr(tk, "bottom_states", real)
    again = tk.TrunkCache(tmp_path, model, start=2)
    assert len(list(again.folder.glob("shard-*.safetensors"))) == 2 and len(again.missing(trees)) == 1
    assert again.ensure(trees) == 1 and not again.missing(trees)
    with torch.no_grad():
        want = real(model, trees, 2)
        for got, w in zip(again.states(trees), want):
            torch.testing.assert_close(got, w, rtol=0, atol=ATOL)
    assert again.computed == 0


def test_the_tests_never_touch_the_users_cache(own_cache, tmp_path):
    """`prefrec cache prune --all` (the CLI fuzzer draws it) removes trunk caches under the tests' own folder only."""
    from typer.testing import CliRunner

    from prefrec.cli import app
    from prefrec.paths import cache_dir

    assert cache_dir() == own_cache and tk.place() == own_cache / "trunk"
    model = _top_lora(_family_lm("llama"))
    tk.TrunkCache(tk.place(), model, start=2).ensure(_trees(11))
    assert CliRunner().invoke(app, ["cache", "prune", "--all"]).exit_code == 0
    assert not list((own_cache / "trunk").iterdir())
