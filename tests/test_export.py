"""prefrec.export (issue 31): `--force` replaces only an earlier export; weights get the mode every other file gets.

The run is a tiny random Llama saved as a local base folder plus a PEFT adapter and run.json: all export needs.
"""

import json
import os
import stat

import pytest
from conftest import make_tiny_lm
from typer.testing import CliRunner

from prefrec.cli import app
from prefrec.errors import UserError
from prefrec.export import export_run
from prefrec.model import add_lora


@pytest.fixture(scope="module")
def run_factory(tmp_path_factory, embedded_tokenizer):
    base = tmp_path_factory.mktemp("base")
    make_tiny_lm(embedded_tokenizer, seed=2).save_pretrained(base)
    embedded_tokenizer.save_pretrained(base)

    def make(run):
        add_lora(make_tiny_lm(embedded_tokenizer, seed=2), r=2, alpha=4, dropout=0.0).save_pretrained(run / "adapter")
        (run / "run.json").write_text(json.dumps({"base_model": str(base), "stages": ["sft"]}))
        return run
    return make


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_force_never_deletes_the_run_its_parent_or_a_folder_export_did_not_write(run_factory, tmp_path):
    """The bug: `prefrec export parent/myrun --out parent --force` deleted the run, a notes file and a sibling run."""
    parent = tmp_path / "parent"
    run = run_factory(parent / "myrun")
    run_factory(parent / "sibling")
    (parent / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    for out in (parent, run, tmp_path):
        with pytest.raises(UserError, match=r"^--out .*: .*(contains|is) the run"):
            export_run(run, out, force=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"^--out .*other holds files that `prefrec export` did not write there"):
        export_run(run, other, force=True)
    assert _tree(tmp_path) == sorted(before + ["other", "other/notes.txt"])


def test_force_replaces_an_earlier_export_only_while_it_holds_nothing_else(run_factory, tmp_path):
    run = run_factory(tmp_path / "run")
    out = export_run(run, tmp_path / "merged")
    record = json.loads((out / "export.json").read_text())
    assert record["run"] == str(run.resolve()) and "model.safetensors" in record["files"]
    with pytest.raises(UserError, match="not empty"):
        export_run(run, out)
    export_run(run, out, force=True)  # its own, unchanged: replaced
    assert (out / "model.safetensors").stat().st_size > 100
    (out / "model.safetensors").write_bytes(b"changed by hand")  # then no longer only the export's (#43)
    with pytest.raises(UserError, match=r"changed since \(model\.safetensors\)"):
        export_run(run, out, force=True)
    assert (out / "model.safetensors").read_bytes() == b"changed by hand"
    out = export_run(run, tmp_path / "merged2")
    (out / "my-eval.md").write_text("mine")
    with pytest.raises(UserError, match=r"my-eval\.md"):
        export_run(run, out, force=True)
    assert (out / "my-eval.md").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "merged2", "run"]  # no temp folder left


def test_export_weights_get_the_ordinary_file_mode(run_factory, tmp_path):
    old = os.umask(0o022)
    try:
        out = export_run(run_factory(tmp_path / "run"), tmp_path / "merged")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}
    assert stat.S_IMODE(out.stat().st_mode) == 0o755


def test_cli_export_out_naming_a_file_is_one_line(run_factory, tmp_path):
    run = run_factory(tmp_path / "run")
    (tmp_path / "afile").write_text("x")
    r = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "afile"), "--force"])
    assert r.exit_code == 2 and r.output.startswith("error: --out") and "is a file" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and (tmp_path / "afile").read_text() == "x"


def test_push_to_hub_without_a_network_or_a_token_is_one_line_before_any_work(run_factory, tmp_path, monkeypatch):
    import huggingface_hub

    run = run_factory(tmp_path / "run")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
    r = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "m"), "--push-to-hub", "me/tiny"])
    assert r.exit_code == 2 and "HF_HUB_OFFLINE is set" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()  # refused before the merge
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    r = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "m"), "--push-to-hub", "me/tiny"])
    assert r.exit_code == 2 and "no Hugging Face token" in r.output and not (tmp_path / "m").exists()
    r = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "m"), "--push-to-hub", "tiny"])
    assert r.exit_code == 2 and "name the owner too" in r.output


def test_push_to_hub_uploads_exactly_the_exports_files(run_factory, tmp_path, monkeypatch):
    """Up to the network boundary: the repository created and the folder and files handed to upload_folder."""
    import huggingface_hub

    calls = {}

    class FakeApi:
        def __init__(self, token):
            calls["token"] = token

        def create_repo(self, repo_id, **kw):
            calls["create"] = (repo_id, kw)
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **kw):
            calls["upload"] = kw

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    run = run_factory(tmp_path / "run")
    (tmp_path / "m").mkdir()
    r = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "m"), "--push-to-hub", "me/tiny",
                                 "--private"])
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[-1] == "https://huggingface.co/me/tiny"
    assert calls["token"] == "hf_test" and calls["create"] == ("me/tiny", {"repo_type": "model", "private": True,
                                                                         "exist_ok": True})
    up = calls["upload"]
    assert up["folder_path"] == str(tmp_path / "m") and up["repo_id"] == "me/tiny"
    listed = json.loads((tmp_path / "m" / "export.json").read_text())["files"]
    assert up["allow_patterns"] == sorted(listed) and {"README.md", "model.safetensors", "export.json"} <= set(listed)
