"""Importers of peer preference files (prefrec.data.importers), on small files the tests write."""

import json

import pytest
from typer.testing import CliRunner

from prefrec.cli import app
from prefrec.data.importers import import_file, import_files
from prefrec.samples import read_jsonl
from prefrec.tasks import pairwise as task_pairwise


def dmpo_row(history, a, b, output, domain="movie recommendations", noun="movies", verb="watched"):
    marks = "".join(f" <Title:{t}> " for t in history)
    return {"instruction": f"You are an assistant working on {domain}. Here is the user's history of {noun} they have "
                           f"{verb}: {marks}. Rank the likelihood of the user watching the two {noun}  <Title:{a}>  "
                           f"and  <Title:{b}> .", "input": "", "output": output}


def pair(x, y):
    return f" <Title:{x}> ,  <Title:{y}> "


HIST = ["Lion King, The (1994)", "Tom &amp; Jerry", "Heat (1995)"]


def test_dmpo_pairwise_row_becomes_a_shared_prefix_sample(tmp_path):
    path = tmp_path / "rec_dpo_ranking_1.json"
    path.write_text(json.dumps([dmpo_row(HIST, "Gigi", "Tarzan", [pair("Tarzan", "Gigi"), pair("Gigi", "Tarzan")])]))
    samples, report = import_file(path)
    assert report.rows == report.rows_loaded == report.samples == 1 and not report.rejected
    s = samples[0]
    assert s.task == "pairwise" and s.domain == "movies"
    assert s.history == ["The Lion King (1994)", "Tom & Jerry", "Heat (1995)"]
    assert s.prefix == ("You are an assistant working on movie recommendations. Here is the user's history of movies "
                        'they have watched: "The Lion King (1994)", "Tom & Jerry", "Heat (1995)".\n')
    c = s.comparisons[0]
    assert c.question == 'Rank the likelihood of the user watching the two movies "Gigi" and "Tarzan".'
    assert c.chosen == task_pairwise.format_ordering("Tarzan", "Gigi") and c.rejected == [task_pairwise.format_ordering("Gigi", "Tarzan")]
    assert s.target == "Tarzan" and s.candidates == ["Tarzan", "Gigi"]


def test_string_output_gets_the_swapped_ordering_and_genres_are_dropped(tmp_path):
    path = tmp_path / "rec_eval_ranking.json"
    row = dmpo_row(["Toy Story (1995), Genre:Animation|Comedy"], "Bug's Life, A (1998), Genre:Animation",
                   "Heat (1995), Genre:Action", pair("Heat (1995), Genre:Action", "Bug's Life, A (1998), Genre:Animation"))
    path.write_text(json.dumps([row]))
    samples, report = import_file(path)
    c = samples[0].comparisons[0]
    assert c.chosen == "Heat (1995), A Bug's Life (1998)" and c.rejected == ["A Bug's Life (1998), Heat (1995)"]
    assert any("Genre" in n for n in report.notes)


def test_k_rows_per_user_are_grouped(tmp_path):
    path = tmp_path / "rec_dpo_ranking_3.json"
    rows = []
    for user in range(2):
        hist = [f"U{user} film {j}" for j in range(4)]
        for neg in ("N1", "N2", "N3"):
            rows.append(dmpo_row(hist, neg, "P", [pair("P", neg), pair(neg, "P")]))
    rows.append(dmpo_row(["other"], "P", "N9", [pair("P", "N9"), pair("N9", "P")]))
    path.write_text(json.dumps(rows))
    samples, report = import_file(path)
    assert report.rows_loaded == 7 and report.samples == 3
    assert [len(s.comparisons) for s in samples] == [3, 3, 1]
    assert samples[0].candidates == ["P", "N1", "N2", "N3"]
    assert [c.chosen for c in samples[0].comparisons] == ["P, N1", "P, N2", "P, N3"]


def test_concatenated_objects(tmp_path):
    path = tmp_path / "rec_eval_ranking_old.json"
    rows = [dmpo_row(HIST, "A", "B", pair("A", "B")), dmpo_row(HIST[:1], "C", "D", pair("D", "C"))]
    path.write_text("".join(json.dumps(r) for r in rows))
    samples, report = import_file(path)
    assert report.format.startswith("concatenated JSON objects") and report.samples == 2


def test_malformed_rows_are_rejected_with_where_and_why(tmp_path):
    path = tmp_path / "bad.json"
    good = dmpo_row(HIST, "A", "B", [pair("A", "B"), pair("B", "A")])
    rows = [
        good,
        {"instruction": good["instruction"], "input": ""},                              # no output
        dmpo_row(HIST, "A", "B", [pair("A", "B"), pair("A", "B")]),                      # rejected not reversed
        dmpo_row(HIST, "A", "B", " <Title:A> ,  <Title:B> ,  <Title:C> "),              # three titles
        dmpo_row(HIST, "A", "B", [pair("A", "X"), pair("X", "A")]),                      # not the question's titles
        dmpo_row(HIST, "A", "B", 42),                                                   # wrong type
        {"instruction": "Hello <Title:A> and <Title:B>", "input": "", "output": pair("A", "B")},  # no question
        "just a string",
        {"foo": 1},
    ]
    path.write_text(json.dumps(rows))
    samples, report = import_file(path)
    assert report.rows == 9 and report.rows_loaded == 1 and len(samples) == 1
    reasons = {r["where"]: r["reason"] for r in report.rejected}
    assert set(reasons) == {f"bad.json[{i}]" for i in range(1, 9)}
    assert "field 'output' is missing" in reasons["bad.json[1]"]
    assert "not the chosen ordering reversed" in reasons["bad.json[2]"]
    assert "names 3 <Title:…> items; expected 2" in reasons["bad.json[3]"]
    assert "but the question shows" in reasons["bad.json[4]"]
    assert "must be a string" in reasons["bad.json[5]"]
    assert "no 'Rank the likelihood" in reasons["bad.json[6]"]
    assert "expected an object" in reasons["bad.json[7]"]
    assert "unknown record layout" in reasons["bad.json[8]"]


def test_trl_and_k_rejected_jsonl_with_a_broken_line(tmp_path):
    path = tmp_path / "prefs.jsonl"
    lines = [json.dumps({"prompt": "Which film?", "chosen": "Heat", "rejected": "Casino"}),
             '{"prompt": "cut off", "chosen": ',
             json.dumps({"prompt": "Pick one", "chosen": "A", "rejected": ["B", "C", "D"]}),
             json.dumps({"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
                         "chosen": [{"role": "assistant", "content": "Yes"}],
                         "rejected": [{"role": "assistant", "content": "No"}]}),
             json.dumps({"prompt": "p", "chosen": "same", "rejected": ["same"]}),
             json.dumps({"chosen": "x", "rejected": "y"})]
    path.write_text("\n".join(lines) + "\n")
    samples, report = import_file(path, domain="movies")
    assert report.format.startswith("JSON lines")
    assert [s.comparisons[0].rejected for s in samples] == [["Casino"], ["B", "C", "D"], ["No"]]
    assert samples[0].prefix == "Which film?" and samples[0].comparisons[0].question == ""
    assert samples[2].prefix == "Be brief.\nHi?"
    reasons = {r["where"].split(" ")[0]: r["reason"] for r in report.rejected}
    assert "not valid JSON" in reasons["prefs.jsonl:2"]
    assert "also listed as rejected" in reasons["prefs.jsonl:5"]
    assert "no 'prompt' field" in reasons["prefs.jsonl:6"]


def test_alpaca_pairwise_without_markup(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"instruction": "Rank:", "input": "A or B", "output": ["A, B", "B, A"]},
                                {"instruction": "Say hi", "input": "", "output": "hi"}]))
    samples, report = import_file(path)
    assert samples[0].prefix == "Rank:\nA or B" and samples[0].comparisons[0].chosen == "A, B"
    assert "single string (an SFT row)" in report.rejected[0]["reason"]


def test_import_files_writes_jsonl_and_report_and_rejects_registry(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "rec_a.json").write_text(json.dumps([dmpo_row(HIST, "A", "B", [pair("A", "B"), pair("B", "A")])]))
    (src / "dataset_info.json").write_text(json.dumps({"rec_a": {"file_name": "rec_a.json"},
                                                       "hub": {"hf_hub_url": "x/y"}}))
    (src / "empty.json").write_text("")
    report = import_files([src], tmp_path / "out")
    by = {r["file"].split("/")[-1]: r for r in report["files"]}
    assert by["rec_a.json"]["samples"] == 1 and len(read_jsonl(tmp_path / "out" / "rec_a.jsonl")) == 1
    assert "dataset registry" in by["dataset_info.json"]["reason"] and by["dataset_info.json"]["output"] is None
    assert "empty file" in by["empty.json"]["reason"]
    assert json.loads((tmp_path / "out" / "import_report.json").read_text())["total"]["files_rejected"] == 2
    r = CliRunner().invoke(app, ["data", "import", str(src), "--out", str(tmp_path / "out2")])
    assert r.exit_code == 0 and "rec_a.json: imported 1 row -> 1 sample\n" in r.output
    assert "dataset_info.json: not imported: " in r.output and "empty.json: not imported: " in r.output


def test_import_exits_nonzero_when_nothing_is_imported_and_removes_stale_output(tmp_path):
    """Issue 14 point 4: every file rejected or missing -> exit 2; a rejected re-import leaves no old NAME.jsonl."""
    src = tmp_path / "rec_a.json"
    src.write_text(json.dumps([dmpo_row(HIST, "A", "B", [pair("A", "B"), pair("B", "A")])]))
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["data", "import", str(src), "--out", str(out)])
    assert r.exit_code == 0 and (out / "rec_a.jsonl").is_file()
    src.write_text(json.dumps([{"instruction": 1}]))  # the same file, now with no usable row
    r = CliRunner().invoke(app, ["data", "import", str(src), str(tmp_path / "missing.json"), "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert "nothing was imported" in r.output and "missing.json: file not found" in r.output
    assert not (out / "rec_a.jsonl").exists()
    report = json.loads((out / "import_report.json").read_text())
    assert report["total"]["samples"] == 0 and report["total"]["files_rejected"] == 2
    assert any("removed rec_a.jsonl" in n for n in report["files"][0]["notes"])


# ---- issue 31: nothing lost, nothing silently wrong ----------------------------------------------------------------

def test_inputs_with_the_same_output_name_are_refused_before_anything_is_written(tmp_path):
    import pytest

    from prefrec.errors import UserError

    row = json.dumps([dmpo_row(HIST, "A", "B", [pair("A", "B"), pair("B", "A")])])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "same.json").write_text(row)
    (tmp_path / "b" / "same.jsonl").write_text(row)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"a/same\.json and .*b/same\.jsonl would both be written to .*same\.jsonl"):
        import_files([tmp_path / "a" / "same.json", tmp_path / "b" / "same.jsonl"], out)
    assert not out.exists()
    r = CliRunner().invoke(app, ["data", "import", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)])
    assert r.exit_code == 2 and "would both be written" in r.output and len(r.output.strip().splitlines()) == 1


def test_json_nested_too_deep_is_a_rejected_file_not_a_traceback(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    good = tmp_path / "rec_a.json"
    good.write_text(json.dumps([dmpo_row(HIST, "A", "B", [pair("A", "B"), pair("B", "A")])]))
    report = import_files([deep, good], tmp_path / "out")
    by = {r["file"].split("/")[-1]: r for r in report["files"]}
    assert "nested too deeply" in by["deep.json"]["reason"] and by["rec_a.json"]["samples"] == 1
    deep_lines = tmp_path / "deep.jsonl"
    deep_lines.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n' + "[" * 200_000 + "\n")
    report = import_files([deep_lines], tmp_path / "out2")
    assert report["files"][0]["samples"] == 1
    assert "nested too deeply" in report["files"][0]["rejected"][0]["reason"]
    r = CliRunner().invoke(app, ["data", "import", str(deep), "--out", str(tmp_path / "out3")])
    assert r.exit_code == 2 and "Traceback" not in r.output and "deep.json" in r.output, r.output


def test_import_out_naming_a_file_is_one_line(tmp_path):
    src = tmp_path / "rec_a.json"
    src.write_text(json.dumps([dmpo_row(HIST, "A", "B", [pair("A", "B"), pair("B", "A")])]))
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        r = CliRunner().invoke(app, ["data", "import", str(src), "--out", str(out)])
        assert r.exit_code == 2 and r.output.startswith("error: --out") and "is a file" in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1


# ---- sharegpt, TRL implicit prompt, messages, OpenAI preference, datasets folders (issue 30) ----

def _import_rows(tmp_path, rows, name="rows.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    samples, report = import_file(path)
    return samples, {r["where"].split(" ")[0].split(":")[-1]: r["reason"] for r in report.rejected}, report


def _texts(s):
    """(prompt, chosen, rejected) of a one-comparison sample."""
    return s.prompt(0), s.comparisons[0].chosen, s.comparisons[0].rejected


def test_sharegpt_pairwise_rows_and_the_rejections_that_name_the_layout(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "Which film next?"}],
             "chosen": {"from": "gpt", "value": "Heat (1995)"}, "rejected": {"from": "gpt", "value": "Babe (1995)"}},
            {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Pick one."}],
             "chosen": {"from": "gpt", "value": "A"}, "rejected": [{"from": "gpt", "value": "B"},
                                                                    {"from": "gpt", "value": "C"}]},
            {"conversations": [{"from": "human", "value": "Hi"}], "system": "You rank films.",
             "chosen": {"from": "gpt", "value": "X"}, "rejected": {"from": "gpt", "value": "Y"}},
            {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"},
                               {"from": "human", "value": "c"}],
             "chosen": {"from": "gpt", "value": "d"}, "rejected": {"from": "gpt", "value": "e"}},
            {"conversations": [{"from": "human", "value": "Say hi"}, {"from": "gpt", "value": "hi"}]},
            {"conversations": [{"from": "human", "value": "weather?"}, {"from": "function_call", "value": "{}"}]},
            {"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "a"}}]
    samples, reasons, report = _import_rows(tmp_path, rows)
    assert [_texts(s) for s in samples] == [("Which film next?", "Heat (1995)", ["Babe (1995)"]),
                                            ("Be brief.\nPick one.", "A", ["B", "C"]),
                                            ("You rank films.\nHi", "X", ["Y"])]
    assert "LLaMA-Factory sharegpt pairwise ×3" in report.format
    assert "multi-turn" in reasons["4"]
    assert "sharegpt row with one answer" in reasons["5"] and "SFT" in reasons["5"]
    assert "'function_call' turn" in reasons["6"]
    assert "needs both 'chosen' and 'rejected'" in reasons["7"]
    assert not any("implicit" in r for r in reasons.values())  # the old, misleading reason


def test_sharegpt_sft_rows_of_dmpo_orderings_become_pairwise_samples(tmp_path):
    row = dmpo_row(HIST, "Gigi", "Tarzan", pair("Tarzan", "Gigi"))
    rec = {"conversations": [{"from": "human", "value": row["instruction"]}, {"from": "gpt", "value": row["output"]}]}
    samples, reasons, _ = _import_rows(tmp_path, [rec])
    assert not reasons and samples[0].target == "Tarzan"
    assert samples[0].comparisons[0].rejected == [task_pairwise.format_ordering("Gigi", "Tarzan")]


def test_trl_implicit_prompt_conversations_and_texts(tmp_path):
    user = [{"role": "system", "content": "Rank films."}, {"role": "user", "content": "Next film?"}]
    rows = [{"chosen": user + [{"role": "assistant", "content": "Heat"}],
             "rejected": user + [{"role": "assistant", "content": "Babe"}]},
            {"chosen": "User likes Alien. Answer: Heat (1995)", "rejected": "User likes Alien. Answer: Heavy (1996)"},
            {"chosen": "Q: pick. A: one", "rejected": ["Q: pick. A: two", "Q: pick. A: three"]},
            {"chosen": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"}],
             "rejected": [{"role": "user", "content": "y"}, {"role": "assistant", "content": "b"}]},
            {"chosen": "Heat", "rejected": "Babe"},
            {"chosen": "text", "rejected": [{"role": "assistant", "content": "msg"}]}]
    samples, reasons, report = _import_rows(tmp_path, rows)
    assert [_texts(s) for s in samples] == [("Rank films.\nNext film?", "Heat", ["Babe"]),
                                            ("User likes Alien. Answer:", "Heat (1995)", ["Heavy (1996)"]),
                                            ("Q: pick. A:", "one", ["two", "three"])]
    assert "TRL implicit prompt" in report.format
    assert "same conversation up to one final assistant message" in reasons["4"]
    assert "share no prompt text" in reasons["5"]
    assert "both be texts or both be message lists" in reasons["6"]


def test_openai_preference_and_messages_rows(tmp_path):
    rows = [{"input": {"messages": [{"role": "user", "content": [{"type": "text", "text": "Next film?"}]}],
                       "tools": [], "parallel_tool_calls": True},
             "preferred_output": [{"role": "assistant", "content": "Heat"}],
             "non_preferred_output": [{"role": "assistant", "content": "Babe"}]},
            {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]},
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                          {"role": "assistant", "content": "a cat"}]},
            {"prompt": "Is it good?", "completion": "Yes", "label": True},
            {"prompt": "q", "completion": "a"},
            {"images": ["cat.png"], "messages": [{"role": "user", "content": "?"}]}]
    samples, reasons, report = _import_rows(tmp_path, rows)
    assert [_texts(s) for s in samples] == [("Next film?", "Heat", ["Babe"])]
    assert "OpenAI preference" in report.format
    assert "messages (TRL/OpenAI chat) row with one answer" in reasons["2"]
    assert "not text" in reasons["3"]
    assert "unpaired preference row (KTO" in reasons["4"]
    assert "TRL prompt/completion row with one answer" in reasons["5"]
    assert "multimodal" in reasons["6"]


def test_every_export_format_imports_back_to_the_same_texts(tmp_path):
    from prefrec.data.exporters import FORMATS, export_samples
    from prefrec.samples import Comparison, Sample

    samples = [Sample(id="u1", task="pairwise", domain="movies", prefix="History: Alien.\n",
                      comparisons=[Comparison("Rank A and B.", "A, B", ["B, A"]),
                                   Comparison("Rank A and C.", "A, C", ["C, A"])]),
               Sample(id="u2", task="candidates", domain="movies", prefix="History: Heat.\n",
                      comparisons=[Comparison("Pick one of X, Y, Z.", "X", ["Y", "Z"])])]
    expected = sorted((s.prompt(i), c.chosen, r) for s in samples for i, c in enumerate(s.comparisons)
                      for r in c.rejected)
    for fmt in FORMATS:
        n = export_samples(samples, tmp_path / f"{fmt}.jsonl", fmt)
        rows = [json.loads(x) for x in (tmp_path / f"{fmt}.jsonl").read_text().splitlines()]
        assert n == len(rows) == (3 if fmt == "messages" else 4)
        if fmt == "messages":
            assert [r["messages"][1]["content"] for r in rows] == ["A, B", "A, C", "X"]
            continue
        back, report = import_file(tmp_path / f"{fmt}.jsonl")
        assert not report.rejected, (fmt, report.rejected)
        assert sorted((s.prompt(0), s.comparisons[0].chosen, r) for s in back
                      for r in s.comparisons[0].rejected) == expected, fmt


def test_cli_export_and_import(tmp_path):
    from prefrec.samples import Comparison, Sample, write_samples

    write_samples(tmp_path / "train.jsonl", [Sample(id="a", task="pairwise", domain="movies", prefix="P ",
                                                  comparisons=[Comparison("q", "x", ["y"])])])
    r = CliRunner().invoke(app, ["data", "export", str(tmp_path), "--format", "sharegpt",
                                 "--out", str(tmp_path / "out.jsonl")])
    assert r.exit_code == 0 and "1 rows" in r.output, r.output
    assert json.loads((tmp_path / "out.jsonl").read_text())["conversations"][0]["value"] == "P q"
    r = CliRunner().invoke(app, ["data", "export", str(tmp_path), "--format", "nope", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "error: export format 'nope'" in r.output
    # an existing --out FILE: refused without --force; with it, replaced only when an earlier export wrote it (#43)
    out = ["data", "export", str(tmp_path), "--format", "trl", "--out"]
    r = CliRunner().invoke(app, out + [str(tmp_path / "out.jsonl")])
    assert r.exit_code == 2 and "exists; choose another name, or pass --force" in r.output, r.output
    assert CliRunner().invoke(app, out + [str(tmp_path / "out.jsonl"), "--force"]).exit_code == 0
    assert "prompt" in json.loads((tmp_path / "out.jsonl").read_text())
    (tmp_path / "mine.jsonl").write_text("the user's\n")
    r = CliRunner().invoke(app, out + [str(tmp_path / "mine.jsonl"), "--force"])
    assert r.exit_code == 2 and "was not written by `prefrec data export`" in r.output, r.output
    assert (tmp_path / "mine.jsonl").read_text() == "the user's\n"
    r = CliRunner().invoke(app, out + [str(tmp_path / "train.jsonl"), "--force"])  # its own input
    assert r.exit_code == 2 and "was not written by `prefrec data export`" in r.output, r.output


def test_datasets_save_to_disk_round_trip(tmp_path):
    datasets = pytest.importorskip("datasets")
    from prefrec.data.exporters import export_samples
    from prefrec.samples import Comparison, Sample

    samples = [Sample(id=f"s{i}", task="pairwise", domain="movies", prefix=f"History {i}.\n",
                      comparisons=[Comparison("Rank.", f"A{i}", [f"B{i}"])]) for i in range(3)]
    assert export_samples(samples, tmp_path / "ds", "trl", datasets=True) == 3
    assert datasets.load_from_disk(str(tmp_path / "ds"))[1]["chosen"] == [{"role": "assistant", "content": "A1"}]
    report = import_files([tmp_path / "ds"], tmp_path / "imported")
    assert report["total"]["samples"] == 3 and "Hugging Face datasets" in report["files"][0]["format"]
    assert [s.comparisons[0].chosen for s in read_jsonl(tmp_path / "imported" / "ds.jsonl")] == ["A0", "A1", "A2"]
    # a DatasetDict: one output per split; its dataset_info.json is not mistaken for a LLaMA-Factory registry
    rows = [{"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "a"},
             "rejected": {"from": "gpt", "value": "b"}}]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows * 2),
                          "test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    r = CliRunner().invoke(app, ["data", "import", str(tmp_path / "dd"), "--out", str(tmp_path / "imp2")])
    assert r.exit_code == 0, r.output
    assert len(read_jsonl(tmp_path / "imp2" / "dd-train.jsonl")) == 2
    assert len(read_jsonl(tmp_path / "imp2" / "dd-test.jsonl")) == 1


def test_datasets_folder_without_the_package_says_how_to_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *a, **kw):
        if name == "datasets" or name.startswith("datasets."):
            raise ImportError("No module named 'datasets'")
        return real_import(name, *a, **kw)

    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "state.json").write_text("{}")
    monkeypatch.setattr(builtins, "__import__", no_datasets)
    report = import_files([tmp_path / "ds"], tmp_path / "out")
    assert "pip install 'prefrec[datasets]'" in report["files"][0]["reason"]


def test_the_import_summary_says_each_outcome_once():
    """#41 point 11: the summary said "REJECTED; 0 rejected (reason)" for a refused file; now each line says what
    was imported and what was not, with no count that contradicts it."""
    from prefrec.data.importers import summary_lines

    def rep(rows, loaded, samples, bad, output=True, reason=None):
        return {"file": "/x/f.json", "rows": rows, "rows_loaded": loaded, "samples": samples, "reason": reason,
                "rejected": [{"where": f"line {i + 1}", "reason": "no output"} for i in range(bad)],
                "output": "/o/f.jsonl" if output else None}

    assert summary_lines(rep(3, 3, 2, 0)) == ["f.json: imported 3 rows -> 2 samples"]
    assert summary_lines(rep(10, 8, 8, 2)) == ["f.json: imported 8 of 10 rows -> 8 samples; 2 rows refused",
                                               "    line 1: no output", "    line 2: no output"]
    assert summary_lines(rep(0, 0, 0, 0, False, "empty file")) == ["f.json: not imported: empty file"]
    lines = summary_lines(rep(7, 0, 0, 7, False))
    assert lines[0] == "f.json: not imported: all 7 rows refused" and lines[-1] == "    ... 2 more in import_report.json"
    assert len(lines) == 7


# ---- issue 43: an import writes only what it records as its own, never its inputs -------------------------------

def _row_file(path, n=1):
    path.write_text(json.dumps([dmpo_row(HIST, "A", "B", [pair("A", "B"), pair("B", "A")])] * n))
    return path


def test_import_into_the_folder_of_its_own_input_never_touches_the_input(tmp_path):
    # the input was deleted (every row rejected) or overwritten in place (7 rows became 2)
    folder = tmp_path / "f"
    folder.mkdir()
    bad = folder / "rows.jsonl"
    bad.write_text('{"instruction": 1}\n')
    r = CliRunner().invoke(app, ["data", "import", str(bad), "--out", str(folder)])
    assert r.exit_code == 2 and "is one of this command's inputs" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    assert bad.read_text() == '{"instruction": 1}\n' and sorted(p.name for p in folder.iterdir()) == ["rows.jsonl"]


def test_import_never_overwrites_or_removes_a_file_it_did_not_write(tmp_path):
    from prefrec.errors import UserError

    out = tmp_path / "out"
    out.mkdir()
    (out / "rec_a.jsonl").write_text("the user's own file\n")
    with pytest.raises(UserError, match=r"rec_a\.jsonl exists and was not written by `prefrec data import`"):
        import_files([_row_file(tmp_path / "rec_a.json")], out)
    assert (out / "rec_a.jsonl").read_text() == "the user's own file\n"
    assert sorted(p.name for p in out.iterdir()) == ["rec_a.jsonl"]  # nothing written, not even a report


def test_import_into_a_prepared_folder_does_not_replace_its_split(tmp_path):
    from test_data_prepare import write_tiny_ml100k

    from prefrec.data.prepare import prepare
    from prefrec.errors import UserError

    prepared = tmp_path / "prep"
    prepare("ml-100k", write_tiny_ml100k(tmp_path / "ml"), "pairwise", prepared, warn=lambda m: None)
    before = (prepared / "train.jsonl").read_bytes()
    with pytest.raises(UserError, match=r"train\.jsonl exists and was not written by `prefrec data import`"):
        import_files([_row_file(tmp_path / "train.json")], prepared)
    assert (prepared / "train.jsonl").read_bytes() == before


def test_a_second_import_replaces_its_own_output_but_not_an_edited_one(tmp_path):
    from prefrec.errors import UserError

    src, out = _row_file(tmp_path / "rec_a.json"), tmp_path / "out"
    import_files([src], out)
    _row_file(src, n=2)
    import_files([src], out)  # its own unchanged output: replaced, and recorded again
    assert len(read_jsonl(out / "rec_a.jsonl")) == 1  # one user: the two rows are one sample's comparisons
    assert len(read_jsonl(out / "rec_a.jsonl")[0].comparisons) == 2
    with open(out / "rec_a.jsonl", "a") as f:
        f.write("\n")  # edited by hand since
    with pytest.raises(UserError, match=r"or was changed since"):
        import_files([src], out)


def test_a_json_error_names_its_own_line(tmp_path):
    # an import error on line 2 was reported on line 4 (and a multi-line record's inside read as records) (#43)
    ok = '{"prompt": "p", "chosen": "a", "rejected": "c"}\n'
    spread = tmp_path / "spread.json"
    spread.write_text('{"prompt": "p",\n "chosen": "a" "rejected": "b"}\n' + ok)
    samples, report = import_file(spread)
    assert len(samples) == 1 and report.rejected == [
        {"where": "spread.json:2", "reason": "not valid JSON (Expecting ',' delimiter at column 16)"}]
    array = tmp_path / "array.json"
    array.write_text('[\n  {"prompt": "p", "chosen": "a" "rejected": "b"},\n  ' + ok + "]\n")
    from prefrec.errors import UserError

    with pytest.raises(UserError, match=r"array\.json:2: not valid JSON \(Expecting ',' delimiter at column 33\); "
                                        r"the file is one JSON array"):
        import_file(array)
