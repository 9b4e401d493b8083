"""`edge-awares serve`: the runtime as an OpenAI-compatible HTTP service (the `[serve]` extra: starlette, uvicorn).

    edge-awares serve [--engine DIR] [--host 127.0.0.1] [--port 8080] [--allow-dir DIR]

    POST /v1/chat/completions   messages with text and image_url parts (data: URIs; file:// only under --allow-dir),
                                max_tokens, temperature, seed, stream (server-sent events)
    GET  /v1/models             the engine, as one model
    GET  /health                status, engine, queue, prefix cache
    GET  /                      a page for people: drop an image, ask, see the answer and the crops it fetched

One engine is shared by every request through one worker thread (the runtime keeps one KV buffer); requests wait in
a bounded queue and are refused with 503 and Retry-After when it is full. The reply is a normal chat completion;
what the crop loop did (crops, boxes, RTR, per-turn tokens and times) travels in the extension field `edge_awares`.
Every bad request is a 4xx JSON error in the API's error shape ({"error": {"message", "type", "param", "code"}});
request and image sizes are checked before anything is decoded. Runs without torch.

Follow-ups: the conversation about an image starts at the last user message carrying one; the exchanges after it
are rendered as earlier turns (their crop turns are not replayed). A prefix cache (edge_awares/prefix.py,
`--cache-mb`) keeps the KV of earlier prompts and the vision features of views seen, so a second question on the
same image, or a follow-up, prefills only its new text; /health reports it.

A streaming client that disconnects stops its run at the next token (the engine is free for the next request);
shutting down (SIGINT/SIGTERM) lets in-flight requests finish, up to --timeout. Load: benchmarks/bench_serve.py.

The page (assets/serve_page.html) is one file with no build step and no external assets.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, EdgeAwaresError, ImageError, PromptError

# Limits (a default lives here only; the CLI flags override them).
MAX_REQUEST_BYTES = 32 << 20  # one request body, before JSON parsing
MAX_IMAGE_BYTES = 20 << 20  # one decoded image file
MAX_IMAGE_PIXELS = 40_000_000
MAX_QUEUE = 8  # requests waiting beyond the one running
REQUEST_TIMEOUT_S = 120.0
MAX_MESSAGES = 64
DEFAULT_CACHE_MB = 256.0


@dataclass(frozen=True)
class ServeConfig:
    engine: str | None = None  # None: the shipped demo engine
    host: str = "127.0.0.1"
    port: int = 8080
    allow_dirs: tuple[str, ...] = ()  # folders file:// image URLs may name
    max_queue: int = MAX_QUEUE
    timeout_s: float = REQUEST_TIMEOUT_S
    max_request_bytes: int = MAX_REQUEST_BYTES
    max_image_bytes: int = MAX_IMAGE_BYTES
    max_image_pixels: int = MAX_IMAGE_PIXELS
    provider: str = "cpu"
    cache_mb: float = DEFAULT_CACHE_MB  # the prefix cache's budget (0: off)
    memory_budget: float | None = None  # GiB the engine runtime and the prefix cache may plan for (None: the default)

    def validate(self) -> "ServeConfig":
        from .ranges import Range, check_ranges

        check_ranges(self, {"port": Range(0, 65535, integer=True), "max_queue": Range(0, 10**6, integer=True),
                            "timeout_s": Range(0.0, 86400.0, lo_open=True),
                            "max_request_bytes": Range(1024, 1 << 34, integer=True),
                            "max_image_bytes": Range(1024, 1 << 34, integer=True),
                            "max_image_pixels": Range(1, 1 << 34, integer=True),
                            "cache_mb": Range(0.0, 1 << 20)})
        from .ranges import MEMORY_BUDGET_GB

        MEMORY_BUDGET_GB.check("--memory-budget", self.memory_budget)
        for d in self.allow_dirs:
            if not Path(d).is_dir():
                raise ConfigError(f"--allow-dir {d}: not a folder")
        return self


class ApiError(Exception):
    """A request the API refuses: HTTP status, OpenAI error type, message, and the offending parameter."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ----------------------------------------------------------------------------------------------- requests
@dataclass
class ChatRequest:
    """What the crop loop needs from a chat completion request."""

    question: str
    image: object  # PIL image
    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stream: bool = False
    model: str = ""
    history: list = field(default_factory=list)  # earlier (question, answer) pairs about the image
    max_rtr: float | None = None  # the crop loop's budget on the retained-token ratio


def parse_request(body: dict, cfg: ServeConfig) -> ChatRequest:
    """Validate a chat completion body; ApiError (400) naming the parameter for anything the loop cannot run."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise ApiError(400, f"at most {MAX_MESSAGES} messages", param="messages")
    # Each message as (role, text, image url): the conversation about an image starts at the last user message
    # that carries one; the user/assistant exchanges after it are the follow-up's history.
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer", "tool"):
            raise ApiError(400, f"messages[{i}] must be an object with a role (system, user, assistant)",
                           param=f"messages[{i}]")
        if m["role"] in ("user", "assistant"):
            turns.append((m["role"], *_content(m, i)))
    starts = [k for k, (role, _, image) in enumerate(turns) if role == "user" and image is not None]
    if not starts:
        raise ApiError(400, "no image: a user message needs an image_url part", param="messages")
    conv = turns[starts[-1]:]
    if conv[-1][0] != "user" or not conv[-1][1]:
        raise ApiError(400, "the last message must be a user message with question text", param="messages")
    question, image_ref = conv[-1][1], conv[0][2]
    history, pending = [], None
    for role, text, _ in conv[:-1]:
        if role == "user":
            pending = text if pending is None else f"{pending} {text}".strip()
        elif pending is not None:
            history.append((pending, text))
            pending = None
    if pending:  # two user messages in a row end the conversation: their texts form the question
        question = f"{pending} {question}"
    # Every other field before the image is decoded: a bad number costs no decoding.
    from .ranges import LIMITS

    lo, hi = LIMITS["max_new_tokens"]
    max_tokens = _number(body, "max_tokens", int, lo, hi)
    if max_tokens is None:
        max_tokens = _number(body, "max_completion_tokens", int, lo, hi)
    t = _number(body, "temperature", float, 0.0, 2.0)
    p = _number(body, "top_p", float, 0.0, 1.0)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", param="stream")
    if body.get("n", 1) != 1:
        raise ApiError(400, "n must be 1 (one answer per request)", param="n")
    seed = _number(body, "seed", int, 0, 2**32 - 1)
    max_rtr = body.get("max_rtr")
    if max_rtr is not None:
        from .ranges import MAX_RTR

        try:
            MAX_RTR.check("max_rtr", max_rtr)
        except ConfigError as e:
            raise ApiError(400, str(e), param="max_rtr") from None
    return ChatRequest(question=question, image=load_image_url(*image_ref, cfg), max_tokens=max_tokens,
                       temperature=0.0 if t is None else t, top_p=1.0 if p is None or p == 0 else p, seed=seed,
                       stream=stream, model=str(body.get("model") or ""), history=history, max_rtr=max_rtr)


def _content(m: dict, i: int) -> tuple[str, tuple[str, str] | None]:
    """A message's text (its text parts joined) and its image URL with where it was (or None)."""
    texts, image, content = [], None, m.get("content")
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            if not isinstance(part, dict):
                raise ApiError(400, f"{where} must be an object", param=where)
            kind = part.get("type")
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise ApiError(400, f"{where}.text must be a string", param=where)
                texts.append(part["text"])
            elif kind == "image_url":
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                if not isinstance(url, str):
                    raise ApiError(400, f"{where}.image_url.url must be a string", param=where)
                image = (url, where)
            else:
                raise ApiError(400, f"{where}: unsupported content type {kind!r} (text, image_url)", param=where)
    elif content is not None or m.get("role") == "user":
        raise ApiError(400, f"messages[{i}].content must be a string or a list of parts", param=f"messages[{i}]")
    return " ".join(t.strip() for t in texts if t.strip()), image


def _number(body: dict, key: str, kind, lo, hi):
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
        raise ApiError(400, f"{key} must be a number" + (" (an integer)" if kind is int else ""), param=key)
    if not lo <= v <= hi:
        raise ApiError(400, f"{key}={v} is out of range ({lo}..{hi})", param=key)
    return kind(v)


def load_image_url(url: str, where: str, cfg: ServeConfig):
    """A data: URI (base64) or, under an --allow-dir, a file:// URL; sizes checked before decoding."""
    from .images import load_image

    if url.startswith("data:"):
        head, sep, payload = url.partition(",")
        if not sep or ";base64" not in head:
            raise ApiError(400, f"{where}: a data: URI must be base64 (data:image/png;base64,...)", param=where)
        if len(payload) * 3 // 4 > cfg.max_image_bytes:
            raise ApiError(413, f"{where}: the image exceeds {cfg.max_image_bytes} bytes", param=where,
                           code="image_too_large")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"{where}: the data: URI is not valid base64", param=where) from None
        source = data
    elif url.startswith("file://"):
        path = Path(url[len("file://"):])
        if not cfg.allow_dirs:
            raise ApiError(400, f"{where}: file:// URLs are off (start the server with --allow-dir)", param=where)
        resolved = path.resolve()
        if not any(resolved.is_relative_to(Path(d).resolve()) for d in cfg.allow_dirs):
            raise ApiError(403, f"{where}: {path} lies outside every --allow-dir", param=where,
                           type_="permission_error")
        source = str(resolved)
    else:
        raise ApiError(400, f"{where}: use a data: URI (or file:// under --allow-dir); the server fetches nothing",
                       param=where)
    try:
        return load_image(source, max_pixels=cfg.max_image_pixels, max_bytes=cfg.max_image_bytes)
    except ImageError as e:
        raise ApiError(400, f"{where}: {e}", param=where, code="bad_image") from None


# ----------------------------------------------------------------------------------------------- the worker
class Worker:
    """One engine, one thread: requests run one at a time in arrival order; at most `max_queue` wait."""

    def __init__(self, session, max_queue: int):
        self.session, self.max_queue = session, max_queue
        self._lock = threading.Lock()
        self.running = 0
        self.waiting = 0
        self.served = 0
        self.failed = 0
        self.cancelled = 0
        self._guard = threading.Lock()

    def admit(self) -> None:
        with self._guard:
            if self.waiting >= self.max_queue and self.running:
                raise ApiError(503, f"the server is busy ({self.max_queue} requests waiting); retry later",
                               type_="server_busy", code="queue_full", headers={"Retry-After": "1"})
            self.waiting += 1

    def run(self, req: ChatRequest, on_token=None):
        """Run one request on the session (blocking; call from a thread)."""
        from .session import Sampler

        with self._lock:
            with self._guard:
                self.waiting -= 1
                self.running += 1
            try:
                sampler = Sampler(temperature=req.temperature, top_p=req.top_p, seed=req.seed)
                result = self.session.run(req.image, req.question, sampler=sampler, max_new_tokens=req.max_tokens,
                                          on_token=on_token, history=req.history, max_rtr=req.max_rtr)
                self.served += 1
                return result
            except Cancelled:
                self.cancelled += 1
                raise
            except BaseException:
                self.failed += 1
                raise
            finally:
                with self._guard:
                    self.running -= 1

    def status(self) -> dict:
        return {"running": self.running, "waiting": self.waiting, "limit": self.max_queue, "served": self.served,
                "failed": self.failed, "cancelled": self.cancelled}


def loop_facts(result, image=None) -> dict:
    """The extension field: what the crop loop did (and, given the image, its size and its first view's: the
    boxes are in image pixels, the page draws them on the first view)."""
    sizes = {}
    if image is not None:
        w, h = result.first_view_size
        sizes = {"image": {"width": image.width, "height": image.height}, "first_view": {"width": w, "height": h}}
    return {**sizes, "crops": result.crops, "boxes": [list(b) for b in result.boxes], "rtr": result.rtr,
            "visual_tokens": result.visual_tokens, "native_visual_tokens": result.native_visual_tokens,
            "requested": result.requested, "parse_failures": result.parse_failures, "protocol": result.protocol,
            "max_rtr": result.max_rtr, "budget_dropped": result.budget_dropped,
            "turns": [{"kind": t.kind, "visual_tokens": t.visual_tokens, "prefill_tokens": t.prefill_tokens,
                       "generated_tokens": len(t.generated_ids), "reused_tokens": t.reused_tokens,
                       "parsed": t.parsed, "vision_ms": t.vision_ms,
                       "prefill_ms": t.prefill_ms, "decode_ms": t.decode_ms} for t in result.turns]}


def _usage(result) -> dict:
    prompt = sum(t.prefill_tokens for t in result.turns)
    completion = sum(len(t.generated_ids) for t in result.turns)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _finish_reason(result, stop_ids) -> str:
    """"length" when the last turn ran out of tokens before its stop token, else "stop"."""
    last = result.turns[-1] if result.turns else None
    cut = last is not None and last.generated_ids and last.generated_ids[-1] not in stop_ids
    return "length" if cut else "stop"


class Cancelled(Exception):
    """The client of a streamed request went away: the run stops at its next token and frees the engine."""


class AnswerStream:
    """Turns sampled tokens into answer-text deltas: each turn's text goes through the protocol's answer_text, so a
    request turn (a tool call) shows nothing and the answer streams as it is decoded. `cancel()` (the client
    disconnected, the deadline passed) stops the run at its next token; with `emit` None only that is done."""

    def __init__(self, session, emit):
        self.tok, self.protocol, self.emit = session.tok, session.protocol, emit
        self.stop_ids = session.stop_ids
        self.turn, self.ids, self.sent = -1, [], ""
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    def __call__(self, turn: int, token_id: int) -> None:
        if self._cancel.is_set():
            raise Cancelled()
        if self.emit is None:  # a plain request: only the deadline's cancel
            return
        if turn != self.turn:
            self.turn, self.ids, self.sent = turn, [], ""
        if token_id in self.stop_ids:
            return
        self.ids.append(token_id)
        now = self.protocol.answer_text(self.tok.decode(self.ids))
        if now.startswith(self.sent) and len(now) > len(self.sent):
            self.emit(now[len(self.sent):])
            self.sent = now


# ----------------------------------------------------------------------------------------------- the app
def create_app(cfg: ServeConfig, session=None):
    """The ASGI app (starlette). `session`: a Session to serve (tests); default: `cfg.engine` opened once."""
    try:
        from starlette.applications import Starlette
        from starlette.requests import ClientDisconnect, Request
        from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
        from starlette.routing import Route
    except ImportError:
        from .errors import BackendUnavailableError

        raise BackendUnavailableError("serve needs starlette and uvicorn: pip install 'edge-awares[serve]'") from None
    from .api import open_session, require_demo_engine

    engine = cfg.engine or require_demo_engine()
    if session is None:
        session = open_session(engine=engine, provider=cfg.provider, memory_budget=cfg.memory_budget)
    from .prefix import PrefixCache
    from .session import can_snapshot

    cache = PrefixCache(int(cfg.cache_mb * (1 << 20))) if cfg.cache_mb else None
    if cache is not None:
        cache.enabled = can_snapshot(session.backend.new_cache(8))  # llama.cpp's cache takes no snapshots
        session.prefix_cache = cache if cache.enabled else None
        if cache.enabled and hasattr(session.backend, "reserve"):
            # The cache fills over many requests; its whole budget counts against the runtime's from the start, so
            # a budget too small for engine + cache is refused here, before anything listens.
            session.backend.reserve(f"a prefix cache of {cfg.cache_mb:g} MiB", cache.budget)
    model_id = Path(engine).name if engine else "edge-awares"
    worker = Worker(session, cfg.max_queue)
    created = int(time.time())

    page = (Path(__file__).resolve().parent / "assets" / "serve_page.html").read_text(encoding="utf-8")

    async def index(request):
        return HTMLResponse(page)

    def error(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    async def health(request):
        return JSONResponse({"status": "ok", "engine": str(engine), "model": model_id, "queue": worker.status(),
                             "cache": cache.stats() if cache is not None else {"enabled": False},
                             "memory": memory_plan(session)})

    async def models(request):
        return JSONResponse({"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                                         "owned_by": "edge-awares"}]})

    async def read_body(request: Request) -> dict:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > cfg.max_request_bytes):
            raise ApiError(413, f"the request exceeds {cfg.max_request_bytes} bytes", code="request_too_large")
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > cfg.max_request_bytes:
                    raise ApiError(413, f"the request exceeds {cfg.max_request_bytes} bytes", code="request_too_large")
                chunks.append(chunk)
        except ClientDisconnect:
            raise ApiError(400, "the client went away mid-request") from None
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the body is not valid JSON ({e})") from None

    async def completions(request):
        try:
            body = await read_body(request)
            req = await asyncio.to_thread(parse_request, body, cfg)  # image decoding off the event loop
            worker.admit()
        except ApiError as e:
            return error(e)
        rid = "chatcmpl-" + uuid.uuid4().hex[:24]
        if req.stream:
            return StreamingResponse(_stream(req, rid), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        stop = AnswerStream(session, emit=None)  # no deltas: only its cancel, for the deadline
        job = asyncio.ensure_future(asyncio.to_thread(worker.run, req, stop))
        try:
            result = await asyncio.wait_for(asyncio.shield(job), cfg.timeout_s)
        except asyncio.TimeoutError:
            stop.cancel()  # the run stops at its next token, so the engine is free for the next request
            try:
                await job
            except Cancelled:
                pass
            except EdgeAwaresError:
                pass
            return error(ApiError(504, f"the request took longer than {cfg.timeout_s:g} s", type_="timeout",
                                  code="timeout"))
        except (PromptError, ImageError, ConfigError) as e:
            return error(ApiError(400, str(e)))
        except EdgeAwaresError as e:
            return error(ApiError(500, f"the runtime failed: {e}", type_="server_error"))
        return JSONResponse({
            "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.answer},
                         "finish_reason": _finish_reason(result, session.stop_ids), "logprobs": None}],
            "usage": _usage(result), "edge_awares": loop_facts(result, req.image)})

    async def _stream(req: ChatRequest, rid: str):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def emit(text: str):
            loop.call_soon_threadsafe(queue.put_nowait, ("delta", text))

        def chunk(delta: dict, finish=None, **extra) -> str:
            obj = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model_id,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
            return f"data: {json.dumps(obj)}\n\n"

        stream = AnswerStream(session, emit)

        async def job():
            try:
                result = await asyncio.to_thread(worker.run, req, stream)
                queue.put_nowait(("done", result))
            except Cancelled:
                pass  # the client is gone; the engine is free again
            except EdgeAwaresError as e:
                queue.put_nowait(("error", e))

        task = asyncio.create_task(job())
        deadline = loop.time() + cfg.timeout_s
        yield chunk({"role": "assistant", "content": ""})
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(queue.get(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    err = ApiError(504, f"the request took longer than {cfg.timeout_s:g} s", type_="timeout")
                    yield f"data: {json.dumps(err.body())}\n\n"
                    break
                if kind == "delta":
                    yield chunk({"content": value})
                elif kind == "error":
                    yield f"data: {json.dumps(ApiError(400, str(value)).body())}\n\n"
                    break
                else:
                    yield chunk({}, _finish_reason(value, session.stop_ids), usage=_usage(value),
                                edge_awares=loop_facts(value, req.image))
                    break
            yield "data: [DONE]\n\n"
        finally:
            if not task.done():  # the client went away (or the deadline passed): stop decoding, free the engine
                stream.cancel()
                await asyncio.shield(task)

    async def not_found(request, exc):
        return error(ApiError(404, f"no route {request.url.path}", code="not_found"))

    async def bad_method(request, exc):
        return error(ApiError(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed"))

    async def internal(request, exc):  # a bug, not bad input: the API's error shape, no traceback in the reply
        return error(ApiError(500, f"internal error ({type(exc).__name__})", type_="server_error"))

    app = Starlette(routes=[Route("/", index), Route("/health", health), Route("/v1/models", models),
                            Route("/v1/chat/completions", completions, methods=["POST"])],
                    exception_handlers={404: not_found, 405: bad_method, Exception: internal})
    app.state.worker = worker
    app.state.memory = lambda: memory_plan(session)
    return app


def memory_plan(session) -> dict | None:
    """The engine runtime's budget and what it holds against it (bytes; None for a backend without one)."""
    memory = getattr(session.backend, "memory", None)
    return memory() if memory is not None else None


def serve(cfg: ServeConfig) -> None:
    try:
        import uvicorn
    except ImportError:
        from .errors import BackendUnavailableError

        raise BackendUnavailableError("serve needs starlette and uvicorn: pip install 'edge-awares[serve]'") from None
    app = create_app(cfg.validate())  # opens the engine first: a bad one stops here, before anything listens
    import sys

    mem = app.state.memory()
    plan = (f"; memory budget {mem['budget'] / (1 << 30):.1f} GiB: engine {mem['weights'] / (1 << 20):.0f} MiB, "
            f"prefix cache {mem['reserved'] / (1 << 20):.0f} MiB, KV cache and vision per request"
            if mem else "")
    print(f"serving {cfg.engine or 'the shipped demo engine'} on http://{cfg.host}:{cfg.port} (prefix cache budget "
          f"{cfg.cache_mb:g} MiB{plan})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", timeout_graceful_shutdown=cfg.timeout_s)


def _command():
    import click

    from .ranges import memory_budget_option

    @click.command("serve")
    @click.option("--engine", type=click.Path(), help="Engine directory (default: the shipped demo engine).")
    @click.option("--host", default=ServeConfig.host, show_default=True)
    @click.option("--port", type=int, default=ServeConfig.port, show_default=True)
    @click.option("--allow-dir", "allow_dirs", multiple=True, type=click.Path(),
                  help="A folder file:// image URLs may name (repeatable); none: file:// is refused.")
    @click.option("--max-queue", type=int, default=ServeConfig.max_queue, show_default=True,
                  help="Requests that may wait beyond the running one; more get 503 with Retry-After.")
    @click.option("--timeout", "timeout_s", type=float, default=ServeConfig.timeout_s, show_default=True,
                  help="Seconds per request.")
    @click.option("--provider", default="cpu", show_default=True)
    @click.option("--cache-mb", type=float, default=ServeConfig.cache_mb, show_default=True,
                  help="Budget of the prefix cache across questions (KV snapshots and vision features; 0: off).")
    @memory_budget_option
    def serve_command(**kw):
        """An OpenAI-compatible HTTP server over one engine (POST /v1/chat/completions, GET /v1/models, /health)."""
        cfg = ServeConfig(allow_dirs=tuple(kw.pop("allow_dirs")), **kw).validate()
        serve(cfg)

    return serve_command


COMMANDS = [_command()]
