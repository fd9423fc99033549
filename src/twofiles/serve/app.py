"""`create_app`: the OpenAI-compatible API over the continuous-batching scheduler.

What it owns: the FastAPI app and its lifespan (the scheduler's thread starts and stops with it),
GET /health, API keys (compared in constant time), the body-size limit, the security headers
(CONTENT_SECURITY_POLICY and friends, on every response), CORS (closed unless
`settings.cors_origins` names origins), the server's guards (`app.state.guards`, a
serve.guarding.ServeGuards), and turning every error into a 4xx/5xx with an OpenAI-style body. What it leaves to others: the limits' values (settings.py), request checking
(protocol.py), the served models and the scheduler glue (core.py), the OpenAI routes
(openai_routes.py), the web pages and their routes (web.py; the Inside page: inside.py), batching and sampling
(twofiles.scheduler), chat rendering and tool-call parsing (twofiles.chat).

A persona (a LoadedModel with `persona` set) is served under its own name; one that shares a
model's weights runs on that model's engine (`app.state.shared`: persona -> model), and the routes
apply its system message, few-shot turns, template and sampling defaults per request (core.py).

For extra routes (the web pages) the app exposes `app.state.models` (name -> LoadedModel),
`app.state.scheduler` (twofiles.scheduler.Scheduler; `submit(model, prompt_ids, params)` returns
a handle to `async for`), `app.state.settings` (ServeSettings), `app.state.require_api_key`, and
core's `chat_format(app, model)` / `generate_reply(app, model, messages, params)`.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from twofiles.errors import TwofilesError
from twofiles.guard import GuardConfig
from twofiles.scheduler import Scheduler
from twofiles.serve.core import RagService, chat_format, generate_reply, model_name
from twofiles.serve.guarding import ServeGuards
from twofiles.serve.inside import ServedSAE
from twofiles.serve.inside import attach as attach_inside
from twofiles.serve.metrics import install_metrics
from twofiles.serve.openai_routes import add_openai_routes
from twofiles.serve.protocol import ApiError, pydantic_message
from twofiles.serve.settings import ServeSettings
from twofiles.serve.web import attach as attach_web

if TYPE_CHECKING:
    from twofiles.artifact import LoadedModel


# ---------------------------------------------------------------------------------------------
# Limits that sit below the routes


class _BodyLimit:
    """Pure ASGI middleware: a body over `max_bytes` gets 413 before anything parses it, whether
    the client declared its length or streams it in chunks."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = ApiError(
            413,
            f"request body is larger than this server's limit of {self.max_bytes} bytes",
            code="body_too_large",
        )
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await JSONResponse(too_big.body(), status_code=413)(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise StarletteHTTPException(
                        413, too_big.message
                    )  # FastAPI re-raises HTTPExceptions from body reading
            return message

        await self.app(scope, limited, send)


# The pages render model output as text and load nothing from elsewhere; this policy makes the
# browser refuse anything else (an injected script, a remote image that would carry data out).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class _SecurityHeaders:
    """Pure ASGI middleware: every response gets SECURITY_HEADERS (pages, scripts, JSON alike:
    a JSON body opened as a page is covered too)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in have]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _auth(settings: ServeSettings):
    # Keys are compared as SHA-256 digests (equal lengths: the time says nothing of a key's
    # length), every key each time (no early exit: the time says nothing of which one matched).
    digests = [_digest(k) for k in sorted(settings.api_keys)]

    async def require_api_key(request: Request) -> None:
        if not digests:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        sent = _digest(token.strip())
        matched = 0
        for d in digests:
            matched |= hmac.compare_digest(sent, d)
        if scheme.lower() != "bearer" or not matched:
            raise ApiError(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                type="authentication_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_api_key


# ---------------------------------------------------------------------------------------------
# The app


def create_app(
    models: Mapping[str, LoadedModel],
    settings: ServeSettings | None = None,
    *,
    shared: Mapping[str, str] | None = None,
    rag: RagService | None = None,
    guard: GuardConfig | None = None,
    saes: Mapping[str, Sequence[ServedSAE]] | None = None,
) -> FastAPI:
    """The server for `models` (name -> loaded model) under `settings`. The scheduler's thread
    starts with the app (lifespan) and stops with it. `shared` maps a persona (a view of another
    served model's weights, formats.resolve.persona_view) to the model whose engine it runs on.
    With `rag` (serve --rag), requests may ask for grounded replies and the web page gets the
    retrieve tool; the app closes it. `guard` (serve --guard, --secret, --allow-hosts) is the
    guard every chat request gets; a request's own `guard` field can only add to it. `saes`
    (serve --sae) maps a served model to the sparse autoencoders its Inside page reads."""
    settings = settings or ServeSettings()
    if not models:
        raise TwofilesError("no models to serve")
    shared = dict(shared or {})
    for name, base in shared.items():
        if name not in models or base not in models or base in shared:
            raise TwofilesError(
                f"{name!r} cannot be served on {base!r}: not a served model's engine"
            )
    scheduler = Scheduler(
        {name: m for name, m in models.items() if name not in shared},
        max_seqs=settings.max_seqs,
        max_queue=settings.max_queue,
        max_context=settings.max_context,
        prefix_cache_mb=settings.prefix_cache_mb,
        prefill_chunk=settings.prefill_chunk,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            scheduler.close()
            if rag is not None:
                rag.close()

    app = FastAPI(
        title="twofiles",
        description="An OpenAI-compatible API for twofiles models",
        lifespan=lifespan,
    )
    app.state.models = dict(models)
    app.state.shared = shared
    app.state.scheduler = scheduler
    app.state.settings = settings
    app.state.chat_formats = {}
    app.state.rag = rag
    app.state.guards = ServeGuards(guard or GuardConfig())
    app.state.score_lock = threading.Lock()  # core.score_prompt: one at a time
    app.state.started = int(time.time())
    app.add_middleware(_BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:  # closed unless configured: no Access-Control-Allow-* by default
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(_SecurityHeaders)
    require_api_key = _auth(settings)
    app.state.require_api_key = (
        require_api_key  # a dependency for extra routes that want the same keys
    )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        message, param = pydantic_message(list(e.errors()))
        return JSONResponse(ApiError(400, message, param=param).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if e.status_code < 500 else "server_error"
        return JSONResponse(
            ApiError(e.status_code, str(e.detail), type=kind).body(),
            status_code=e.status_code,
            headers=getattr(e, "headers", None),
        )

    @app.exception_handler(TwofilesError)
    async def _twofiles(request: Request, e: TwofilesError) -> JSONResponse:
        return JSONResponse(ApiError(400, str(e)).body(), status_code=400)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": scheduler.stats()}

    install_metrics(app)  # GET /metrics and the middleware counting every request (outermost)

    add_openai_routes(app, require_api_key)
    attach_web(app)
    attach_inside(app, saes)
    return app


__all__ = [
    "RagService",
    "ServeSettings",
    "chat_format",
    "create_app",
    "generate_reply",
    "model_name",
]
