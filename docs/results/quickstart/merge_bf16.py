"""Does merging a LoRA adapter into bf16 weights cost fidelity? (docs/evaluate.md)

    python docs/results/quickstart/merge_bf16.py RUN DATA_DIR N [OUT.json]
    # this session: RUN = seed 2's SFT run of the quickstart, DATA_DIR its prepared data, N = 40 -> merge_bf16.json

bf16 scoring of a trained run: adapter unmerged, folded into fp32 weights and then cast, and folded by PEFT in bf16, each
against the fp32 merged model on the same test samples (margins = s_first - s_second per comparison)."""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(2)
from prefrec.evaluation.evaluate import score_pairwise
from prefrec.model import load_model
from prefrec.samples import read_jsonl
run, data, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
samples = read_jsonl(f"{data}/test.jsonl")[:n]
def margins(rows): return np.array([a - b for r in rows for a, b in zip(r["s_first"], r["s_second"])])
out = {}
t = time.time(); m, tok = load_model(run, dtype="fp32", device="cpu", merge_adapter=True)
out["fp32 merged"] = margins(score_pairwise(m, tok, samples, max_tokens_per_batch=1, progress=False)); print("fp32", time.time() - t, flush=True)
t = time.time(); m, tok = load_model(run, dtype="bf16", device="cpu")
assert hasattr(m, "peft_config")
out["bf16 unmerged"] = margins(score_pairwise(m, tok, samples, max_tokens_per_batch=1, progress=False)); print("bf16 unmerged", time.time() - t, flush=True)
t = time.time(); m, tok = load_model(run, dtype="fp32", device="cpu", merge_adapter=True); m = m.to(torch.bfloat16)
out["bf16 merged in fp32, cast"] = margins(score_pairwise(m, tok, samples, max_tokens_per_batch=1, progress=False)); print("bf16 merged", time.time() - t, flush=True)
t = time.time(); m, tok = load_model(run, dtype="bf16", device="cpu"); m = m.merge_and_unload()
out["bf16 merged by PEFT in bf16"] = margins(score_pairwise(m, tok, samples, max_tokens_per_batch=1, progress=False)); print("bf16 peft-merged", time.time() - t, flush=True)
ref = out["fp32 merged"]
res = {}
for k, v in out.items():
    res[k] = {"mean_abs_diff_vs_fp32": float(np.abs(v - ref).mean()), "max_abs_diff": float(np.abs(v - ref).max()),
              "same_sign_as_fp32": float(np.mean(np.sign(v) == np.sign(ref))), "pairwise_acc": float(np.mean(v > 0))}
    print(k, res[k], flush=True)
json.dump({"n_samples": n, "n_comparisons": int(len(ref)), "results": res}, open(sys.argv[4] if len(sys.argv) > 4 else "merge_bf16.json", "w"), indent=1)
