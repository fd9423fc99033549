"""The browser side of serving: the chat, arena and leaderboard pages and the JSON routes behind them.

What it owns: `attach(app)`, which the server's `create_app` calls to add
  GET  /  /arena  /leaderboard     the pages (plain HTML/CSS/JS in serve/static/, no build step)
  GET  /static/...                 their scripts and style
  POST /feedback                   a thumbs up/down or a corrected answer on a reply -> FeedbackStore
  POST /arena/battle               two models drawn at random answer one prompt, names hidden
  POST /arena/vote                 a vote on a pending battle -> ArenaStore; names revealed
  GET  /arena/leaderboard          ratings with intervals from every stored vote
  GET  /tools, POST /tools/run     the tools the chat page may run for the model (the calculator;
                                   with serve --rag also retrieve, over the server's index)
  GET  /rag                        whether the server has a document index, and what it holds
  GET  /rag/passages/{id}          one indexed passage (text, source, location): a citation's target
The chat page talks to the server's own OpenAI-compatible `/v1/chat/completions` (streaming, with
logprobs) and `/v1/models`; nothing here duplicates them.

What it leaves to others: the OpenAI endpoints, limits, API keys and scheduling (serve/app.py),
storage of feedback (twofiles.feedback) and of battles and ratings (twofiles.arena), chat
rendering (twofiles.chat), generation (the server's scheduler, via serve.core.generate_reply).

Where the databases live, first found wins: `attach(app, feedback_db=..., arena_db=...)`, the
settings' `feedback_db` / `arena_db` attributes, else twofiles.paths.default_db ($TWOFILES_FEEDBACK_DB /
$TWOFILES_ARENA_DB, else feedback.sqlite / arena.sqlite in the twofiles cache directory), which the
`arena` and `feedback` verbs also read when given no --db. They are opened on first use, so
a server that never gets a vote never creates a file.
"""

from __future__ import annotations

import math
import os
import secrets
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from twofiles.errors import TwofilesError
from twofiles.paths import DbKind, default_db

if TYPE_CHECKING:
    from twofiles.artifact import LoadedModel

STATIC_DIR = Path(__file__).with_name("static")
PAGES = {"/": "chat.html", "/arena": "arena.html", "/leaderboard": "leaderboard.html"}

# Limits (named here, checked by the request models below).
ARENA_MAX_PROMPT_CHARS = 8_000  # a battle prompt longer than this is not a chat turn
ARENA_MAX_TOKENS = (
    512  # most new tokens per side; both sides run before the reply, so keep it short
)
ARENA_DEFAULT_TOKENS = 128
ARENA_PENDING = 1_000  # battles awaiting a vote held in memory; the oldest are dropped past this
LEADERBOARD_BOOTSTRAP = 200  # bootstrap resamples behind the intervals
MAX_CONVERSATION_MESSAGES = 200  # messages in one feedback record
MAX_FEEDBACK_TEXT = 100_000  # characters of any one text field in a feedback record
# Tools a browser may ask this server to run: the calculator (pure arithmetic, bounded cost) and,
# with serve --rag, retrieve (read-only searches of the index the operator chose). The Python
# sandbox runs code on the server, which a page open to a network must not offer.


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class FeedbackRequest(_Strict):
    model: str = Field(min_length=1, max_length=500)
    messages: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_CONVERSATION_MESSAGES)
    reply: dict[str, Any] | str
    rating: Literal["up", "down"] | None = None
    correction: str | None = Field(default=None, max_length=MAX_FEEDBACK_TEXT)
    meta: dict[str, Any] | None = None


class BattleRequest(_Strict):
    prompt: str = Field(min_length=1, max_length=ARENA_MAX_PROMPT_CHARS)
    system: str = Field(default="", max_length=ARENA_MAX_PROMPT_CHARS)
    max_tokens: int = Field(default=ARENA_DEFAULT_TOKENS, ge=1, le=ARENA_MAX_TOKENS)
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)  # torch generators take 64-bit seeds


class ToolRunRequest(_Strict):
    name: str = Field(min_length=1, max_length=100)
    arguments: dict[str, Any]


class VoteRequest(_Strict):
    battle_id: str = Field(min_length=1, max_length=100)
    winner: Literal["a", "b", "tie", "both_bad"]


@dataclass
class _Battle:
    prompt: str
    system: str
    model_a: str
    model_b: str
    reply_a: str
    reply_b: str
    settings: dict[str, Any]


@dataclass
class WebState:
    """What the routes share; lives at `app.state.web`. Paths may be changed until first use."""

    feedback_db: Path
    arena_db: Path
    pending: OrderedDict[str, _Battle] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _feedback: Any = None
    _arena: Any = None
    _tools: Any = None
    rag: Any = None  # serve.core.RagService (serve --rag), or None

    def tools(self) -> dict[str, Any]:
        with self.lock:
            if self._tools is None:
                from twofiles.tools.calculator import Calculator

                self._tools = {"calculator": Calculator()}
                if self.rag is not None:
                    from twofiles.rag.grounding import retrieve_tool

                    self._tools["retrieve"] = retrieve_tool(self.rag, k=self.rag.k)
            return self._tools

    def feedback(self) -> Any:
        with self.lock:
            if self._feedback is None:
                from twofiles.feedback import FeedbackStore

                self._feedback = FeedbackStore(self.feedback_db)
            return self._feedback

    def arena(self) -> Any:
        with self.lock:
            if self._arena is None:
                from twofiles.arena import ArenaStore

                Path(self.arena_db).parent.mkdir(parents=True, exist_ok=True)
                self._arena = ArenaStore(self.arena_db)
            return self._arena


def _db_path(settings: Any, name: DbKind, explicit: str | os.PathLike[str] | None) -> Path:
    if explicit is not None:
        return Path(explicit)
    from_settings = getattr(settings, f"{name}_db", None)
    if from_settings:
        return Path(from_settings)
    return default_db(name)


def _error(status: int, message: str) -> JSONResponse:
    # the OpenAI error shape, so one client-side handler reads errors from every route
    return JSONResponse(
        {"error": {"message": message, "type": "invalid_request_error", "code": status}},
        status_code=status,
    )


def _models(request: Request) -> dict[str, LoadedModel]:
    return getattr(request.app.state, "models", None) or {}


def _row(row: Any) -> dict[str, Any]:
    """A leaderboard row as JSON: non-finite numbers (an interval no bootstrap could bound) as null,
    since JSON has no inf/NaN."""
    d = asdict(row) if is_dataclass(row) and not isinstance(row, type) else dict(vars(row))
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _router(state: WebState, api: list[Any]) -> APIRouter:
    """The pages (open: a page must load to ask for a key) and the JSON routes (behind `api`,
    the server's API-key dependency when it has one)."""
    router = APIRouter()

    def page_route(page: str):
        # A closure, not a default argument: FastAPI would expose a parameter as a query field
        # (?page=../../etc/passwd).
        def serve_page() -> FileResponse:
            # no-cache: a page edited on disk shows on the next reload, no stale script/page pairs
            return FileResponse(
                STATIC_DIR / page, media_type="text/html", headers={"Cache-Control": "no-cache"}
            )

        return serve_page

    for route, page in PAGES.items():
        router.add_api_route(route, page_route(page), methods=["GET"], include_in_schema=False)

    @router.post("/feedback", dependencies=api)
    def post_feedback(body: FeedbackRequest) -> JSONResponse:
        try:
            row = state.feedback().record(
                model=body.model,
                messages=body.messages,
                reply=body.reply,
                rating=body.rating,
                correction=body.correction,
                meta=body.meta,
            )
        except TwofilesError as e:
            return _error(400, str(e))
        return JSONResponse({"id": row, "stored": True})

    @router.post("/arena/battle", dependencies=api)
    async def post_battle(body: BattleRequest, request: Request) -> JSONResponse:
        import asyncio
        import random

        from twofiles.engine import SamplingParams
        from twofiles.serve.core import generate_reply

        models = _models(request)
        if len(models) < 2:
            return _error(
                400,
                f"the arena needs at least two models; this server has {len(models)} (start it with two or more: twofiles serve A B)",
            )
        name_a, name_b = random.SystemRandom().sample(
            sorted(models), 2
        )  # random pair, random sides
        messages = ([{"role": "system", "content": body.system}] if body.system else []) + [
            {"role": "user", "content": body.prompt}
        ]
        settings: dict[str, Any] = {
            "max_tokens": body.max_tokens,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "seed": body.seed,
        }
        params = SamplingParams(**settings)
        # both sides through the server's scheduler, at once: they share its batches, limits and timeout
        (msg_a, _), (msg_b, _) = await asyncio.gather(
            *(generate_reply(request.app, n, messages, params) for n in (name_a, name_b))
        )
        reply_a, reply_b = msg_a.content.strip(), msg_b.content.strip()
        battle_id = secrets.token_urlsafe(12)
        with state.lock:
            state.pending[battle_id] = _Battle(
                body.prompt, body.system, name_a, name_b, reply_a, reply_b, settings
            )
            while len(state.pending) > ARENA_PENDING:
                state.pending.popitem(last=False)
        return JSONResponse(
            {"battle_id": battle_id, "a": {"content": reply_a}, "b": {"content": reply_b}}
        )

    @router.post("/arena/vote", dependencies=api)
    def post_vote(body: VoteRequest) -> JSONResponse:
        with state.lock:
            battle = state.pending.pop(body.battle_id, None)
        if battle is None:
            return _error(
                404,
                f"battle_id {body.battle_id!r}: no such battle awaiting a vote (already voted, or expired)",
            )
        meta = {**battle.settings, "system": battle.system, "source": "web"}
        try:
            vote_id = state.arena().record_battle(
                prompt=battle.prompt, model_a=battle.model_a, model_b=battle.model_b,
                reply_a=battle.reply_a, reply_b=battle.reply_b, winner=body.winner, judge="human", meta=meta,
                key=body.battle_id,  # a retried vote is stored once
            )  # fmt: skip
        except BaseException:
            with state.lock:  # not stored: the vote may be tried again
                state.pending[body.battle_id] = battle
            raise
        return JSONResponse(
            {
                "id": vote_id,
                "winner": body.winner,
                "model_a": battle.model_a,
                "model_b": battle.model_b,
            }
        )

    @router.get("/arena/leaderboard", dependencies=api)
    def get_leaderboard() -> JSONResponse:
        from twofiles.arena.ratings import leaderboard

        battles = state.arena().battles()
        rows = leaderboard(battles, bootstrap=LEADERBOARD_BOOTSTRAP, seed=0) if battles else []
        return JSONResponse(
            {
                "battles": len(battles),
                "bootstrap": LEADERBOARD_BOOTSTRAP,
                "rows": [_row(r) for r in rows],
            }
        )

    @router.get("/tools", dependencies=api)
    def get_tools() -> JSONResponse:
        from twofiles.tools import openai_tool_specs

        return JSONResponse({"tools": openai_tool_specs(state.tools())})

    @router.post("/tools/run", dependencies=api)
    def post_tool_run(body: ToolRunRequest) -> JSONResponse:
        from twofiles.tools import run_tool

        tools = state.tools()
        if body.name not in tools:
            return _error(
                404,
                f"name: no tool {body.name!r} here; this server runs {', '.join(sorted(tools)) or 'none'} for the web page",
            )
        result = run_tool(
            tools, body.name, body.arguments
        )  # bad arguments come back as error results
        return JSONResponse({"name": body.name, "content": result.content, "error": result.error})

    @router.get("/rag", dependencies=api)
    def get_rag() -> JSONResponse:
        if state.rag is None:
            return JSONResponse({"enabled": False})
        # read whole at start-up: its info is counts and strings, JSON as it is
        return JSONResponse({"enabled": True, "k": state.rag.k, "info": state.rag.info()})

    @router.get("/rag/passages/{chunk_id}", dependencies=api)
    def get_passage(chunk_id: int) -> JSONResponse:
        from twofiles.rag.grounding import passage_json

        if state.rag is None:
            return _error(404, "this server has no document index (start it with --rag DB)")
        try:
            p = state.rag.passage(chunk_id)
        except KeyError:
            return _error(404, f"chunk_id: no passage {chunk_id} in the index")
        return JSONResponse(passage_json(p))

    return router


def attach(
    app: FastAPI,
    *,
    feedback_db: str | os.PathLike[str] | None = None,
    arena_db: str | os.PathLike[str] | None = None,
) -> WebState:
    """Add the pages and the feedback/arena routes to `app` (expects `app.state.models`:
    name -> LoadedModel, and optionally `app.state.settings`). Returns the shared state, also at
    `app.state.web`."""
    settings = getattr(app.state, "settings", None)
    state = WebState(
        _db_path(settings, "feedback", feedback_db), _db_path(settings, "arena", arena_db)
    )
    state.rag = getattr(app.state, "rag", None)
    app.state.web = state
    key_check = getattr(app.state, "require_api_key", None)
    app.include_router(_router(state, [Depends(key_check)] if key_check else []))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return state


__all__ = [
    "BattleRequest",
    "FeedbackRequest",
    "ToolRunRequest",
    "VoteRequest",
    "WebState",
    "attach",
]
