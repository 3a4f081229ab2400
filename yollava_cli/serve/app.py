"""The HTTP layer: OpenAI's `GET /v1/models` and `POST /v1/chat/completions` over the worker, with
the bearer token, the size caps, OpenAI's error shape, server-sent events, and one log line per
request. Nothing a request sends reaches the model before `chat_request` has read it."""

import asyncio
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from yollava_cli.errors import UserError
from yollava_cli.models.vlm import VLM
from yollava_cli.serve.answers import Shapes, Stops, event, extra_fields, finish_reason
from yollava_cli.serve.chat_request import ApiError, ChatRequest, Limits, read_request
from yollava_cli.serve.logs import Log
from yollava_cli.serve.worker import Busy, Job, Worker
from yollava_cli.store.registry import Registry
from yollava_cli.store.states import ConceptStatus

END = object()  # the answer is done (or failed): its Future says which
POLL_S = 0.25  # how often a waiting request checks that its client is still there


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    body_bytes: int = 32 * 2**20  # a few photos as base64 data URLs
    queue: int = 16
    limits: Limits = field(default_factory=Limits)


class Registries(threading.local):
    """One registry connection per thread (SQLite's rule), opened on first use and kept."""

    def __init__(self, home: Path):
        self.home, self.registry = home, None

    def get(self) -> Registry:
        if self.registry is None:
            self.registry = Registry(self.home)
        return self.registry


def served_models(registry: Registry, vlm: VLM) -> list[str]:
    """The base model, then each concept whose current checkpoint was trained on it: read from the
    registry each time, so concepts added, retrained or removed while the server runs are seen."""
    names = []
    for concept in registry.concepts():
        checkpoint = registry.current_checkpoint(concept.id)
        if concept.status == ConceptStatus.TRAINED and checkpoint and checkpoint.base_fingerprint == vlm.fingerprint:
            names.append(concept.name)
    return [vlm.ref, *names]


def create_app(vlm: VLM, worker: Worker, settings: Settings, log: Log) -> FastAPI:
    app = FastAPI(title="yollava", docs_url=None, redoc_url=None, openapi_url=None)
    registries = Registries(worker.home)
    started = int(time.time())

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return refused(log, request, error)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        return refused(log, request, ApiError(error.status_code, str(error.detail), code="not_found"))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception):
        return refused(log, request, internal(error))

    def authorize(request: Request) -> None:
        if settings.token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.token}".encode()):
            raise ApiError(401, "missing or wrong API key: send `Authorization: Bearer TOKEN` (the server's --token)",
                           code="invalid_api_key")

    async def model_names() -> list[str]:
        return await run_in_threadpool(lambda: served_models(registries.get(), vlm))

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [{"id": name, "object": "model", "created": started, "owned_by": "yollava"}
                                           for name in await model_names()]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        arrived = time.perf_counter()
        authorize(request)
        body = await read_body(request, settings.body_bytes)
        chat = await run_in_threadpool(read_request, body, vlm.ref, settings.limits)  # decoding photos: off the loop
        if chat.model not in await model_names():
            raise ApiError(404, f"the model `{chat.model}` does not exist: GET /v1/models lists the base model and "
                                f"the concepts trained on it", "model", "model_not_found")
        return await answer(request, chat, arrived, worker, settings, log)

    return app


def refused(log: Log, request: Request, error: ApiError, model: str | None = None) -> JSONResponse:
    log.event("refused", error.detail, status=error.status, path=request.url.path, model=model)
    return JSONResponse(error.body(), error.status, headers=error.headers)


async def answer(request: Request, chat: ChatRequest, arrived: float, worker: Worker, settings: Settings, log: Log):
    """The request queued for the worker, and its answer as one JSON document or as a stream."""
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    job = Job(chat, lambda text: loop.call_soon_threadsafe(events.put_nowait, text))
    job.result.add_done_callback(lambda _: loop.call_soon_threadsafe(events.put_nowait, END))
    try:
        worker.submit(job)
    except Busy as e:
        raise ApiError(429, f"the server is busy (its queue holds {settings.queue} requests): try again in "
                            f"{e.retry_after} s", code="server_busy", kind="rate_limit_error",
                       headers={"Retry-After": str(e.retry_after)}) from None
    reply = Reply(request, chat, job, events, arrived, log)
    try:
        first = await reply.next()  # an error before the first word still gets its status code
        if first is END and (failure := reply.failure()):
            reply.done = True
            return refused(log, request, failure, chat.model)
        if chat.stream:
            return StreamingResponse(reply.stream(first), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return JSONResponse(await reply.whole(first))
    except Gone:
        reply.abandon()
        return Response(status_code=499)  # nobody reads it: nginx's "client closed request"


async def read_body(request: Request, cap: int) -> object:
    """The request's JSON, at most `cap` bytes (a declared length over it is refused unread)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise ApiError(413, f"the request is over {cap // 2**20} MB", code="request_too_large")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > cap:
            raise ApiError(413, f"the request is over {cap // 2**20} MB", code="request_too_large")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the request body is not JSON ({e})") from None


def internal(error: Exception) -> ApiError:
    """A failure of the server's own: the client hears its kind, the log its message."""
    failed = ApiError(500, f"internal error ({type(error).__name__}); the server's log has it", kind="server_error")
    failed.detail = f"{type(error).__name__}: {error}"
    return failed


class Gone(Exception):
    """The client closed the connection before its answer was done."""


class Reply:
    """One request's answer as it arrives from the worker: the `stop` strings cut, the client
    watched (gone: the answer is stopped), and one log line at the end."""

    def __init__(self, request: Request, chat: ChatRequest, job: Job, events: asyncio.Queue, arrived: float, log: Log):
        self.request, self.chat, self.job, self.events, self.arrived, self.log = request, chat, job, events, arrived, log
        self.stops, self.shapes, self.first_s, self.done = Stops(chat.stop), Shapes(chat.model), None, False

    async def next(self):
        """The next piece of text, or END; sets the job's stop when the client has gone."""
        while True:
            try:
                item = await asyncio.wait_for(self.events.get(), POLL_S)
            except asyncio.TimeoutError:
                if await self.request.is_disconnected():
                    raise Gone() from None
                continue
            if item is not END:
                self.first_s = self.first_s if self.first_s is not None else time.perf_counter() - self.arrived
                self.stops.feed(item)
                if self.stops.hit:
                    self.job.stop.set()  # the rest of the answer is not wanted
            return item

    def abandon(self) -> None:
        """The client has gone: its answer is stopped (or, still queued, never started), and the
        log says how far it got."""
        if self.done:
            return
        self.done = True
        self.job.stop.set()
        self.job.result.cancel()

        def logged(result) -> None:
            tokens = 0 if result.cancelled() or result.exception() else result.result()["timings"]["tokens"]
            self.log.event("gone", "the client left: its answer was stopped", model=self.chat.model, tokens=tokens,
                           total_s=round(time.perf_counter() - self.arrived, 3))

        self.job.result.add_done_callback(logged)

    def failure(self) -> ApiError | None:
        """The answer's error as the client sees it, logged; None when it succeeded."""
        error = self.job.result.exception()
        if error is None:
            return None
        if isinstance(error, UserError):
            error = ApiError(400, str(error), "messages")
        elif not isinstance(error, ApiError):
            error = internal(error)
        return error

    async def whole(self, first) -> dict:
        item = first
        while item is not END:
            item = await self.next()
        result = self.job.result.result()
        text = self.stops.text.strip() if self.stops.hit else result["answer"]
        self.done = True
        self.logged(result)
        return self.shapes.completion(text, result, finish_reason(result, self.chat.max_tokens, self.stops.hit))

    async def stream(self, first):
        """Server-sent events in OpenAI's chunk shape; the client leaving (the generator closed)
        stops the answer."""
        try:
            yield self.shapes.chunk({"role": "assistant", "content": ""})
            item = first
            while item is not END:
                if piece := self.stops.ready():
                    yield self.shapes.chunk({"content": piece})
                item = await self.next()
            if error := self.failure():  # failed after its first words: said in the stream
                self.done = True
                self.log.event("refused", error.detail, status=error.status, path=self.request.url.path, model=self.chat.model)
                yield event(error.body())
                return
            result = self.job.result.result()
            if rest := self.stops.ready(everything=True):
                yield self.shapes.chunk({"content": rest})
            yield self.shapes.chunk({}, finish_reason(result, self.chat.max_tokens, self.stops.hit), yollava=extra_fields(result))
            if self.chat.include_usage:
                yield self.shapes.usage_chunk(result)
            yield event("[DONE]")
            self.done = True
            self.logged(result)
        except Gone:
            pass
        finally:
            self.abandon()  # closed by the server when the client left mid-stream

    def logged(self, result: dict) -> None:
        timings = result["timings"]
        self.log.event("answered", status=200, model=self.chat.model, stream=self.chat.stream, tokens=timings["tokens"],
                       first_token_s=round(self.first_s, 3) if self.first_s is not None else None,
                       total_s=round(time.perf_counter() - self.arrived, 3))
