"""Traditional recommenders scored on the same samples and metrics as the LLM (docs/baselines.md).

common.py      prepared folder -> training records of a regime (few-shot | full), test samples -> item indices
popularity.py  MostPop, and the liked share of each item
bpr.py         BPR-MF with fold-in for unseen users
sequential.py  SASRec, GRU4Rec, BERT4Rec, Caser, STAMP, CORE, GCSAN, SHAN over one training loop
cmf.py         collective MF with title words (the cross-domain baseline)
run.py         run_baseline(name, samples_dir, regime=..., seed=..., out=...) -> results.json
"""
