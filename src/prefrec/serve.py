"""An HTTP ranking service: `POST /rank` ranks candidate titles for a user history, `GET /health` says it is up.

    create_app("embedded")                 loads the model once, when the server starts (lifespan startup)
    create_app((model, tokenizer))         serves an already-loaded pair (tests, notebooks)
    run_server(...)                         uvicorn, one process, for `prefrec serve`

Request  POST /rank   {"history": [title, ...], "candidates": [title, ...], "top": 5?, "domain": "movies"?}
Response 200          {"ranking": [{"title", "score", "score_per_token", "n_tokens", "rank"}, ...],
                       "model": str, "domain": str, "n_candidates": int}
Errors   4xx          {"error": "<what is wrong, naming the field and the limit>"}
         400 body is not JSON · 413 body larger than max_body_bytes · 422 a field is missing, of the wrong type or
         over a limit · 404/405 unknown route/method · 503 too many requests waiting

Why the structure:
- Titles are untrusted text that goes into a prompt, so every field is checked (type, count, length) before any
  tokenisation, and the raw body is read with a byte cap, so a huge upload is refused without being buffered.
- A PyTorch model is not meant to run forward passes from several threads at once, and one packed forward already
  uses all cores. All inference therefore goes through ONE worker thread (a single-thread executor): requests queue
  there, each builds its own tensors, and answers can never mix. The event loop stays free to accept, validate and
  refuse requests meanwhile; `max_queue` bounds how many may wait.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from prefrec.errors import UserError
from prefrec.prompts import DOMAINS
from prefrec.rank import clean_titles


@dataclass(frozen=True)
class Limits:
    """Request size limits; every refusal message names the limit it hit."""
    max_history: int = 50  # titles in "history"
    max_candidates: int = 100  # titles in "candidates"
    max_title_chars: int = 300  # characters per title
    max_body_bytes: int = 256 * 1024  # raw request body
    max_queue: int = 64  # requests waiting for (or in) inference; more get 503


_FIELDS = ("history", "candidates", "top", "domain")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds max_bytes (Content-Length is checked first, and
    the stream is counted too, because chunked uploads carry no length)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise ApiError(400, f"invalid Content-Length header {declared!r}") from None
        if n > max_bytes:
            raise ApiError(413, f"request body is {n} bytes; the limit is {max_bytes} bytes (max_body_bytes)")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > max_bytes:
            raise ApiError(413, f"request body exceeds the limit of {max_bytes} bytes (max_body_bytes)")
    return bytes(buf)


def _titles(body: dict, name: str, max_items: int, max_chars: int) -> list[str]:
    if name not in body:
        raise ApiError(422, f"field '{name}' is required: a list of title strings")
    value = body[name]
    if not isinstance(value, list):
        raise ApiError(422, f"field '{name}' must be a list of title strings, got {type(value).__name__}")
    if not value:
        raise ApiError(422, f"field '{name}' must not be empty")
    if len(value) > max_items:
        raise ApiError(422, f"field '{name}' has {len(value)} items; the limit is {max_items} "
                            f"(max_{'history' if name == 'history' else 'candidates'})")
    for i, t in enumerate(value):
        if not isinstance(t, str):
            raise ApiError(422, f"{name}[{i}] must be a string, got {type(t).__name__}")
        if not t.strip():
            raise ApiError(422, f"{name}[{i}] is an empty title")
        if len(t) > max_chars:
            raise ApiError(422, f"{name}[{i}] is {len(t)} characters long; the limit is {max_chars} "
                                f"(max_title_chars)")
    try:
        clean_titles(value, name)  # control characters etc., refused here rather than after queueing
    except UserError as e:
        raise ApiError(422, str(e)) from None
    return value


def parse_rank_request(raw: bytes, limits: Limits) -> dict[str, Any]:
    """Validate a /rank body against `limits`; returns {"history", "candidates", "top", "domain"} or raises ApiError.
    Pure (no model), so it is tested on its own and runs on the event loop, before the request queues."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" (line {e.lineno}, column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
        raise ApiError(400, f"request body is not valid JSON{where}: {getattr(e, 'msg', str(e))}") from None
    except RecursionError:
        raise ApiError(400, "request body is not valid JSON for this API: nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(422, "request body must be a JSON object with fields 'history' and 'candidates'")
    unknown = sorted(set(body) - set(_FIELDS))
    if unknown:
        raise ApiError(422, f"unknown field(s) {unknown}; expected some of {list(_FIELDS)}")
    history = _titles(body, "history", limits.max_history, limits.max_title_chars)
    candidates = _titles(body, "candidates", limits.max_candidates, limits.max_title_chars)
    top = body.get("top")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise ApiError(422, f"field 'top' must be a positive integer, got {top!r}")
    domain = body.get("domain", "movies")
    if not isinstance(domain, str) or domain not in DOMAINS:
        raise ApiError(422, f"field 'domain' must be one of {sorted(DOMAINS)}, got {domain!r}")
    return {"history": history, "candidates": candidates, "top": top, "domain": domain}


def _request_schema(limits: Limits) -> dict:
    """OpenAPI description of the /rank body (we parse the body ourselves to control sizes and messages)."""
    title = {"type": "string", "minLength": 1, "maxLength": limits.max_title_chars}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["history", "candidates"], "additionalProperties": False,
        "properties": {
            "history": {"type": "array", "items": title, "minItems": 1, "maxItems": limits.max_history,
                        "description": "titles the user interacted with, oldest first"},
            "candidates": {"type": "array", "items": title, "minItems": 1, "maxItems": limits.max_candidates,
                           "description": "titles to rank (duplicates are removed, first occurrence kept)"},
            "top": {"type": "integer", "minimum": 1, "description": "return only the best N"},
            "domain": {"type": "string", "enum": sorted(DOMAINS), "default": "movies"}},
        "example": {"history": ["Star Wars (1977)", "Fargo (1996)"],
                    "candidates": ["Return of the Jedi (1983)", "Babe (1995)"], "top": 1}}}}}}


def create_app(model: str | tuple, *, limits: Limits | None = None, model_label: str | None = None,
               dtype: str | None = None, device: str | None = None) -> FastAPI:
    """The FastAPI app. `model` is a name for `prefrec.model.load_model` (loaded once, at startup) or an
    already-loaded (model, tokenizer) pair."""
    limits = limits or Limits()
    label = model_label or (model if isinstance(model, str) else type(model[0]).__name__)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if isinstance(model, str):
            from prefrec.model import load_model

            app.state.model, app.state.tokenizer = load_model(model, dtype=dtype, device=device)
        else:
            app.state.model, app.state.tokenizer = model
        app.state.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefrec-infer")
        app.state.pending = 0
        try:
            yield
        finally:
            app.state.executor.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(title="prefrec ranking service", version="1", lifespan=lifespan,
                  description="Rank candidate titles for a user's history with a causal LM (summed log-probability "
                              "of each title as the answer to the candidates prompt).")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return _error(422, "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors()))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": label, "limits": asdict(limits)}

    @app.post("/rank", openapi_extra=_request_schema(limits))
    async def rank_endpoint(request: Request):
        req = parse_rank_request(await _read_body(request, limits.max_body_bytes), limits)
        state = request.app.state
        if state.pending >= limits.max_queue:
            raise ApiError(503, f"server busy: {state.pending} requests are waiting (max_queue={limits.max_queue}); "
                                "retry later")
        state.pending += 1  # only touched on the event loop thread, so no lock is needed
        try:
            loop = asyncio.get_running_loop()
            ranking = await loop.run_in_executor(state.executor, _rank_job, state.model, state.tokenizer, req)
        except UserError as e:
            raise ApiError(422, str(e)) from None
        finally:
            state.pending -= 1
        n = len(ranking)  # distinct candidates scored
        if req["top"] is not None:
            ranking = ranking[:req["top"]]
        return {"ranking": ranking, "model": label, "domain": req["domain"], "n_candidates": n}

    return app


def _rank_job(model, tokenizer, req: dict) -> list[dict]:
    """Runs on the single inference thread; returns the full ranking (the endpoint cuts it to `top`)."""
    import torch

    from prefrec.rank import rank

    with torch.inference_mode():
        return rank(model, tokenizer, req["history"], req["candidates"], domain=req["domain"])


def run_server(model: str | tuple, *, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None,
               model_label: str | None = None, log_level: str = "info") -> None:
    """Serve with uvicorn in this process (one worker: the model is in memory once)."""
    import uvicorn

    app = create_app(model, limits=limits, model_label=model_label)
    uvicorn.run(app, host=host, port=port, workers=1, log_level=log_level, timeout_graceful_shutdown=10)
