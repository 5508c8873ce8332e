"""An HTTP ranking service: `POST /rank` ranks candidate titles for a user history, `GET /health` says it is up.

    create_app("embedded")                 loads the model once, when the server starts (lifespan startup)
    create_app((model, tokenizer))         serves an already-loaded pair (tests, notebooks)
    run_server(...)                         uvicorn, one process, for `prefrec serve`

Request  POST /rank   {"history": [title, ...], "candidates": [title, ...], "top": 5?, "domain": "movies"?}
Response 200          {"ranking": [{"title", "score", "score_per_token", "n_tokens", "rank"}, ...],
                       "model", "domain", "n_candidates", "n_history", "n_tokens"}
Errors   {"error": "<what is wrong, naming the field and the limit>"}
         400 body is not JSON · 413 body larger than max_body_bytes · 422 a field is missing, of the wrong type or
         over a limit (titles, characters, tokens) · 404/405 unknown route/method · 503 (+ Retry-After) the queue is
         full or the request ran past max_seconds

Why the structure (DESIGN §9: bytes and titles do not bound the work, tokens and seconds do):
- The body is read with a byte cap (an ASGI middleware, so a chunked upload is cut off too), then validated by a
  pydantic model built from the limits (FastAPI's own validation; the same model is the OpenAPI schema).
- The request is tokenised (one tokenizer thread) and must fit the token budget min(model context, max_tokens):
  the history is shortened oldest-first to fit, candidates that do not fit are refused with 422.
- A PyTorch model is not meant to run forward passes from several threads at once, and one forward already uses all
  cores, so ONE inference thread runs every request, each with its own tensors. It runs them in chunks of
  `chunk_tokens` tokens (prefrec.serving.rank.score_steps) and between chunks (a) drops a request whose client has gone or
  whose time limit has passed, and (b) continues the request with the fewest tokens left, so a short request waits
  for at most one chunk of a long one. At most `max_queue` requests are admitted; more get 503 with Retry-After.
- The event loop never runs model code, so /health answers at once while work runs.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Annotated, Generator, Literal, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException

from prefrec.errors import UserError
from prefrec.prompts import DOMAINS
from prefrec.scoring.budget import DEFAULT_MAX_TOKENS, token_budget
from prefrec.serving.rank import DEFAULT_CHUNK_TOKENS, check_title, prepare, ranking_of, score_steps


@dataclass(frozen=True)
class Limits:
    """Per-request limits; every refusal message names the limit it hit."""
    max_history: int = 50  # titles in "history"
    max_candidates: int = 100  # titles in "candidates"
    max_title_chars: int = 300  # characters per title
    max_body_bytes: int = 256 * 1024  # raw request body
    max_tokens: int = DEFAULT_MAX_TOKENS  # prompt + candidates after tokenisation (also ≤ the model's context)
    max_seconds: float = 60.0  # from admission to answer, queueing included; the work stops when it passes
    max_queue: int = 16  # requests admitted (waiting or running); more get 503 + Retry-After


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# ---------------------------------------------------------------------------------------------------------------
# Request: byte cap, then a pydantic model

class BodyLimit:
    """ASGI middleware: read the whole body up front with a byte cap (Content-Length checked first, then the
    streamed bytes, since a chunked upload has no length), answer 413 past it, then hand the body to the app.
    Later receive() calls go to the server, so the endpoint still learns when the client disconnects."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _error(413, f"request body is {int(declared)} bytes; the limit is {self.max_bytes} bytes "
                                     "(max_body_bytes)")(scope, receive, send)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await _error(413, f"request body exceeds the limit of {self.max_bytes} bytes "
                                         "(max_body_bytes)")(scope, receive, send)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


def _title(value: str) -> str:
    try:
        return check_title(value, "title")
    except UserError as e:
        raise ValueError(str(e).removeprefix("title: ")) from None


def request_model(limits: Limits) -> type[BaseModel]:
    """The /rank body as a pydantic model with the sizes of `limits` (also the OpenAPI schema)."""
    Title = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_title_chars),
                      AfterValidator(_title)]

    class RankRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
            {"history": ["Star Wars (1977)", "Fargo (1996)"], "candidates": ["Return of the Jedi (1983)",
                                                                             "Babe (1995)"], "top": 1}]})
        history: list[Title] = Field(min_length=1, max_length=limits.max_history,
                                     description="titles the user interacted with, oldest first (the oldest are "
                                                 "dropped when the prompt would exceed the token budget)")
        candidates: list[Title] = Field(min_length=1, max_length=limits.max_candidates,
                                        description="titles to rank (duplicates removed, first occurrence kept)")
        top: Optional[int] = Field(None, ge=1, description="return only the best N")
        domain: Literal[tuple(sorted(DOMAINS))] = "movies"  # type: ignore[valid-type]

    return RankRequest


_LIMIT_NAMES = {"history": "max_history", "candidates": "max_candidates"}


def _describe(e: dict, fields: list[str]) -> tuple[int, str]:
    """(status, message) for one pydantic/FastAPI validation error, naming the field and the limit."""
    loc = [x for x in e.get("loc", ()) if x != "body"]
    name = "".join(f"[{x}]" if isinstance(x, int) else (f".{x}" if i else str(x)) for i, x in enumerate(loc))
    kind, ctx = e.get("type", ""), e.get("ctx") or {}
    if kind == "json_invalid":
        return 400, f"request body is not valid JSON (at character {loc[0] if loc else '?'}): {ctx.get('error')}"
    if not loc:
        return 422, f"request body must be a JSON object with fields 'history' and 'candidates' ({e.get('msg')})"
    if kind == "missing":
        return 422, f"field '{name}' is required: a list of title strings"
    if kind == "extra_forbidden":
        return 422, f"unknown field '{name}'; expected some of {fields}"
    if kind == "too_long" and name in _LIMIT_NAMES:
        return 422, (f"field '{name}' has {ctx.get('actual_length')} items; the limit is {ctx.get('max_length')} "
                     f"({_LIMIT_NAMES[name]})")
    if kind == "too_short" and name in _LIMIT_NAMES:
        return 422, f"field '{name}' must not be empty"
    if kind == "string_too_long":
        return 422, (f"{name} is {len(e.get('input') or '')} characters long; the limit is {ctx.get('max_length')} "
                     "(max_title_chars)")
    msg = str(e.get("msg", "")).removeprefix("Value error, ")  # our own title checks
    return 422, f"{name if len(loc) > 1 else f'field {name!r}'}: {msg}"


# ---------------------------------------------------------------------------------------------------------------
# The inference thread

@dataclass(eq=False)
class Job:
    steps: Generator  # prefrec.serving.rank.score_steps: yields tokens done, returns the scores
    total: int  # tokens of the packed row
    deadline: float  # time.monotonic() past which the job is dropped
    future: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)  # the client has gone
    done: int = 0  # tokens computed so far


class RequestTimeout(Exception):
    pass


class Worker:
    """One thread running jobs chunk by chunk: between chunks it drops cancelled and expired jobs and continues the
    one with the fewest tokens left (among the ones already started once two are, which bounds the KV caches held)."""

    def __init__(self, max_started: int = 2):
        self.jobs: list[Job] = []
        self.max_started = max_started
        self.counts = {"done": 0, "failed": 0, "cancelled": 0, "timed_out": 0}
        self.seconds_per_token = 0.0  # running estimate, for Retry-After
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="prefrec-infer", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cv:
            self.jobs.append(job)
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=30)

    def _drop(self, job: Job, kind: str, exc: BaseException | None) -> None:
        self.jobs.remove(job)
        self.counts[kind] += 1
        job.steps.close()  # frees the KV cache now, not at garbage collection
        if exc is not None and not job.future.done():
            job.future.set_exception(exc)
        elif not job.future.done():
            job.future.cancel()

    def _pick(self) -> Job | None:
        with self._cv:
            while not self.jobs and not self._closed:
                self._cv.wait()
            if self._closed:
                return None
            now = time.monotonic()
            for job in list(self.jobs):
                if job.cancelled.is_set():
                    self._drop(job, "cancelled", None)
                elif now > job.deadline:
                    self._drop(job, "timed_out", RequestTimeout())
            started = [j for j in self.jobs if j.done]
            pool = started if len(started) >= self.max_started else self.jobs
            return min(pool, key=lambda j: j.total - j.done) if pool else None

    def _run(self) -> None:
        while True:
            job = self._pick() if not self._closed else None
            if job is None:
                if self._closed:
                    return
                continue
            t0 = time.perf_counter()
            try:
                done = next(job.steps)
            except StopIteration as end:
                with self._cv:
                    self.jobs.remove(job)
                    self.counts["done"] += 1
                job.future.set_result(end.value)
                continue
            except Exception as e:  # noqa: BLE001 - handed to the request, which answers 500
                with self._cv:
                    self._drop(job, "failed", e)
                continue
            rate = (time.perf_counter() - t0) / max(done - job.done, 1)
            self.seconds_per_token = rate if not self.seconds_per_token else 0.8 * self.seconds_per_token + 0.2 * rate
            job.done = done

    def retry_after(self) -> int:
        """Seconds until the queued work is probably done (at least 1), for the Retry-After header."""
        with self._cv:
            left = sum(j.total - j.done for j in self.jobs)
        return max(1, math.ceil(left * self.seconds_per_token))


# ---------------------------------------------------------------------------------------------------------------
# The app

def create_app(model: str | tuple, *, limits: Limits | None = None, model_label: str | None = None,
               dtype: str | None = None, device: str | None = None, docs: bool = False,
               chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> FastAPI:
    """The FastAPI app. `model` is a name for `prefrec.model.load_model` (loaded once, at startup) or an
    already-loaded (model, tokenizer) pair. `docs=True` serves Swagger UI at /docs (its script and style come from
    a CDN, so the browser needs the internet); /openapi.json is always served, from this process."""
    limits = limits or Limits()
    label = model_label or (model if isinstance(model, str) else type(model[0]).__name__)
    RankRequest = request_model(limits)
    fields = list(RankRequest.model_fields)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if isinstance(model, str):
            from prefrec.model import load_model

            app.state.model, app.state.tokenizer = load_model(model, dtype=dtype, device=device)
        else:
            app.state.model, app.state.tokenizer = model
        app.state.budget = token_budget(app.state.model, limits.max_tokens)
        app.state.tokenize = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefrec-tokenize")
        app.state.worker = Worker()
        app.state.admitted = 0
        try:
            yield
        finally:
            app.state.worker.close()
            app.state.tokenize.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(title="prefrec ranking service", version="2", lifespan=lifespan,
                  docs_url="/docs" if docs else None, redoc_url=None,
                  description="Rank candidate titles for a user's history with a causal LM (summed log-probability "
                              "of each title as the answer to the candidates prompt).")
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        described = [_describe(e, fields) for e in exc.errors()]
        return _error(max(s for s, _ in described), "; ".join(m for _, m in described))

    @app.get("/health")
    async def health(request: Request) -> dict:
        state = request.app.state
        return {"status": "ok", "model": label, "limits": asdict(limits), "max_tokens_effective": state.budget.tokens,
                "admitted": state.admitted, "jobs": dict(state.worker.counts)}

    async def rank_endpoint(req, request: Request):
        state = request.app.state
        if state.admitted >= limits.max_queue:
            retry = state.worker.retry_after()
            raise ApiError(503, f"server busy: {state.admitted} requests admitted (max_queue={limits.max_queue}); "
                                f"retry in {retry} s", {"Retry-After": str(retry)})
        state.admitted += 1  # only touched on the event loop thread, so no lock is needed
        try:
            return await _serve(request, req, state, limits, chunk_tokens, label)
        finally:
            state.admitted -= 1

    # the body model is built at run time, so it is attached here rather than in a (string) annotation
    rank_endpoint.__annotations__["req"] = RankRequest
    app.post("/rank")(rank_endpoint)
    return app


async def _serve(request: Request, req, state, limits: Limits, chunk_tokens: int, label: str):
    """Tokenise within the budget, run on the inference thread, stop early when the client leaves."""
    deadline = time.monotonic() + limits.max_seconds
    loop = asyncio.get_running_loop()
    try:
        tree, history, candidates = await loop.run_in_executor(
            state.tokenize, lambda: prepare(state.tokenizer, req.history, req.candidates, budget=state.budget,
                                            domain=req.domain))
    except UserError as e:
        raise ApiError(422, str(e)) from None
    job = Job(steps=score_steps(state.model, tree, chunk_tokens=chunk_tokens), total=tree.n_tokens(),
              deadline=deadline)
    state.worker.submit(job)
    waiting = asyncio.wrap_future(job.future)
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=0.2)
            if done:
                break
            if await request.is_disconnected():
                job.cancelled.set()  # the worker drops it before its next chunk
                return Response(status_code=499)
        summed = waiting.result()
    except RequestTimeout:
        retry = state.worker.retry_after()
        raise ApiError(503, f"request took longer than the limit of {limits.max_seconds:g} s (max_seconds) and was "
                            f"stopped; retry in {retry} s", {"Retry-After": str(retry)}) from None
    except asyncio.CancelledError:
        job.cancelled.set()
        raise
    ranking = ranking_of(tree, candidates, summed)
    return {"ranking": ranking[:req.top] if req.top is not None else ranking, "model": label, "domain": req.domain,
            "n_candidates": len(ranking), "n_history": len(history), "n_tokens": tree.n_tokens()}


def run_server(model: str | tuple, *, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None,
               model_label: str | None = None, log_level: str = "info", docs: bool = False) -> None:
    """Serve with uvicorn in this process (one worker: the model is in memory once)."""
    import uvicorn

    app = create_app(model, limits=limits, model_label=model_label, docs=docs)
    uvicorn.run(app, host=host, port=port, workers=1, log_level=log_level, timeout_graceful_shutdown=10)
