"""The page `prefrec serve` shows at /: served without the token under a strict policy, the top answer's tokens in
/rank, and the page itself driven in a real headless browser (Debian's chromium and chromedriver, through selenium)."""

import base64
import hashlib
import math
import os
import shutil
from pathlib import Path

import httpx
import pytest
from conftest import make_tiny_lm
from fastapi.testclient import TestClient
from test_serve import HISTORY, POOL, TOKEN, running

from prefrec.serving.serve import create_app


def _inline_hash(page: str, tag: str) -> str:
    body = page.split(f"<{tag}>", 1)[1].split(f"</{tag}>", 1)[0]
    return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"


def test_page_is_served_without_the_token_under_a_policy_of_its_own_hashes(tiny_lm):
    with TestClient(create_app(tiny_lm, token=TOKEN, model_label='<b>"x"</b>'),
                    base_url="http://127.0.0.1") as c:
        r = c.get("/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        policy = r.headers["content-security-policy"]
        assert f"script-src {_inline_hash(r.text, 'script')};" in policy  # that script and no other
        assert f"style-src {_inline_hash(r.text, 'style')};" in policy and "default-src 'none'" in policy
        assert 'data-model="&lt;b&gt;&quot;x&quot;&lt;/b&gt;"' in r.text  # the label is escaped
        assert 'data-domains="books games items movies music"' in r.text
        # the page is public; the work is not
        assert c.post("/rank", json={"history": ["a"], "candidates": ["b"]}).status_code == 401
        assert c.get("/health").status_code == 401


def test_no_ui_serves_no_page(tiny_lm):
    with TestClient(create_app(tiny_lm, ui=False), base_url="http://127.0.0.1") as c:
        assert c.get("/").status_code == 404


def test_explain_gives_the_top_answer_token_by_token(tiny_lm):
    body = {"history": HISTORY, "candidates": POOL[:4]}
    with TestClient(create_app(tiny_lm), base_url="http://127.0.0.1") as c:
        plain = c.post("/rank", json=body).json()
        out = c.post("/rank", json={**body, "explain": True}).json()
    assert "explanation" not in plain and out["ranking"] == plain["ranking"]
    ex, top = out["explanation"], out["ranking"][0]
    # candidates ranker: the top answer is the top-ranked title, and its tokens multiply to its score
    assert top["title"] in ex["answer"] and ex["logp"] == pytest.approx(top["score"], abs=1e-3)
    assert len(ex["tokens"]) == top["n_tokens"]
    assert sum(math.log(t["p"]) for t in ex["tokens"]) == pytest.approx(top["score"], abs=1e-3)
    assert all(0.0 < t["p"] <= 1.0 for t in ex["tokens"])


def _browser():
    """A headless chromium through its driver, or the reason there is none (installed by scripts/test.sh where it
    can be: `apt-get install chromium chromium-driver`)."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        return None, "Debian's chromium and chromium-driver are not installed (scripts/test.sh installs them as root)"
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None, "selenium is not installed (pip install -e '.[test]')"
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1100,900"):
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=Service(executable_path=driver)), None  # no driver download


def test_the_page_ranks_in_a_real_browser(tmp_path, embedded_tokenizer):
    """Load the page, type a history, candidates and the token, press Rank, read the table: the same ranking as
    POST /rank, and the top answer's tokens drawn. PREFREC_PAGE_SCREENSHOT=FILE keeps the screenshot (docs/img is
    made that way with PREFREC_PAGE_MODEL=embedded)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser, why = _browser()
    if browser is None:
        pytest.skip(why)
    name = os.environ.get("PREFREC_PAGE_MODEL")
    model = name if name else (make_tiny_lm(embedded_tokenizer), embedded_tokenizer)
    history, candidates = HISTORY, ["Return of the Jedi (1983)", "Babe (1995)", "Scream (1996)", "Heat (1995)"]
    try:
        with running(create_app(model, token=TOKEN, model_label=name or "tiny")) as base:
            expected = httpx.post(f"{base}/rank", json={"history": history, "candidates": candidates},
                                  headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120).json()["ranking"]
            browser.get(base + "/")
            for field, lines in (("history", history), ("candidates", candidates)):
                box = browser.find_element(By.ID, field)
                box.clear()
                box.send_keys("\n".join(lines))
            browser.find_element(By.ID, "token").send_keys(TOKEN)
            browser.find_element(By.ID, "go").click()
            WebDriverWait(browser, 120).until(lambda b: b.find_element(By.ID, "ranking").is_displayed()
                                              or "error" in b.find_element(By.ID, "status").get_attribute("class"))
            status = browser.find_element(By.ID, "status").text
            rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
                    for tr in browser.find_elements(By.CSS_SELECTOR, "#ranking tbody tr")]
            assert [r[1] for r in rows] == [x["title"] for x in expected], status
            assert [float(r[2]) for r in rows] == pytest.approx([x["score"] for x in expected], abs=1e-4)
            assert browser.find_elements(By.CSS_SELECTOR, "#tokens span")  # the top answer's tokens
            assert "4 candidates ranked" in status
            shot = Path(os.environ.get("PREFREC_PAGE_SCREENSHOT") or tmp_path / "page.png")
            assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 0
    finally:
        browser.quit()
