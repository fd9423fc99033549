"""Screenshots of the web pages with real models, for the docs.

  python scripts/web_screenshots.py smollm2 tiny=runs/tiny/model.safetensors --out bench/results

Serves MODELs (name=spec, or a spec named as `twofiles serve` names it) with the real app on
127.0.0.1 and drives Debian's chromium through Playwright: one chat turn with the token view
open, arena battles and their votes, and the leaderboard. The votes are cast by a reference
check in the page, as a person would: the side whose answer contains the expected answer wins
(both: tie; neither: both bad). Databases live in a temporary directory.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
QUESTIONS = [  # (prompt, the answer a good reply contains)
    ("What is the capital of France?", "Paris"),
    ("What is 2 + 2? Answer with a number.", "4"),
    ("What colour is the sky on a clear day?", "blue"),
    ("Which planet do we live on?", "Earth"),
    ("How many days are in a week?", "7"),
]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]


def serve(app):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "models", nargs="+", metavar="MODEL", help="name=spec or spec (at least two for the arena)"
    )
    ap.add_argument("--out", default="bench/results", help="directory for the PNGs")
    ap.add_argument("--prompt", default="What is the capital of France? Answer in one sentence.")
    ap.add_argument(
        "--chat-model", default=None, help="the model for the chat screenshot (default: the first)"
    )
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    from twofiles.formats.resolve import resolve_model
    from twofiles.serve.app import ServeSettings, create_app, model_name

    models = {}
    for item in args.models:
        name, _, spec = item.rpartition("=")
        models[name or model_name(spec)] = resolve_model(spec)
    first = next(iter(models))
    app = create_app(models, ServeSettings())
    tmp = Path(tempfile.mkdtemp(prefix="twofiles-web-shots-"))
    app.state.web.feedback_db, app.state.web.arena_db = (
        tmp / "feedback.sqlite",
        tmp / "arena.sqlite",
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    server, thread, url = serve(app)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            page.set_default_timeout(300_000)

            page.goto(url + "/")
            page.wait_for_function("document.querySelectorAll('#model option').length > 0")
            page.select_option("#model", args.chat_model or first)
            page.fill("#system", "You are a concise assistant.")
            page.fill("#temperature", "0.7")
            page.fill("#seed", "1")
            page.fill("#max_tokens", "60")
            page.fill("#input", args.prompt)
            page.click("#send")
            reply = page.locator(".msg.assistant").last
            reply.locator(".actions").wait_for()
            tokens = reply.locator(".tok:not(.end)")
            tokens.nth(min(5, tokens.count() - 1)).click()  # a token a few steps in: its die
            page.screenshot(path=str(out / "web-chat-real.png"))

            page.goto(url + "/arena")
            for prompt, expected in QUESTIONS:
                page.fill("#max_tokens", "48")
                page.fill("#prompt", prompt)
                page.click("#battle")
                page.locator("#votes").wait_for(state="visible")
                a, b = (
                    expected.lower() in page.locator(f"#reply-{s}").inner_text().lower()
                    for s in "ab"
                )
                page.click(
                    f"button[data-winner='{'tie' if a and b else 'a' if a else 'b' if b else 'both_bad'}']"
                )
                page.locator("#reveal").wait_for(state="visible")
            page.screenshot(path=str(out / "web-arena-real.png"))

            page.goto(url + "/leaderboard")
            page.locator("tr.row").first.wait_for()
            page.screenshot(path=str(out / "web-leaderboard-real.png"))
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    print(f"screenshots in {out}/web-*-real.png")


if __name__ == "__main__":
    main()
