"""Fuzzing the HTTP service (prefrec.serving.serve, issue #43 point 5), in process, offline, on a tiny random-init
model with the embedded tokenizer.

- Schemathesis reads the app's own OpenAPI schema (GET /openapi.json, as `prefrec serve --docs` serves it) and sends
  requests that fit it and requests that break it (wrong types, missing and unknown fields, sizes over the limits)
  to every operation. Its checks: no 5xx, every status and body as the schema documents them, bodies that break the
  schema refused. Ours on top: every error is JSON {"error": one line} with a 4xx status, every 200 a ranking of
  the candidates sent (each once, ranks 1..n, finite scores), and every answer within a time bound.
- By hand (Hypothesis and the app's test client) what a schema cannot say: bodies that are not JSON or barely JSON
  (bytes, a 5000-digit number, nesting past the recursion limit, a lone surrogate), other content types, titles with
  control characters, Host headers and bearer tokens: the same properties.
"""

from __future__ import annotations

import json
import math
import time

import pytest
import schemathesis
from conftest import make_tiny_lm
from fuzzing import fuzz
from hypothesis import example, given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance
from starlette.testclient import TestClient

from prefrec.serving.serve import Limits, create_app

LIMITS = Limits(max_history=5, max_candidates=6, max_title_chars=40, max_body_bytes=4096, max_queue=32,
                max_seconds=30)
SECONDS = 20  # a bound on any answer: the tiny model ranks 6 short titles in well under a second
TOKEN = "wt-fuzz-token"


@pytest.fixture(scope="module")
def app(embedded_tokenizer):
    return create_app((make_tiny_lm(embedded_tokenizer), embedded_tokenizer), limits=LIMITS, model_label="tiny",
                      docs=True, allowed_hosts=["testserver"])


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def check_answer(status: int, body: bytes, sent: dict | None, seconds: float) -> None:
    """A JSON error {"error": one line} with 4xx, or a 200 ranking of the candidates sent; in time."""
    assert seconds < SECONDS, f"{seconds:.1f} s"
    assert status < 500, (status, body[:300])
    if status == 404 and body.startswith(b"<"):  # not an API route: the page and the docs are HTML
        return
    doc = json.loads(body)
    if status >= 400:
        assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"], doc
        assert "\n" not in doc["error"], doc
        return
    if isinstance(sent, dict) and "ranking" in doc:
        ranking = doc["ranking"]
        assert ranking and [r["rank"] for r in ranking] == list(range(1, len(ranking) + 1))
        assert all(math.isfinite(r["score"]) for r in ranking)
        assert len({r["title"] for r in ranking}) == len(ranking) <= min(len(sent["candidates"]),
                                                                         sent.get("top") or LIMITS.max_candidates)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schemathesis_every_operation_answers_as_documented(api_schema, mode):
    """Schemathesis' cases through Hypothesis directly (its pytest plugin's lazy fixtures need a pytest < 9 attribute):
    positive cases fit the schema, negative ones break it somewhere."""

    @fuzz(60)
    @given(case=api_schema.as_strategy(mode))
    def one(case):
        start = time.monotonic()
        response = case.call()
        seconds = time.monotonic() - start
        # titles that fit the schema can still be refused: control characters, or past the token budget
        case.validate_response(response, excluded_checks=[positive_data_acceptance])
        check_answer(response.status_code, response.content, case.body if case.path == "/rank" else None, seconds)

    one()


@pytest.fixture(scope="module")
def client(embedded_tokenizer):
    """A second app (its own model state) behind a bearer token, through the ASGI test client."""
    app = create_app((make_tiny_lm(embedded_tokenizer), embedded_tokenizer), limits=LIMITS, model_label="tiny",
                     token=TOKEN, allowed_hosts=["testserver"])
    with TestClient(app) as c:  # runs the lifespan: the model state and the inference thread
        yield c


TITLE = st.sampled_from(["Heat (1995)", "Babe (1995)", " Fargo ", "A\x00B", "A\u2028B", "\ud800", "é" * 41, "",
                         "x" * 40]) | st.text(max_size=8)
FIELD_VALUE = st.one_of(st.lists(TITLE, max_size=7), TITLE, st.integers(), st.floats(), st.none(), st.booleans(),
                        st.sampled_from(["movies", "books", "sum", "mean", 10**30]))
JSON_BODY = st.dictionaries(st.sampled_from(["history", "candidates", "top", "domain", "order_by", "explain", "x"]),
                            FIELD_VALUE, max_size=6)
GOOD_TITLE = st.sampled_from(["Heat (1995)", "Babe (1995)", "Fargo (1996)", "Alien (1979)", "Jaws", "Amélie"])
GOOD_BODY = st.fixed_dictionaries(
    {"history": st.lists(GOOD_TITLE, min_size=1, max_size=5), "candidates": st.lists(GOOD_TITLE, min_size=1, max_size=6)},
    optional={"top": st.integers(1, 8), "domain": st.sampled_from(["movies", "books"]),
              "order_by": st.sampled_from(["sum", "mean"]), "explain": st.booleans()})
RAW_BODY = st.binary(max_size=48) | st.sampled_from([
    b'{"history": ["A"], "candidates": [' + b"9" * 5000 + b"]}", b"[" * 100_000, b"", b"null", b"[]", b"{}",
    b'{"history": ["\\ud800"], "candidates": ["B"]}', b'{"history": ["A"], "candidates": ["B"], "top": 1e400}',
    b'{"history": ["A"], "candidates": ["B"]}' + b" " * 5000, b'{"history": ["A"], "candidates": ["B"], "top": 1}',
    b'{"history": ["A"], "candidates": ["B", "C"], "history": ["D"]}', b"\xef\xbb\xbf{}"])


@fuzz(150)
@given(body=st.one_of(GOOD_BODY, JSON_BODY).map(lambda d: json.dumps(d).encode()) | RAW_BODY,
       route=st.sampled_from([("POST", "/rank")] * 6 + [("GET", "/rank"), ("POST", "/health"), ("GET", "/health"),
                                                       ("GET", "/nope"), ("PUT", "/rank"), ("GET", "/openapi.json")]),
       content_type=st.sampled_from(["application/json"] * 4 + ["text/plain", None, "application/x-www-form-urlencoded",
                                                                "application/json; charset=latin-1"]),
       host=st.sampled_from(["testserver"] * 6 + ["evil.example", "testserver:80", "", "TESTSERVER"]),
       auth=st.sampled_from([f"Bearer {TOKEN}"] * 6 + [None, "Bearer x", "Basic x", "Bearer", f"bearer {TOKEN}"]))
@example(body=b'{"history": ["Heat (1995)"], "candidates": ["Babe (1995)", "Fargo (1996)"]}', route=("POST", "/rank"),
         content_type="application/json", host="testserver", auth=f"Bearer {TOKEN}")
def test_any_request_gets_a_json_4xx_or_a_ranking_in_time(client, body, route, content_type, host, auth):
    headers = {"host": host, **({"content-type": content_type} if content_type else {}),
               **({"authorization": auth} if auth else {})}
    start = time.monotonic()
    r = client.request(route[0], route[1], content=body, headers=headers)
    try:
        sent = json.loads(body)
    except (ValueError, RecursionError):
        sent = None
    check_answer(r.status_code, r.content, sent if route == ("POST", "/rank") else None, time.monotonic() - start)
