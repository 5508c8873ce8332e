"""prefrec.io: the one atomic writer. Same permissions for every output, nothing half-written on a crash."""

import ast
import json
import os
import stat
from pathlib import Path

import pytest

from prefrec import io
from prefrec.samples import Comparison, Sample, write_samples

SRC = Path(__file__).resolve().parents[1] / "src" / "prefrec"


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    return fig


def test_every_writer_gives_what_open_gives(tmp_path, umask022):
    with open(tmp_path / "plain.txt", "w") as f:
        f.write("x")
    sample = Sample(id="s", task="pairwise", domain="movies", prefix="p",
                    comparisons=[Comparison(question="q", chosen="a", rejected=["b"])])
    fig = _figure()
    written = [
        io.write_text(tmp_path / "a.md", "hello\n") or tmp_path / "a.md",
        io.write_json(tmp_path / "a.json", {"x": 1}) or tmp_path / "a.json",
        io.write_jsonl(tmp_path / "a.jsonl", [{"x": 1}]) and tmp_path / "a.jsonl",
        io.write_tsv(tmp_path / "a.tsv", "h", ["1\n"]) and tmp_path / "a.tsv",
        io.write_figure(fig, tmp_path / "a.png", dpi=20),
        write_samples(tmp_path / "s.jsonl", [sample]) and tmp_path / "s.jsonl",
    ]
    assert _mode(tmp_path / "plain.txt") == 0o644
    assert {p.name: _mode(p) for p in written} == {p.name: 0o644 for p in written}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["plain.txt"] + [p.name for p in written])


def test_contents_are_byte_compatible(tmp_path):
    io.write_json(tmp_path / "a.json", {"é": 1.5, "l": [1]})
    assert (tmp_path / "a.json").read_bytes() == b'{\n  "\xc3\xa9": 1.5,\n  "l": [\n    1\n  ]\n}\n'
    io.write_jsonl(tmp_path / "a.jsonl", [{"é": 1}, {"b": 2}])
    assert (tmp_path / "a.jsonl").read_text(encoding="utf-8") == '{"é": 1}\n{"b": 2}\n'
    io.write_jsonl(tmp_path / "b.jsonl", [{"é": 1}], ensure_ascii=True)
    assert (tmp_path / "b.jsonl").read_text() == '{"\\u00e9": 1}\n'
    assert io.write_tsv(tmp_path / "a.tsv", "x\ty", ["1\t2\n", "3\t4\n"]) == 2
    assert (tmp_path / "a.tsv").read_text() == "x\ty\n1\t2\n3\t4\n"
    with pytest.raises(ValueError):
        io.write_json(tmp_path / "nan.json", {"x": float("nan")}, allow_nan=False)


def test_a_crash_mid_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    def rows():
        yield {"x": 1}
        raise KeyboardInterrupt  # killed mid-write

    with pytest.raises(KeyboardInterrupt):
        io.write_jsonl(tmp_path / "new.jsonl", rows())
    assert list(tmp_path.iterdir()) == []

    io.write_text(tmp_path / "old.md", "old\n")
    with pytest.raises(RuntimeError):
        with io.atomic_path(tmp_path / "old.md") as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert [p.name for p in tmp_path.iterdir()] == ["old.md"]
    assert (tmp_path / "old.md").read_text() == "old\n"


def test_no_module_writes_temp_files_by_hand():
    """One owner: mkstemp/NamedTemporaryFile appear in io.py only (folder renames are another matter)."""
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "io.py" and path.parent == SRC:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("mkstemp", "NamedTemporaryFile"):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []


def test_report_and_eval_outputs_get_the_same_mode(tmp_path, umask022):
    """results.md used to come out 0600 (mkstemp, no chmod) while results.json was 0644."""
    from prefrec.evaluation.report import make_report

    run = tmp_path / "runs" / "a" / "eval" / "x"
    run.mkdir(parents=True)
    res = {"kind": "eval", "task": "pairwise", "dataset": "d", "model": "m", "method": "sft", "seed": 0,
           "n_samples": 2, "metrics": {"auc": 0.5, "accuracy": 0.5}}
    (run / "results.json").write_text(json.dumps(res))
    md = make_report([tmp_path / "runs"], tmp_path / "out", n_boot=5)
    modes = {p.name: _mode(p) for p in (tmp_path / "out").rglob("*") if p.is_file()}  # plots/ too
    assert modes == {name: 0o644 for name in modes} and md.name in modes


def test_json_readers_name_the_file_line_and_what_was_expected():
    from prefrec.errors import UserError

    lines = ['"a"', "", "{bad", "1"]
    with pytest.raises(UserError, match=r"^f\.jsonl:3: not valid JSON \(.*\); one string a line$"):
        list(io.json_lines(lines, "f.jsonl", str, "{where}: not valid JSON ({msg}); one string a line", "x"))
    with pytest.raises(UserError, match=r"^f\.jsonl:3: expected a string, got int$"):
        list(io.json_lines(lines[:2] + lines[3:], "f.jsonl", str, "x", "{where}: expected a string, got {type}"))
    assert io.json_value('["x"]', "f.json", list, "x", "y") == ["x"]
    with pytest.raises(UserError, match=r"^f\.json: not valid JSON \(.*at line 2, column 1\)$"):
        io.json_value('[\n', "f.json", list, "{where}: not valid JSON ({msg} at line {line}, column {col})", "y")


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_held_folder_lock_refuses_a_second_writer_and_is_released(tmp_path):
    with io.exclusive(tmp_path / "run", "run folder"):
        lock = tmp_path / "run" / ".lock"
        assert lock.read_text().split()[0] == str(os.getpid())
        with pytest.raises(io.Locked, match=rf"run folder .*run is being written by process {os.getpid()}"):
            with io.exclusive(tmp_path / "run", "run folder"):
                pass
    assert not lock.exists()
    with pytest.raises(KeyError), io.exclusive(tmp_path / "run", "run folder"):
        raise KeyError("boom")  # released on an exception too
    assert not lock.exists()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    import socket

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").write_text(f"{_dead_pid()} {socket.gethostname()}\n")
    with io.exclusive(tmp_path / "run", "run folder"):
        assert (tmp_path / "run" / ".lock").read_text().split()[0] == str(os.getpid())
    # another host's lock cannot be checked: it is respected
    (tmp_path / "run" / ".lock").write_text("1 some-other-host\n")
    with pytest.raises(io.Locked, match="process 1 on some-other-host"):
        with io.exclusive(tmp_path / "run", "run folder"):
            pass


# ---- atomic folders (issue 31): a folder lands whole or not at all ---------------------------------------------

def test_atomic_folder_lands_whole_with_ordinary_modes(tmp_path, umask022):
    out = tmp_path / "out"
    with io.atomic_folder(out) as tmp:
        assert tmp.parent == tmp_path and tmp != out and (tmp / io.INCOMPLETE).is_file()
        (tmp / "sub").mkdir()
        fd = os.open(tmp / "sub" / "w.safetensors", os.O_CREAT | os.O_WRONLY, 0o600)  # what safetensors does
        os.close(fd)
        (tmp / "a.txt").write_text("a")
        assert not out.exists()
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "sub"]
    assert _mode(out) == 0o755 and _mode(out / "sub") == 0o755
    assert _mode(out / "sub" / "w.safetensors") == 0o644 and _mode(out / "a.txt") == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp or old folder left beside it


def test_atomic_folder_killed_midway_keeps_the_old_folder_whole(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with io.atomic_folder(out, replace=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in out.iterdir()] == ["old.txt"]
    with io.atomic_folder(out, replace=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_folder_replaces_a_non_empty_folder_only_when_told(tmp_path):
    from prefrec.errors import UserError

    out = tmp_path / "out"
    out.mkdir()
    with io.atomic_folder(out) as tmp:  # an empty folder is no loss
        (tmp / "a").write_text("a")
    with pytest.raises(UserError, match=r"^--out .*out exists and is not empty"):
        with io.atomic_folder(out):
            pass
    (tmp_path / "f").write_text("x")
    for bad in (tmp_path / "f", tmp_path / "f" / "sub"):
        with pytest.raises(UserError, match=r"^--out .* is a file, not a folder$"):
            io.check_out_folder(bad)
        with pytest.raises(UserError, match="is a file"):
            with io.atomic_folder(bad, replace=True):
                pass
    assert (out / "a").read_text() == "a" and (tmp_path / "f").read_text() == "x"


def test_a_folder_marked_incomplete_is_refused(tmp_path):
    from prefrec.errors import UserError

    io.check_complete(tmp_path)
    (tmp_path / io.INCOMPLETE).write_text("")
    with pytest.raises(UserError, match=r"is incomplete"):
        io.check_complete(tmp_path)


def test_train_out_naming_a_file_is_one_line(tmp_path):
    """`prefrec train --out FILE` (or output_dir: FILE): refused before any model loads (issue 31)."""
    from typer.testing import CliRunner

    from prefrec.cli import app

    (tmp_path / "afile").write_text("x")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'afile'}\ndata: {{dir: {tmp_path}}}\nstages:\n  - kind: sft\n")
    for args in (["--out", str(tmp_path / "afile" / "run")], []):
        r = CliRunner().invoke(app, ["train", str(cfg), *args])
        assert r.exit_code == 2 and "is a file, not a folder" in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1
    assert (tmp_path / "afile").read_text() == "x"


def test_a_killed_holders_lock_is_taken_over_even_if_its_pid_lives_on(tmp_path):
    """The lock is an OS lock (filelock): a live holder in another process refuses us; once it is killed (no
    cleanup runs) the lock is free, though its record still names a pid, here a pid that is alive: our own."""
    import socket
    import subprocess
    import sys

    code = ("import sys, time; from prefrec import io\n"
            "with io.exclusive(sys.argv[1], 'run folder'):\n    print('held', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(io.Locked, match=f"process {child.pid} on"):
            with io.exclusive(tmp_path / "run", "run folder"):
                pass
    finally:
        child.kill()
        child.wait(timeout=30)
    lock = tmp_path / "run" / ".lock"
    lock.write_text(f"{os.getpid()} {socket.gethostname()}\n")  # a record naming a live pid, but no OS lock held
    with io.exclusive(tmp_path / "run", "run folder"):
        assert lock.read_text().split()[0] == str(os.getpid())


# ---- ownership and leftovers (issue 43) ----------------------------------------------------------------------

def test_owning_writes_only_its_own_files_and_records_them(tmp_path):
    from prefrec.errors import UserError

    out = tmp_path / "out"
    out.mkdir()
    (out / "user.json").write_text("mine")
    with io.owning(out, "eval"):
        io.write_json(out / "results.json", {"a": 1})
        with pytest.raises(UserError, match=r"user\.json exists and was not written by `prefrec eval`"):
            io.write_json(out / "user.json", {})
        with pytest.raises(UserError, match=r"user\.json exists and was not written"):
            io.remove(out / "user.json")
    assert (out / "user.json").read_text() == "mine"
    assert io.manifest(out)["results.json"] == {"by": "eval", "sha256": io.file_digest(out / "results.json")}
    with io.owning(out, "eval", names=["results.json"]):  # its own, unchanged: may be replaced, and removed
        io.write_json(out / "results.json", {"a": 2})
        io.remove(out / "results.json")
    assert "results.json" not in io.manifest(out) and not (out / "results.json").exists()
    io.write_json(out / "x.json", {})
    with pytest.raises(UserError, match=r"x\.json exists and was not written by `prefrec report`"):
        with io.owning(out, "report", names=["x.json"]):  # refused before the work
            pass
    with io.owning(out, "eval"):
        io.write_json(out / "results.json", {})
    with pytest.raises(UserError, match="was not written by `prefrec report`"):  # another command's file
        with io.owning(out, "report", names=["results.json"]):
            pass
    (out / "results.json").write_text("edited")
    with pytest.raises(UserError, match="or was changed since"):  # changed by hand since
        with io.owning(out, "eval", names=["results.json"]):
            pass


def test_owning_never_writes_an_input(tmp_path):
    from prefrec.errors import UserError

    data = tmp_path / "rows.jsonl"
    data.write_text("x\n")
    with pytest.raises(UserError, match=r"rows\.jsonl is one of this command's inputs"):
        with io.owning(tmp_path, "data import", names=["rows.jsonl"], inputs=[data]):
            pass
    with io.owning(tmp_path, "data import", inputs=[data]):
        with pytest.raises(UserError, match="one of this command's inputs"):
            io.write_text(data, "y\n")
    assert data.read_text() == "x\n"


def test_check_out_file_needs_force_and_then_only_its_own(tmp_path):
    from prefrec.errors import UserError

    f = tmp_path / "ranking.json"
    io.check_out_file(f, "rank", force=False)  # new: fine
    f.write_text("the user's")
    for force in (False, True):
        with pytest.raises(UserError, match="pass --force" if not force else "was not written by `prefrec rank`"):
            io.check_out_file(f, "rank", force=force)
    f.unlink()
    with io.owning(tmp_path, "rank"):
        io.write_json(f, [])
    io.check_out_file(f, "rank", force=True)
    with pytest.raises(UserError, match="is a folder"):
        io.check_out_file(tmp_path, "rank", force=True)


def test_replacing_a_folder_whole_needs_every_file_to_be_the_owners(tmp_path):
    from prefrec.errors import UserError

    out = tmp_path / "prep"
    with io.atomic_folder(out, owner="data prepare") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.txt").write_text("a")
    assert set(io.manifest(out)) == {"sub/a.txt"}
    with io.atomic_folder(out, owner="data prepare") as tmp:  # unchanged: replaced
        (tmp / "b.txt").write_text("b")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"holds files that `prefrec data prepare` did not write there.*notes\.txt"):
        with io.atomic_folder(out, owner="data prepare"):
            pass
    with pytest.raises(UserError, match="did not write there"):
        with io.atomic_folder(out, owner="export"):  # another command's folder
            pass
    assert (out / "notes.txt").read_text() == "mine" and (out / "b.txt").read_text() == "b"


def _killed_writer(tmp_path, stage: str) -> int:
    """A child process that writes tmp_path/out through io and is SIGKILLed at `stage`; returns its pid."""
    import signal
    import subprocess
    import sys

    code = f"""
import os, signal
from pathlib import Path
from prefrec import io
out = Path({str(tmp_path / 'out')!r})
if {stage!r} == "file":
    with io.atomic_path(Path({str(tmp_path)!r}) / "f.json") as tmp:
        tmp.write_text("half")
        os.kill(os.getpid(), signal.SIGKILL)
io._swap_in = lambda new, path: (os.replace(path, Path(__import__("tempfile").mkdtemp(dir=path.parent,
    prefix=io._temp_prefix(path), suffix=".old")) / path.name), os.kill(os.getpid(), signal.SIGKILL))
if {stage!r} == "filling":
    with io.atomic_folder(out, replace=True) as tmp:
        (tmp / "new.txt").write_text("new")
        os.kill(os.getpid(), signal.SIGKILL)
with io.atomic_folder(out, replace=True) as tmp:  # "swapping": killed between the two renames
    (tmp / "new.txt").write_text("new")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return proc


def test_a_killed_writers_leftovers_are_removed_or_put_back_and_said(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    _killed_writer(tmp_path, "file")
    _killed_writer(tmp_path, "filling")
    hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert len(hidden) == 2 and all(".prefrec-" in h for h in hidden)
    io.write_json(tmp_path / "f.json", {})
    assert "removed" in capsys.readouterr().err
    with io.atomic_folder(out, replace=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert "left by a killed prefrec" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "out"]
    _killed_writer(tmp_path, "swapping")
    assert not out.exists()  # killed between the two renames: the old folder sits aside
    said = io.remove_leftovers(out)  # the old folder put back, the new one (never renamed in) removed
    assert sorted(line.split(" ")[0] for line in said) == ["put", "removed"], said
    assert [p.name for p in out.iterdir()] == ["new.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "out"]
