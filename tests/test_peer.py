"""Peer test files -> Samples: alpaca yes/no and S-DPO/LLaRA-style candidate files, every list encoding."""

import csv
import json

import pytest

from prefrec.data.peer import load_alpaca_yesno, load_candidates, load_peer, parse_list
from prefrec.errors import UserError

TALLREC = [
    {"instruction": "Given the user's preference and unpreference, identify whether the user will like the target "
                    "movie by answering \"Yes.\" or \"No.\".",
     "input": "User Preference: \"Heat (1995)\"\nUser Unpreference: \"Jaws 2 (1978)\"\nWhether the user will like "
              "the target movie \"Fargo (1996)\"?",
     "output": "Yes."},
    {"instruction": "Answer Yes. or No.", "input": "", "output": "No."},
    {"instruction": "Q", "input": "Will the user like \"Up (2009)\"?", "output": "no"},
]


def test_alpaca_yesno(tmp_path):
    f = tmp_path / "test.json"
    f.write_text(json.dumps(TALLREC))
    s = load_alpaca_yesno(f)
    assert [x.label for x in s] == [1, 0, 0]
    assert [x.comparisons[0].chosen for x in s] == ["Yes.", "No.", "No."]
    assert [x.comparisons[0].rejected for x in s] == [["No."], ["Yes."], ["Yes."]]
    assert s[0].prompt(0) == TALLREC[0]["instruction"] + "\n" + TALLREC[0]["input"]
    assert s[1].prompt(0) == "Answer Yes. or No."  # an empty input is left out
    assert s[0].target == "Fargo (1996)" and s[2].target == "Up (2009)" and s[1].target is None
    assert all(x.task == "yesno" for x in s)
    # the same records as JSON lines
    g = tmp_path / "test.jsonl"
    g.write_text("\n".join(json.dumps(r) for r in TALLREC))
    assert [x.to_dict() for x in load_alpaca_yesno(g)] == [x.to_dict() for x in s]


def test_alpaca_yesno_bad_output(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps([{"instruction": "x", "input": "y", "output": "Maybe."}]))
    with pytest.raises(UserError, match=r"record 0.*output"):
        load_alpaca_yesno(f)
    f.write_text(json.dumps([{"input": "y", "output": "Yes."}]))
    with pytest.raises(UserError, match="instruction"):
        load_alpaca_yesno(f)


@pytest.mark.parametrize("value, want", [
    (["A", "B"], ["A", "B"]),
    ('["A", "B"]', ["A", "B"]),
    ("['Tyler, The Creator', \"Guns N' Roses\"]", ["Tyler, The Creator", "Guns N' Roses"]),
    ("Kylie Minogue::Avril Lavigne::Ke$ha", ["Kylie Minogue", "Avril Lavigne", "Ke$ha"]),
    ("Glee Cast", ["Glee Cast"]),
    ("", []),
])
def test_parse_list(value, want):
    assert parse_list(value, "f:1", "x") == want


def test_parse_list_never_runs_code():
    with pytest.raises(UserError, match="neither JSON nor a Python literal"):
        parse_list("[__import__('os').system('echo hi')]", "f:1", "itemList")
    with pytest.raises(UserError):
        parse_list(3, "f:1", "itemList")


def test_candidates_sdpo_json_and_csv(tmp_path):
    recs = [{"historyList": "Kylie Minogue::Avril Lavigne", "itemList": ["Glee Cast", "Tinariwen", "Glee"],
             "trueSelection": "Glee Cast"},
            {"historyList": "Glee Cast", "itemList": ["Fuel", "Wham!"], "trueSelection": "Wham!"}]
    f = tmp_path / "lastfm-test.json"
    f.write_text(json.dumps(recs))
    s = load_candidates(f, domain="music")
    assert s[0].history == ["Kylie Minogue", "Avril Lavigne"]
    assert s[0].candidates == ["Glee Cast", "Tinariwen", "Glee"] and s[0].target == "Glee Cast"
    assert s[0].comparisons[0].chosen == "Glee Cast"
    assert s[0].comparisons[0].rejected == ["Tinariwen", "Glee"]
    assert all(t in s[0].prompt(0) for t in ["Kylie Minogue", "Tinariwen", "Glee Cast"])
    assert load_candidates(f, k=1)[0].comparisons[0].rejected == ["Tinariwen"]
    # CSV with other field names and Python-literal lists (LLaRA-style dataframes exported to CSV)
    g = tmp_path / "test.csv"
    with open(g, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["seq_title", "cans_title", "next_title"])
        w.writerow([str(["Kylie Minogue", "Avril Lavigne"]), str(["Glee Cast", "Tinariwen", "Glee"]), "Glee Cast"])
    s2 = load_peer(g, "candidates", history_field="seq_title", candidates_field="cans_title",
                   target_field="next_title", domain="music")
    assert s2[0].history == s[0].history and s2[0].candidates == s[0].candidates
    with pytest.raises(UserError, match="missing field 'historyList'"):
        load_candidates(g)


def test_candidates_errors(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps([{"historyList": "A", "itemList": ["B", "C"], "trueSelection": "D"}]))
    with pytest.raises(UserError, match="not in the candidate list"):
        load_candidates(f)
    f.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(UserError, match="list of objects"):
        load_candidates(f)
    with pytest.raises(UserError, match="peer format"):
        load_peer(f, "trl")


def test_peer_samples_evaluate(tiny_lm, tmp_path):
    from prefrec.evaluation.evaluate import evaluate

    f = tmp_path / "test.json"
    f.write_text(json.dumps(TALLREC))
    res = evaluate(tiny_lm, load_alpaca_yesno(f), out=tmp_path / "y", dataset="tallrec", progress=False)
    assert res["task"] == "yesno" and res["metrics"]["n"] == 3 and 0.0 <= res["metrics"]["auc"] <= 1.0
    g = tmp_path / "c.json"
    g.write_text(json.dumps([{"historyList": "Heat (1995)", "itemList": ["Fargo (1996)", "Up (2009)"],
                              "trueSelection": "Up (2009)"}]))
    res = evaluate(tiny_lm, load_candidates(g), out=tmp_path / "c", generate=False, progress=False)
    assert res["task"] == "candidates" and res["metrics"]["n"] == 1


def test_candidates_from_a_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"historyList": ["A", "B"], "itemList": ["C", "D", "E"], "trueSelection": "D"}]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows * 3),
                          "test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    samples = load_peer(tmp_path / "dd", "candidates")
    assert len(samples) == 1 and samples[0].target == "D" and samples[0].history == ["A", "B"]
