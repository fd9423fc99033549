"""Screenshots of the web pages with real models, for the docs.

  python scripts/web_screenshots.py smollm2 tiny=runs/tiny/model.safetensors --out bench/results
  python scripts/web_screenshots.py smollm2 --pages inside --sae runs/sae-smollm2 --layer 3 --head 4

Serves MODELs (name=spec, or a spec named as `twofiles serve` names it) with the real app on
127.0.0.1 and drives Debian's chromium through Playwright: one chat turn with the token view
open, arena battles and their votes, the leaderboard, and the Inside page (the prompt typed, an
attention layer and head picked, a cell of the logit lens hovered; with --sae, the first model's
SAE as `serve --sae` loads it; with --features, scrolled to them). The votes are cast by a reference
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
    ap.add_argument(
        "--pages",
        default="chat,arena,leaderboard",
        help="the pages to shoot, of chat, arena, leaderboard, inside",
    )
    ap.add_argument("--sae", default=None, metavar="DIR", help="inside: an SAE on the first model")
    ap.add_argument("--inside-prompt", default="The Eiffel Tower is in the city of")
    ap.add_argument("--layer", type=int, default=3, help="inside: the attention layer shown")
    ap.add_argument("--head", type=int, default=0, help="inside: the attention head shown large")
    ap.add_argument(
        "--features", action="store_true", help="inside: scrolled to the SAE's features (linked)"
    )
    args = ap.parse_args()
    pages = set(args.pages.split(","))

    from playwright.sync_api import sync_playwright

    from twofiles.formats.resolve import resolve_model
    from twofiles.serve.app import ServeSettings, create_app, model_name
    from twofiles.serve.inside import load_served_sae

    models = {}
    for item in args.models:
        name, _, spec = item.rpartition("=")
        models[name or model_name(spec)] = resolve_model(spec)
    first = next(iter(models))
    saes = {first: [load_served_sae(args.sae, models[first], first, "0")]} if args.sae else None
    app = create_app(models, ServeSettings(), saes=saes)
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

            if "chat" in pages:
                shoot_chat(page, url, args, first, out)
            if "arena" in pages:
                shoot_arena(page, url, out)
            if "leaderboard" in pages:
                page.goto(url + "/leaderboard")
                page.locator("tr.row").first.wait_for()
                page.screenshot(path=str(out / "web-leaderboard-real.png"))
            if "inside" in pages:
                shoot_inside(page, url, args, out)
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    print(f"screenshots in {out}/")


def shoot_chat(page, url: str, args, first: str, out: Path) -> None:
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


def shoot_arena(page, url: str, out: Path) -> None:
    page.goto(url + "/arena")
    for prompt, expected in QUESTIONS:
        page.fill("#max_tokens", "48")
        page.fill("#prompt", prompt)
        page.click("#battle")
        page.locator("#votes").wait_for(state="visible")
        a, b = (expected.lower() in page.locator(f"#reply-{s}").inner_text().lower() for s in "ab")
        winner = "tie" if a and b else "a" if a else "b" if b else "both_bad"
        page.click(f"button[data-winner='{winner}']")
        page.locator("#reveal").wait_for(state="visible")
    page.screenshot(path=str(out / "web-arena-real.png"))


def shoot_inside(page, url: str, args, out: Path) -> None:
    page.goto(url + "/inside")
    page.wait_for_function("() => document.querySelectorAll('#model option').length > 0")
    page.fill("#prompt", args.inside_prompt)
    page.click("#look")
    page.locator("#heads canvas").first.wait_for()
    page.select_option("#layer", str(args.layer))
    page.wait_for_function(
        f"() => document.querySelector('#attn').dataset.layer === '{args.layer}'"
    )
    page.locator(f"#heads canvas[data-head='{args.head}']").click()
    n = page.locator("#lens tbody tr").count()
    t = page.locator("#lens thead th.t").count()
    # the model's own prediction at the last position: the top tokens on hover
    page.locator(f"#lens td.cell[data-layer='{n - 1}'][data-pos='{t - 1}']").hover()
    page.locator("#tokinfo").wait_for(state="visible")
    name = "inside.png"
    if args.features:
        page.mouse.move(0, 0)
        page.locator("#features-section").scroll_into_view_if_needed()
        page.locator("#features a.feat").first.hover()
        name = "inside-sae.png"
    page.screenshot(path=str(out / name))


if __name__ == "__main__":
    main()
