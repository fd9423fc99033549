"""The web pages in a real headless browser (Debian's chromium driven by Playwright) against a live
server on 127.0.0.1 running two tiny random models through the real engine.

What is checked: a message streams a reply into the page, equal to the server's own non-streamed
answer with the same seed; clicking a token shows the die it was drawn from (its probability
and the top alternatives, equal to the API's logprobs); an arena vote reveals the names and moves
the leaderboard; a thumbs-up and a correction land in the feedback database and export to the
expected SFT and preference files. A screenshot of each page is saved under the test's tmp dir.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright import sync_api

from live_server import UvicornThread

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]
SCREENSHOTS = os.environ.get("TWOFILES_WEB_SCREENSHOTS")  # also copy the screenshots here (docs)
TIMEOUT_MS = 60_000  # generous: the suite shares two cores with everything else


def _tiny_models() -> dict[str, Any]:
    """Two different random models sharing a tokenizer (the built-in chat template)."""
    from tiny_models import loaded, random_model, tiny_tokenizer

    tok = tiny_tokenizer()
    return {
        name: loaded(random_model(tok, seed=i, max_seq_len=512), tok)
        for i, name in enumerate(("tiny-alpha", "tiny-beta"))
    }


def _build_app(models: dict[str, Any], *, rag: Any = None, **settings: Any) -> Any:
    from twofiles.serve.app import ServeSettings, create_app

    app = create_app(models, ServeSettings(**settings), rag=rag)
    assert hasattr(app.state, "web"), "create_app did not attach the web pages"
    return app


_Server = UvicornThread


def _post(url: str, body: dict[str, Any], key: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {
        "Content-Type": "application/json",
        **({"Authorization": f"Bearer {key}"} if key else {}),
    }
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("web")
    app = _build_app(_tiny_models())
    app.state.web.feedback_db = root / "feedback.sqlite"
    app.state.web.arena_db = root / "arena.sqlite"
    with _Server(app) as server:
        server.root = root
        server.state = app.state.web
        yield server


def launch_browser() -> Iterator[Any]:
    """Debian's chromium, headless, for a module's `browser` fixture (skips when it is missing)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"{CHROMIUM} is missing (install Debian's chromium: apt-get install -y chromium; `make test` does it when it can)"
        )
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def browser():
    yield from launch_browser()


@pytest.fixture
def page(browser, live):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _screenshot(pg: Any, path: Path) -> None:
    pg.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 5_000  # a real rendering, not a blank 1x1
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SCREENSHOTS) / path.name)


def _chat(
    pg: Any, live: _Server, text: str, *, temperature: str, seed: str, max_tokens: str = "12"
) -> Any:
    pg.goto(live.url + "/")
    pg.wait_for_function("() => document.querySelectorAll('#model option').length === 2")
    pg.select_option("#model", "tiny-alpha")
    pg.fill("#temperature", temperature)
    pg.fill("#seed", seed)
    pg.fill("#max_tokens", max_tokens)
    pg.fill("#input", text)
    pg.click("#send")
    reply = pg.locator(".msg.assistant").last
    reply.locator(".actions").wait_for()  # appears once the stream has ended
    return reply


def _reply_text(reply: Any) -> str:
    """The reply's text as the page shows it, without the marker of the end-of-turn token."""
    return reply.evaluate(
        "n => [...n.querySelectorAll('.text .tok:not(.end), .text .piece')].map(s => s.textContent).join('')"
    )


# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_chat_streams_reply_equal_to_api(page, live, tmp_path):
    with page.expect_response("**/v1/chat/completions") as response:
        reply = _chat(page, live, "Hello there", temperature="0.9", seed="7")
    assert response.value.headers["content-type"].startswith(
        "text/event-stream"
    )  # read as a stream
    shown = _reply_text(reply)
    status, body = _post(
        live.url + "/v1/chat/completions",
        {
            "model": "tiny-alpha",
            "messages": [{"role": "user", "content": "Hello there"}],
            "temperature": 0.9,
            "top_p": 1,
            "max_tokens": 12,
            "seed": 7,
            "logprobs": True,
        },
    )
    assert status == 200, body
    expected = body["choices"][0]["message"]["content"]
    assert expected, "the tiny model produced an empty reply; pick another seed"
    assert shown == expected
    # every generated token reached the page with its probability, whatever the server's chunking
    tokens = reply.evaluate(
        "n => [...n.querySelectorAll('.tok')].flatMap(s => s._tokens.map(t => t.token))"
    )
    assert tokens == [t["token"] for t in body["choices"][0]["logprobs"]["content"]]
    _screenshot(page, tmp_path / "web-chat.png")


@pytest.mark.slow
def test_token_view_shows_alternatives(page, live, tmp_path):
    reply = _chat(page, live, "The cat", temperature="0", seed="1", max_tokens="6")
    first = reply.locator(".tok").first
    n = first.evaluate(
        "el => el._tokens.length"
    )  # a piece of text may come from several tokens (a split character)
    first.click()
    info = page.locator("#tokinfo")
    info.wait_for(state="visible")
    rows = info.locator("tr.alt")
    assert n >= 1 and rows.count() == 5 * n  # top_logprobs=5 for each token of the piece
    probs = [float(t.rstrip("%")) for t in info.locator("td.p").all_inner_texts()]
    for k in range(n):
        die = probs[5 * k : 5 * k + 5]
        assert die == sorted(die, reverse=True) and 0 < sum(die) <= 100.05
    # greedy: the chosen token is the most likely one, and the page says so
    assert "chosen" in (rows.first.get_attribute("class") or "")
    # the page shows the API's numbers: compare with the non-streamed logprobs of the same request
    status, body = _post(
        live.url + "/v1/chat/completions",
        {
            "model": "tiny-alpha",
            "messages": [{"role": "user", "content": "The cat"}],
            "temperature": 0,
            "max_tokens": 6,
            "logprobs": True,
            "top_logprobs": 5,
        },
    )
    assert status == 200, body
    api = [
        round(100 * math.exp(t["logprob"]), 1)
        for tok in body["choices"][0]["logprobs"]["content"][:n]
        for t in tok["top_logprobs"]
    ]
    assert probs == pytest.approx(api, abs=0.051)
    _screenshot(page, tmp_path / "web-token-probabilities.png")


@pytest.mark.slow
def test_arena_vote_moves_leaderboard(page, live, tmp_path):
    page.goto(live.url + "/leaderboard")
    page.wait_for_function(
        "() => !document.getElementById('summary').textContent.startsWith('loading')"
    )
    before = page.locator("tr.row").count()

    page.goto(live.url + "/arena")
    assert not page.locator("#votes").is_visible()  # nothing to vote on before a battle
    page.fill("#max_tokens", "8")
    page.fill("#prompt", "Name a colour.")
    page.click("#battle")
    page.locator("#votes").wait_for(state="visible")
    assert page.locator("#name-a").inner_text() == "Model A"  # anonymous until the vote
    page.click("button[data-winner='a']")
    page.locator("#reveal").wait_for(state="visible")
    names = {
        page.locator("#name-a").inner_text().split(": ")[1],
        page.locator("#name-b").inner_text().split(": ")[1],
    }
    assert names == {"tiny-alpha", "tiny-beta"}
    winner = page.locator("#name-a").inner_text().split(": ")[1]
    _screenshot(page, tmp_path / "web-arena.png")

    page.goto(live.url + "/leaderboard")
    page.locator("tr.row").first.wait_for()
    rows = page.locator("tr.row")
    assert rows.count() == 2 and before in (0, 2)
    games = {
        rows.nth(i).get_attribute("data-model"): int(rows.nth(i).locator("td.games").inner_text())
        for i in range(2)
    }
    assert sum(games.values()) >= 2 and games["tiny-alpha"] == games["tiny-beta"]
    if before == 0:  # the first vote decides the order
        assert rows.first.get_attribute("data-model") == winner
    _screenshot(page, tmp_path / "web-leaderboard.png")


@pytest.mark.slow
def test_thumbs_and_correction_reach_feedback_and_export(page, live, tmp_path):
    from twofiles.feedback import FeedbackStore, export_feedback

    store = FeedbackStore(live.state.feedback_db)
    n0 = store.count()
    reply = _chat(page, live, "What is 12 + 7?", temperature="0.8", seed="3", max_tokens="8")
    original = _reply_text(reply)
    reply.locator("button.thumb-up").click()
    page.wait_for_function(
        "() => document.querySelector('.msg.assistant .saved') && document.querySelector('.msg.assistant .saved').textContent.startsWith('saved')"
    )
    reply.locator("button.correct").click()
    reply.locator("textarea.correction").fill("12 + 7 = 19.")
    reply.locator("button.save-correction").click()
    reply.locator(".badge").wait_for()
    assert reply.locator(".text").inner_text() == "12 + 7 = 19."
    _screenshot(page, tmp_path / "web-feedback.png")

    rows = store.rows()[n0:]
    assert [(r.rating, r.correction) for r in rows] == [(1, None), (None, "12 + 7 = 19.")]
    assert rows[0].model == "tiny-alpha" and rows[0].reply["content"] == original
    assert rows[0].messages == [{"role": "user", "content": "What is 12 + 7?"}]

    summary = export_feedback(live.state.feedback_db, tmp_path / "out")
    sft = [json.loads(line) for line in (tmp_path / "out" / "sft.jsonl").read_text().splitlines()]
    prefs = [
        json.loads(line)
        for line in (tmp_path / "out" / "preferences.jsonl").read_text().splitlines()
    ]
    convo = [{"role": "user", "content": "What is 12 + 7?"}]
    assert {"messages": convo + [{"role": "assistant", "content": "12 + 7 = 19."}]} in sft
    # the corrected reply's thumbs-up does not make it training data; the correction beats it
    assert {"messages": convo + [{"role": "assistant", "content": original}]} not in sft
    assert {
        "messages": convo,
        "chosen": [{"role": "assistant", "content": "12 + 7 = 19."}],
        "rejected": [{"role": "assistant", "content": original}],
    } in prefs
    assert summary.sft == len(sft) and summary.preferences == len(prefs)


def _sse(chunks: list[dict[str, Any]]) -> str:
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


@pytest.mark.slow
def test_tool_calls_run_and_feed_back(page, live, tmp_path):
    """The page's agent loop: a streamed tool call (OpenAI chunk format, canned here because a
    tiny random model never calls a tool) is shown, run by the server's calculator, and its
    result goes back to the model, whose next turn is shown."""
    sent: list[dict[str, Any]] = []

    def canned(route: Any) -> None:
        sent.append(json.loads(route.request.post_data))
        if len(sent) == 1:
            call = {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": "calculator", "arguments": ""},
            }
            chunks = [
                {
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "tool_calls": [call]},
                            "finish_reason": None,
                        }
                    ]
                },
                {
                    "choices": [
                        {
                            "index": 0,
                            "delta": {
                                "tool_calls": [
                                    {
                                        "index": 0,
                                        "function": {"arguments": '{"expression": "12*7"}'},
                                    }
                                ]
                            },
                            "finish_reason": None,
                        }
                    ]
                },
                {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
            ]
        else:
            chunks = [
                {
                    "choices": [
                        {"index": 0, "delta": {"content": "12*7 is 84."}, "finish_reason": "stop"}
                    ]
                }
            ]
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=_sse(chunks))

    page.goto(live.url + "/")
    page.wait_for_function("() => document.querySelectorAll('#model option').length === 2")
    page.route("**/v1/chat/completions", canned)
    page.check("#offer_tools")
    page.fill("#input", "What is 12*7?")
    page.click("#send")
    page.locator(".msg.assistant").nth(1).locator(".actions").wait_for()
    assert (
        page.locator(".toolcall").inner_text() == 'tool call → calculator({"expression": "12*7"})'
    )
    assert page.locator(".toolresult").inner_text() == "result ← 84"
    assert page.locator(".msg.assistant").nth(1).locator(".text").inner_text() == "12*7 is 84."
    assert [t["function"]["name"] for t in sent[0]["tools"]] == ["calculator"]
    assert sent[1]["messages"][-2:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "calculator", "arguments": '{"expression": "12*7"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "name": "calculator", "content": "84"},
    ]
    _screenshot(page, tmp_path / "web-tools.png")


@pytest.mark.slow
def test_server_errors_are_shown_and_not_kept(page, live):
    page.goto(live.url + "/")
    page.wait_for_function("() => document.querySelectorAll('#model option').length === 2")
    page.fill("#max_tokens", "-3")
    page.fill("#input", "Hello")
    page.click("#send")
    page.wait_for_function("() => document.getElementById('error').textContent.length > 0")
    assert "max_tokens" in page.locator("#error").inner_text()  # the server's own message
    assert (
        page.locator(".msg.assistant .actions").count() == 0
    )  # no thumbs on a reply that never came
    page.fill("#max_tokens", "4")
    page.fill("#input", "Hello again")
    sent: list[dict[str, Any]] = []
    page.on(
        "request",
        lambda r: (
            sent.append(json.loads(r.post_data)) if r.url.endswith("/v1/chat/completions") else None
        ),
    )
    page.click("#send")
    page.locator(".msg.assistant .actions").wait_for()
    assert page.locator("#error").inner_text() == ""
    # the failed turn left no empty assistant message behind
    assert [m["role"] for m in sent[-1]["messages"]] == ["user", "user"]


@pytest.mark.slow
def test_each_token_gets_its_span_however_the_server_chunks(page, live):
    """Canned chunks: three tokens in one chunk, a character split over two tokens, and an end
    token with no text. Each whole token gets its own span and die; the split character is one
    span with both of its tokens; the end token is the [end] span."""

    def lp(token: str, p: float) -> dict[str, Any]:
        return {
            "token": token,
            "logprob": math.log(p),
            "bytes": None,
            "top_logprobs": [{"token": token, "logprob": math.log(p), "bytes": None}],
        }

    chunks = [
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": "Hi there,"},
                    "logprobs": {"content": [lp("Hi", 0.5), lp(" there", 0.25), lp(",", 0.125)]},
                    "finish_reason": None,
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": ""},
                    "logprobs": {"content": [lp("\ufffd", 0.9)]},
                    "finish_reason": None,
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": " \u00e9t\u00e9"},
                    "logprobs": {"content": [lp("\ufffd", 0.8), lp("t", 0.7), lp("\u00e9", 0.6)]},
                    "finish_reason": None,
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": ""},
                    "logprobs": {"content": [lp("<|assistant_end|>", 0.95)]},
                    "finish_reason": "stop",
                }
            ]
        },
    ]
    page.goto(live.url + "/")
    page.wait_for_function("() => document.querySelectorAll('#model option').length === 2")
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(
            status=200, headers={"Content-Type": "text/event-stream"}, body=_sse(chunks)
        ),
    )
    page.fill("#input", "hello")
    page.click("#send")
    reply = page.locator(".msg.assistant").last
    reply.locator(".actions").wait_for()
    spans = reply.evaluate(
        "n => [...n.querySelectorAll('.text .tok')].map(s => [s.textContent, s._tokens.map(t => t.token)])"
    )
    assert spans == [
        ["Hi", ["Hi"]], [" there", [" there"]], [",", [","]],
        [" \u00e9t\u00e9", ["\ufffd", "\ufffd", "t", "\u00e9"]],  # the split character takes the rest of its chunk
        ["[end]", ["<|assistant_end|>"]],
    ]  # fmt: skip
    assert _reply_text(reply) == "Hi there, \u00e9t\u00e9"


def test_tools_route_runs_only_the_calculator(live):
    from twofiles.tools.calculator import Calculator

    code, body = _post(
        live.url + "/tools/run",
        {"name": "calculator", "arguments": {"expression": "(17 * 23 + 4) / 3"}},
    )
    assert code == 200 and body == {
        "name": "calculator",
        "content": Calculator().run({"expression": "(17 * 23 + 4) / 3"}).content,
        "error": False,
    }
    assert body["content"].startswith("131.66")
    code, body = _post(
        live.url + "/tools/run",
        {"name": "calculator", "arguments": {"expression": "__import__('os')"}},
    )
    assert code == 200 and body["error"] is True
    code, body = _post(
        live.url + "/tools/run", {"name": "python", "arguments": {"code": "print(1)"}}
    )
    assert code == 404 and "calculator" in _message(body)
    with urllib.request.urlopen(live.url + "/tools", timeout=30) as r:
        assert [t["function"]["name"] for t in json.loads(r.read())["tools"]] == ["calculator"]


def _message(body: dict[str, Any]) -> str:
    """An error body's message, in OpenAI's shape or FastAPI's."""
    if "error" in body:
        return body["error"]["message"] if isinstance(body["error"], dict) else str(body["error"])
    return json.dumps(body.get("detail"))


@pytest.mark.parametrize(
    "route, body, status, words",
    [
        (
            "/feedback",
            {"model": "tiny-alpha", "messages": [{"role": "user", "content": "hi"}], "reply": "yo"},
            400,
            "rating, correction",
        ),
        (
            "/feedback",
            {
                "model": "tiny-alpha",
                "messages": [{"role": "user", "content": "hi"}],
                "reply": "yo",
                "rating": "great",
            },
            None,
            "rating",
        ),
        (
            "/feedback",
            {
                "model": "tiny-alpha",
                "messages": [{"role": "alien", "content": "hi"}],
                "reply": "yo",
                "rating": "up",
            },
            400,
            "messages[0].role",
        ),
        ("/feedback", {"model": "tiny-alpha", "reply": "yo", "rating": "up"}, None, "messages"),
        (
            "/feedback",
            {
                "model": "tiny-alpha",
                "messages": [{"role": "user", "content": "hi"}],
                "reply": "yo",
                "rating": "up",
                "ratng": 1,
            },
            None,
            "ratng",
        ),
        ("/arena/battle", {"prompt": ""}, None, "prompt"),
        ("/arena/battle", {"prompt": "x" * 10_000}, None, "prompt"),
        ("/arena/battle", {"prompt": "hi", "max_tokens": 0}, None, "max_tokens"),
        ("/arena/vote", {"battle_id": "nope", "winner": "a"}, 404, "no such battle"),
        ("/arena/vote", {"battle_id": "nope", "winner": "c"}, None, "winner"),
    ],
)
def test_routes_reject_bad_requests_with_a_message(live, route, body, status, words):
    code, reply = _post(live.url + route, body)
    assert (code == status) if status else code in (400, 422), (code, reply)
    assert words in _message(reply)


@pytest.mark.slow
def test_arena_vote_counts_once(live):
    code, battle = _post(live.url + "/arena/battle", {"prompt": "Hi", "max_tokens": 4, "seed": 1})
    assert code == 200 and set(battle) == {"battle_id", "a", "b"}  # no names before the vote
    code, vote = _post(
        live.url + "/arena/vote", {"battle_id": battle["battle_id"], "winner": "tie"}
    )
    assert code == 200 and {vote["model_a"], vote["model_b"]} == {"tiny-alpha", "tiny-beta"}
    code, _again = _post(
        live.url + "/arena/vote", {"battle_id": battle["battle_id"], "winner": "a"}
    )
    assert code == 404
    stored = [
        b
        for b in live.state.arena().battles()
        if getattr(b, "winner", None) == "tie" and getattr(b, "prompt", None) == "Hi"
    ]
    assert len(stored) == 1


def test_api_key_guards_the_routes_not_the_pages(tmp_path):
    app = _build_app({"solo": _tiny_models()["tiny-alpha"]}, api_keys=frozenset({"sesame"}))
    app.state.web.feedback_db, app.state.web.arena_db = tmp_path / "f.sqlite", tmp_path / "a.sqlite"
    with _Server(app) as server:
        code, body = _post(server.url + "/arena/battle", {"prompt": "hi"})
        assert code == 401
        code, body = _post(server.url + "/arena/battle", {"prompt": "hi"}, key="sesame")
        assert code == 400 and "at least two models" in _message(body)
        code, body = _post(
            server.url + "/feedback",
            {
                "model": "solo",
                "messages": [{"role": "user", "content": "hi"}],
                "reply": "yo",
                "rating": "up",
            },
        )
        assert code == 401
        with urllib.request.urlopen(server.url + "/", timeout=30) as r:
            assert r.status == 200 and b"/static/chat.js" in r.read()
        for probe in (
            "/?page=../../../../etc/passwd",
            "/arena?page=../web.py",
            "/static/../web.py",
            "/static/%2e%2e/web.py",
        ):
            try:
                with urllib.request.urlopen(server.url + probe, timeout=30) as r:
                    body = r.read()
            except urllib.error.HTTPError as e:
                assert e.code == 404, probe
            else:
                assert b"root:" not in body and b"def attach" not in body, probe
    assert (
        not (tmp_path / "f.sqlite").exists() and not (tmp_path / "a.sqlite").exists()
    )  # opened on first use only


@pytest.mark.slow
def test_default_databases_are_shared_by_the_web_ui_and_the_verbs(tmp_path, monkeypatch, capsys):
    """Votes and thumbs through the web routes with no database named anywhere; then
    `twofiles arena leaderboard` and `twofiles feedback export` with no --db read them."""
    from twofiles.cli import main
    from twofiles.paths import default_db

    for var in ("TWOFILES_CACHE", "TWOFILES_ARENA_DB", "TWOFILES_FEEDBACK_DB"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_db("arena") == tmp_path / ".cache" / "twofiles" / "arena.sqlite"
    app = _build_app(_tiny_models())
    assert app.state.web.arena_db == default_db("arena")
    with _Server(app) as server:
        code, battle = _post(server.url + "/arena/battle", {"prompt": "Hi", "max_tokens": 3})
        assert code == 200, battle
        code, vote = _post(
            server.url + "/arena/vote", {"battle_id": battle["battle_id"], "winner": "a"}
        )
        assert code == 200, vote
        messages = [{"role": "user", "content": "2+2?"}]
        for reply, rating in (("4", "up"), ("5", "down")):
            body = {"model": "tiny-alpha", "messages": messages, "reply": reply, "rating": rating}
            assert _post(server.url + "/feedback", body)[0] == 200
    assert default_db("feedback").is_file()

    capsys.readouterr()
    assert main(["arena", "leaderboard", "--json", "--bootstrap", "10"]) == 0
    board = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert board["db"] == str(default_db("arena")) and board["votes"] == 1
    assert {r["model"] for r in board["leaderboard"]} == {"tiny-alpha", "tiny-beta"}

    out = tmp_path / "export"
    assert main(["feedback", "export", "--out", str(out), "--arena-db", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == 2 and summary["arena_preferences"] == 1
    pairs = [json.loads(line) for line in (out / "preferences.jsonl").read_text().splitlines()]
    assert any(
        p["chosen"][-1]["content"] == "4" and p["rejected"][-1]["content"] == "5" for p in pairs
    )

    # a named path or the environment still wins
    monkeypatch.setenv("TWOFILES_ARENA_DB", str(tmp_path / "elsewhere.sqlite"))
    assert default_db("arena") == tmp_path / "elsewhere.sqlite"
    assert main(["arena", "leaderboard"]) == 2
    assert "elsewhere.sqlite" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# serve --rag: grounded replies, their [n] citations as links to the passages


def _rag_server(tmp_path_factory: pytest.TempPathFactory, answer: str, name: str):
    """A server with a tiny document index (--rag, k=2) and a scripted model that answers
    `answer` after exactly the grounded prompt of the question (test_rag_grounding's)."""
    from test_rag_grounding import DOCS, QUESTION, TinyIndex
    from tiny_models import ScriptedModel, loaded, tiny_tokenizer
    from twofiles.chat import ChatFormat, Message
    from twofiles.rag.grounding import ground
    from twofiles.serve.core import RagService

    tok = tiny_tokenizer()
    question = QUESTION[0]["content"]
    passages = TinyIndex(DOCS).search(question, 2)
    prompt = ChatFormat.builtin_for(tok).prompt_ids(ground([Message("user", question)], passages))
    script = [*tok.encode(answer), tok.special_ids["<|assistant_end|>"]]
    model = ScriptedModel(tok, script, len(prompt), filler=tok.encode(" ")[0], max_seq_len=512)
    app = _build_app({"tiny-rag": loaded(model, tok)}, rag=RagService(TinyIndex(DOCS), k=2))
    root = tmp_path_factory.mktemp(name)
    app.state.web.feedback_db = root / "feedback.sqlite"
    app.state.web.arena_db = root / "arena.sqlite"
    with _Server(app) as server:
        server.question, server.answer = question, answer
        server.state = app.state.web
        yield server


@pytest.fixture(scope="module")
def rag_live(tmp_path_factory: pytest.TempPathFactory):
    """The model answers with citations."""
    yield from _rag_server(tmp_path_factory, "The Nile [1], not Paris [2].", "web-rag")


@pytest.mark.slow
def test_grounded_reply_links_citations_to_their_passages(page, rag_live, tmp_path):
    page.goto(rag_live.url + "/")
    page.locator("#rag_box").wait_for(state="visible")  # the server has an index
    assert page.locator("#rag_info").inner_text() == "3 files, 3 passages, 2 per reply"
    assert page.locator("#tool_names").inner_text() == "calculator, retrieve"
    page.wait_for_function("() => document.querySelectorAll('#model option').length === 1")
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "40")
    page.fill("#input", rag_live.question)
    with page.expect_request("**/v1/chat/completions") as sent:
        page.click("#send")
    assert json.loads(sent.value.post_data)["rag"] is True
    reply = page.locator(".msg.assistant").last
    reply.locator(".actions").wait_for()
    assert _reply_text(reply) == rag_live.answer  # every token kept its span
    # each marker is a link, in as many pieces as tokens spell it, to the passage it names
    pieces = reply.evaluate(
        "n => [...n.querySelectorAll('.text a.cite')].map(a => [a.dataset.n, a.textContent])"
    )
    by_n: dict[str, str] = {}
    for n, text in pieces:
        by_n[n] = by_n.get(n, "") + text
    assert by_n == {"1": "[1]", "2": "[2]"}
    assert reply.locator(".text a.cite").first.evaluate("a => !!a.closest('.tok')")
    assert reply.locator(".sources li").all_inner_texts() == [
        "[1] geo/rivers.md, lines 1-2",
        "[2] geo/cities.md, lines 1-1",
    ]
    # clicking [1] fetches passage 0 by id and shows it, not the token's die
    with page.expect_response("**/rag/passages/0") as fetched:
        reply.locator(".text a.cite[data-n='1']").first.click()
    assert fetched.value.status == 200
    box = page.locator("#passage")
    box.wait_for(state="visible")
    page.wait_for_function("() => document.querySelector('#passage .passage-text') !== null")
    assert box.locator(".head").inner_text() == "[1] geo/rivers.md · lines 1-2"
    assert box.locator(".passage-text").inner_text() == "The Nile is the longest river in Africa."
    assert page.locator("#tokinfo").is_hidden()
    _screenshot(page, tmp_path / "web-rag-citation.png")
    # a thumbs-up on a grounded reply records which passages were in its prompt
    with page.expect_request("**/feedback") as fb:
        reply.locator("button.thumb-up").click()
    assert json.loads(fb.value.post_data)["meta"]["rag_passages"] == [0, 1]
    page.wait_for_function(
        "() => document.querySelector('.msg.assistant .saved').textContent.startsWith('saved')"
    )
    from twofiles.feedback import FeedbackStore

    (row,) = FeedbackStore(rag_live.state.feedback_db).rows()
    assert row.meta["rag_passages"] == [0, 1] and row.rating == 1
    # Escape closes it; the sources list opens the same way; a click elsewhere closes it
    page.keyboard.press("Escape")
    box.wait_for(state="hidden")
    reply.locator(".sources a.cite[data-n='2']").click()
    page.wait_for_function(
        "() => document.querySelector('#passage .passage-text') && document.querySelector('#passage .passage-text').textContent.startsWith('Paris')"
    )
    page.locator("#conversation").click(position={"x": 5, "y": 5})
    box.wait_for(state="hidden")
    # unticked, the page asks for no grounding
    page.uncheck("#use_rag")
    page.fill("#max_tokens", "2")
    page.fill("#input", "Hello")
    with page.expect_request("**/v1/chat/completions") as sent:
        page.click("#send")
    assert "rag" not in json.loads(sent.value.post_data)
    page.locator(".msg.assistant").nth(1).locator(".actions").wait_for()
    assert page.locator(".msg.assistant").nth(1).locator(".sources").count() == 0


@pytest.fixture(scope="module")
def rag_plain_live(tmp_path_factory: pytest.TempPathFactory):
    """As rag_live, but the model answers without any [n]: the server attributes the citation."""
    from test_rag_grounding import PLAIN

    yield from _rag_server(tmp_path_factory, PLAIN, "web-rag-plain")


@pytest.mark.slow
def test_an_attributed_citation_is_marked_as_such(page, rag_plain_live):
    page.goto(rag_plain_live.url + "/")
    page.locator("#rag_box").wait_for(state="visible")
    page.wait_for_function("() => document.querySelectorAll('#model option').length === 1")
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "60")
    page.fill("#input", rag_plain_live.question)
    page.click("#send")
    reply = page.locator(".msg.assistant").last
    reply.locator(".actions").wait_for()
    assert _reply_text(reply) == rag_plain_live.answer
    assert reply.locator(".text a.cite").count() == 0  # nothing in the reply's own words
    link = reply.locator(".sources a.cite")
    assert link.count() == 1 and link.get_attribute("data-by") == "overlap"
    assert "attributed" in (link.get_attribute("class") or "")
    assert link.get_attribute("title").startswith("attributed: the model wrote no [n]")
    assert reply.locator(".sources li").all_inner_texts() == [
        "[1] geo/rivers.md, lines 1-2 (attributed: overlap)"
    ]


@pytest.mark.slow
def test_rag_box_stays_hidden_without_an_index(page, live):
    page.goto(live.url + "/")
    page.wait_for_function("() => document.querySelectorAll('#model option').length === 2")
    page.wait_for_load_state("networkidle")
    assert page.locator("#rag_box").is_hidden()
    assert page.locator("#tool_names").inner_text() == "calculator"
