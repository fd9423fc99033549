"""A screenshot of the web UI's Inside page with a real model, for the docs.

  python scripts/inside_screenshot.py smollm2 --out bench/results/inside.png
  python scripts/inside_screenshot.py smollm2 --sae runs/sae-smollm2 --layer 3 --head 4 --features

Serves MODEL with the real app on 127.0.0.1 (with --sae, the SAE as `serve --sae` loads it),
drives Debian's chromium through Playwright: types the prompt, picks an attention layer and
head, hovers a cell of the logit lens, and saves the window (not the whole page: a small PNG).
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]


def serve(app):
    import uvicorn

    sock = socket.create_server(("127.0.0.1", 0))
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
    ap.add_argument("model", help="a model spec (default name as `twofiles serve` gives it)")
    ap.add_argument("--sae", default=None, metavar="DIR", help="an SAE directory to show")
    ap.add_argument("--prompt", default="The Eiffel Tower is in the city of")
    ap.add_argument("--layer", type=int, default=3, help="the attention layer shown")
    ap.add_argument("--head", type=int, default=0, help="the attention head shown large")
    ap.add_argument("--out", default="bench/results/inside.png")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=1000)
    ap.add_argument(
        "--features", action="store_true", help="show the SAE features (scrolled to them)"
    )
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    from twofiles.formats.resolve import resolve_model
    from twofiles.serve.app import ServeSettings, create_app, model_name
    from twofiles.serve.inside import load_served_sae

    name = model_name(args.model)
    loaded = resolve_model(args.model)
    saes = {name: [load_served_sae(args.sae, loaded, name, "0")]} if args.sae else None
    app = create_app({name: loaded}, ServeSettings(), saes=saes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    server, thread, url = serve(app)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.set_default_timeout(300_000)
            page.goto(url + "/inside")
            page.wait_for_function("() => document.querySelectorAll('#model option').length > 0")
            page.fill("#prompt", args.prompt)
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
            if args.features:
                page.mouse.move(0, 0)
                page.locator("#features-section").scroll_into_view_if_needed()
                page.locator("#features a.feat").first.hover()
            page.screenshot(path=str(out))
            browser.close()
    finally:
        server.should_exit = True
        thread.join(30)
    print(f"{out} ({out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
