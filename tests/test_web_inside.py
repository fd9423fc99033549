"""The web UI's Inside page: its JSON routes against the inspect functions they serve, through the
real HTTP app, and the page in a real headless browser (test_web's chromium).

What is checked: /inside/run's lens equals inspect.lens.logit_lens and its SAE features equal the
SAE's own encoding of run_with_cache's activations; /inside/attention equals run_with_cache's
hook_pattern; bad requests get 4xx naming the field; the dashboard route serves the SAE's
features directory and nothing outside it; `serve --sae` refuses an SAE made for another model at
start-up; in the browser a prompt shows the lens grid (top tokens on hover), an attention heatmap
and the SAE features with links to their dashboards, and hostile prompt text stays text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from live_server import UvicornThread, serve_process

PROMPT = "To be, or not to be"
MAX_TOKENS = 128  # the fixture server's inside_max_tokens


def _model() -> Any:
    from tiny_models import loaded, random_model, tiny_tokenizer

    tok = tiny_tokenizer()
    return loaded(random_model(tok, seed=3, max_seq_len=512), tok)


def _write_sae(
    root: Path, d_in: int, hook: str, *, d_sae: int = 48, seed: int = 0, model_id: str = ""
) -> Path:
    from twofiles.sae.model import SAEConfig, SparseAutoencoder, save_sae

    sae = SparseAutoencoder(
        SAEConfig(d_in=d_in, d_sae=d_sae, k=4, hook_name=hook, model_id=model_id)
    )
    sae.init_weights(seed=seed)
    with torch.no_grad():
        sae.b_enc.fill_(0.05)  # some features fire at every token
    root.mkdir(parents=True)
    save_sae(root / "sae.safetensors", sae)
    return root


@pytest.fixture(scope="module")
def inside(tmp_path_factory: pytest.TempPathFactory):
    """A live server for one tiny model with two SAEs: "resid" (residual stream, dashboards
    written) and "mlp" (the MLP's hidden activations, no dashboards yet)."""
    from twofiles.serve.app import ServeSettings, create_app
    from twofiles.serve.inside import load_served_sae

    root = tmp_path_factory.mktemp("inside")
    loaded = _model()
    resid = _write_sae(root / "resid", 32, "blocks.1.hook_resid_post")
    features = resid / "features"
    features.mkdir()
    (features / "index.html").write_text("<h1>all features</h1>")
    for i in range(48):
        (features / f"{i}.html").write_text(f"<h1>feature {i}</h1>")
    (root / "outside.html").write_text("<h1>not a dashboard</h1>")
    (features / "7777.html").symlink_to(root / "outside.html")  # a link out of the directory
    mlp = _write_sae(root / "mlp", 64, "blocks.0.mlp.hook_post", seed=1)
    saes = {
        "tiny": [
            load_served_sae(resid, loaded, "tiny", "0"),
            load_served_sae(mlp, loaded, "tiny", "1"),
        ]
    }
    app = create_app({"tiny": loaded}, ServeSettings(inside_max_tokens=MAX_TOKENS), saes=saes)
    with UvicornThread(app) as server:
        server.loaded = loaded
        server.saes = saes["tiny"]
        yield server


def _post(server: UvicornThread, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    status, _, raw = server.request("POST", path, body)
    return status, json.loads(raw)


def test_run_equals_logit_lens_and_the_saes_own_features(inside):
    from twofiles.engine import encode_prompt
    from twofiles.inspect import run_with_cache
    from twofiles.inspect.lens import logit_lens

    status, got = _post(inside, "/inside/run", {"model": "tiny", "prompt": PROMPT, "top": 4})
    assert status == 200, got
    tok = inside.loaded.tokenizer
    ids = encode_prompt(tok, PROMPT)
    assert got["ids"] == ids and got["tokens"] == [tok.decode([i]) for i in ids]
    assert (got["n_layers"], got["n_heads"]) == (2, 4)
    lens = logit_lens(inside.loaded, ids, k=4)
    assert got["lens"]["layers"] == ["embed", "block 0", "block 1"]
    assert [[[c["id"] for c in cell] for cell in row] for row in got["lens"]["top"]] == (
        lens.top_ids.tolist()
    )
    probs = torch.tensor([[[c["p"] for c in cell] for cell in row] for row in got["lens"]["top"]])
    torch.testing.assert_close(probs, lens.top_probs, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.tensor(got["lens"]["next_prob"]), lens.next_prob)
    torch.testing.assert_close(torch.tensor(got["lens"]["entropy_bits"]), lens.entropy)

    _, cache = run_with_cache(inside.loaded, ids, names=[s.hook_name for s in inside.saes])
    assert [s["id"] for s in got["saes"]] == ["0", "1"]
    for served, sent in zip(inside.saes, got["saes"], strict=True):
        acts = served.sae.encode(cache[served.hook_name][0].float())  # [T, d_sae]
        assert len(sent["features"]) == len(ids)
        for pos, row in enumerate(sent["features"]):
            assert row, "the fixture's SAEs fire at every token"
            want = acts[pos].topk(5)
            fired = [(i, v) for i, v in zip(want.indices.tolist(), want.values.tolist()) if v > 0]
            assert [f["feature"] for f in row] == [i for i, _ in fired]
            assert [f["act"] for f in row] == pytest.approx([v for _, v in fired], abs=1e-5)
        links = [f["dashboard"] for row in sent["features"] for f in row]
        if served.id == "0":  # dashboards written: each feature links to its page
            assert sent["dashboards"] is True
            for row in sent["features"]:
                assert [f["dashboard"] for f in row] == [
                    f"/inside/sae/0/{f['feature']}.html" for f in row
                ]
        else:  # none yet: no links, not broken ones
            assert sent["dashboards"] is False and set(links) == {None}


def test_attention_equals_run_with_cache_pattern(inside):
    from twofiles.engine import encode_prompt
    from twofiles.inspect import run_with_cache

    ids = encode_prompt(inside.loaded.tokenizer, PROMPT)
    _, cache = run_with_cache(inside.loaded, ids, names=[("pattern", 1)])
    want = cache["pattern", 1][0]  # [heads, T, T]
    status, got = _post(
        inside, "/inside/attention", {"model": "tiny", "prompt": PROMPT, "layer": 1}
    )
    assert status == 200, got
    assert got["heads"] == [0, 1, 2, 3] and got["layer"] == 1
    for h, rows in enumerate(got["patterns"]):
        assert [len(r) for r in rows] == list(range(1, len(ids) + 1))  # the causal triangle
        full = torch.zeros(len(ids), len(ids))
        for t, r in enumerate(rows):
            full[t, : t + 1] = torch.tensor(r)
        torch.testing.assert_close(full, want[h], rtol=0, atol=1e-5)
    status, one = _post(
        inside, "/inside/attention", {"model": "tiny", "prompt": PROMPT, "layer": 1, "head": 2}
    )
    assert status == 200 and one["heads"] == [2] and one["patterns"] == [got["patterns"][2]]


@pytest.mark.parametrize(
    ("route", "body", "status", "words"),
    [
        ("/inside/run", {"model": "nope", "prompt": "hi"}, 404, "not served"),
        ("/inside/run", {"model": "tiny", "prompt": ""}, 400, "prompt"),
        ("/inside/run", {"model": "tiny", "prompt": "word " * 300}, 400, f"at most {MAX_TOKENS}"),
        ("/inside/run", {"model": "tiny", "prompt": "hi", "top": 0}, 400, "top"),
        ("/inside/run", {"model": "tiny", "prompt": "hi", "top": 21}, 400, "top"),
        ("/inside/run", {"model": "tiny", "prompt": "hi", "topk": 3}, 400, "unknown field"),
        ("/inside/run", {"model": "tiny", "prompt": "a\ud800"}, 400, "unicode"),
        ("/inside/attention", {"model": "tiny", "prompt": "hi", "layer": 2}, 400, "layers 0..1"),
        ("/inside/attention", {"model": "tiny", "prompt": "hi", "layer": -1}, 400, "layer"),
        (
            "/inside/attention",
            {"model": "tiny", "prompt": "hi", "layer": 0, "head": 4},
            400,
            "heads 0..3",
        ),
        ("/inside/attention", {"model": "tiny", "prompt": "hi"}, 400, "layer"),
    ],
)
def test_bad_requests_get_4xx_naming_the_field(inside, route, body, status, words):
    got_status, got = _post(inside, route, body)
    assert got_status == status, got
    assert words in got["error"]["message"]


def test_dashboards_are_served_from_the_features_directory_only(inside):
    status, headers, body = inside.request("GET", "/inside/sae/0/index.html")
    assert status == 200 and body == b"<h1>all features</h1>"
    assert "sandbox" in headers["content-security-policy"]  # no script runs in a dashboard
    assert "script-src" not in headers["content-security-policy"]  # default-src 'none' covers it
    status, _, body = inside.request("GET", "/inside/sae/0/12.html")
    assert status == 200 and body == b"<h1>feature 12</h1>"
    for path in (
        "/inside/sae/1/index.html",  # that SAE has no dashboards yet
        "/inside/sae/9/index.html",  # no such SAE
        "/inside/sae/0/7777.html",  # a link leading out of the directory
        "/inside/sae/0/..%2F..%2Foutside.html",
        "/inside/sae/0/..%2Fsae.safetensors",
        "/inside/sae/0/%2E%2E",
        "/inside/sae/0/../../outside.html",
    ):
        status, _, body = inside.request("GET", path)
        assert status == 404, (path, body)
        assert b"not a dashboard" not in body and b"safetensors" not in body.lower()


def test_models_route_lists_layers_heads_and_saes(inside):
    status, _, raw = inside.request("GET", "/inside/models")
    got = json.loads(raw)
    assert status == 200
    (m,) = got["models"]
    assert (m["name"], m["n_layers"], m["n_heads"], m["max_tokens"]) == ("tiny", 2, 4, MAX_TOKENS)
    assert [(s["hook_name"], s["d_sae"], s["dashboards"]) for s in m["saes"]] == [
        ("blocks.1.hook_resid_post", 48, True),
        ("blocks.0.mlp.hook_post", 48, False),
    ]


def test_an_sae_for_another_model_is_refused(tmp_path):
    from twofiles.errors import BadInputError
    from twofiles.serve.inside import load_served_sae

    loaded = _model()
    wide = _write_sae(tmp_path / "wide", 576, "blocks.1.hook_resid_post")
    with pytest.raises(BadInputError, match="576-wide.*has 32 there"):
        load_served_sae(wide, loaded, "tiny", "0")
    deep = _write_sae(tmp_path / "deep", 32, "blocks.29.hook_resid_post")
    with pytest.raises(BadInputError, match="no per-token activation"):
        load_served_sae(deep, loaded, "tiny", "0")
    # the same shapes, another model's weights: refused by the weights hash the SAE recorded
    from twofiles.sae.activations import model_id

    mine = model_id(loaded)
    other = _write_sae(
        tmp_path / "other", 32, "blocks.1.hook_resid_post", model_id="0123abcd0123abcd"
    )
    with pytest.raises(BadInputError, match=f"trained on another model.*has weights {mine}"):
        load_served_sae(other, loaded, "tiny", "0", mine)
    same = _write_sae(tmp_path / "same", 32, "blocks.1.hook_resid_post", model_id=mine)
    assert load_served_sae(same, loaded, "tiny", "0", mine).hook_name == "blocks.1.hook_resid_post"


@pytest.mark.slow
def test_serve_sae_flag_from_the_command_line(tmp_path):
    """`twofiles serve MODEL --sae DIR` serves the SAE; one made for another model stops the
    server at start-up with exit code 2 and the reason."""
    import http.client

    from twofiles.artifact import save_model

    loaded = _model()
    model = save_model(tmp_path / "model.safetensors", loaded.model, loaded.tokenizer)
    good = _write_sae(tmp_path / "good", 32, "blocks.0.hook_resid_post")
    bad = _write_sae(tmp_path / "bad", 64, "blocks.0.hook_resid_post")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    refused = subprocess.run(
        [sys.executable, "-m", "twofiles", "serve", str(model), "--port", "0", "--sae", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert refused.returncode == 2, refused.stderr
    assert "64-wide" in refused.stderr and "bad" in refused.stderr
    other = _write_sae(tmp_path / "other", 32, "blocks.0.hook_resid_post", model_id="0" * 16)
    refused = subprocess.run(
        [sys.executable, "-m", "twofiles", "serve", str(model), "--port", "0", "--sae", str(other)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert refused.returncode == 2 and "trained on another model" in refused.stderr, refused.stderr
    with serve_process([f"mine={model}", "--port", "0", "--sae", f"mine={good}", "--json"]) as p:
        assert p.stdout is not None
        summary = None
        while summary is None:
            line = p.stdout.readline()
            assert line, p.stderr.read() if p.stderr else "the server stopped"
            if line.startswith("{"):
                summary = json.loads(line)
        assert summary["saes"] == [
            {"model": "mine", "id": "0", "path": str(good), "hook_name": "blocks.0.hook_resid_post"}
        ]
        host, port = summary["url"].removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request("GET", "/inside/models")
        got = json.loads(conn.getresponse().read())
        conn.close()
        assert got["models"][0]["saes"][0]["hook_name"] == "blocks.0.hook_resid_post"


# --- the page in the browser --------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    from test_web import launch_browser

    yield from launch_browser()


@pytest.fixture
def page(browser, inside):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _look(pg: Any, server: UvicornThread, prompt: str) -> None:
    pg.goto(server.url + "/inside")
    pg.wait_for_function("() => document.querySelectorAll('#model option').length === 1")
    pg.fill("#prompt", prompt)
    pg.click("#look")
    pg.locator("#heads canvas").first.wait_for()


@pytest.mark.slow
def test_page_shows_lens_attention_and_features(page, inside, tmp_path):
    _look(page, inside, PROMPT)
    _, api = _post(inside, "/inside/run", {"model": "tiny", "prompt": PROMPT})
    T = len(api["tokens"])
    assert page.locator("#lens tbody tr").count() == 3
    assert page.locator("#lens td.cell").count() == 3 * T
    # hovering a cell shows that layer's top tokens at that position, as the API sent them
    page.locator("#lens td.cell[data-layer='2'][data-pos='3']").hover()
    tip = page.locator("#tokinfo")
    tip.wait_for(state="visible")
    shown = [t.replace("␣", " ") for t in tip.locator("td.t").all_inner_texts()]
    assert shown == [c["token"] for c in api["lens"]["top"][2][3]]
    assert "block 1" in tip.inner_text()

    # attention: every head of the layer as a small map, the chosen one drawn large
    assert page.locator("#heads canvas").count() == 4
    page.select_option("#layer", "1")
    page.wait_for_function("() => document.querySelector('#attn').dataset.layer === '1'")
    page.locator("#heads canvas[data-head='2']").click()
    page.wait_for_function("() => document.querySelector('#attn').dataset.head === '2'")
    # the first token's row: it attends only to itself (weight 1): a saturated cell
    pixel = page.evaluate(
        """() => { const c = document.querySelector('#attn');
                   const cell = c._cell, x = 90 + cell / 2, y = 90 + cell / 2;
                   return Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data); }"""
    )
    assert pixel[:3] == [47, 111, 223]
    box = page.locator("#attn").bounding_box()
    page.mouse.move(box["x"] + 2, box["y"] + 2)  # the label margin: no cell
    cell = page.evaluate("() => document.querySelector('#attn')._cell")
    scale = box["width"] / page.evaluate("() => document.querySelector('#attn').width")
    page.mouse.move(box["x"] + (90 + cell * 0.5) * scale, box["y"] + (90 + cell * 2.5) * scale)
    tip.wait_for(state="visible")
    assert "head 2" in tip.inner_text() and "(2) → " in tip.inner_text()

    # SAE features: the first SAE links to its dashboards, the second (none written) does not
    first, second = page.locator(".sae[data-sae='0']"), page.locator(".sae[data-sae='1']")
    assert first.locator("tr").count() == T
    links = first.locator("a.feat")
    assert links.count() > 0
    href = links.first.get_attribute("href")
    want = api["saes"][0]["features"][0][0]
    assert href == f"/inside/sae/0/{want['feature']}.html"
    assert page.request.get(inside.url + href).text() == f"<h1>feature {want['feature']}</h1>"
    assert second.locator("a").count() == 0 and second.locator(".feat").count() > 0
    page.screenshot(path=str(tmp_path / "web-inside.png"), full_page=True)
    assert (tmp_path / "web-inside.png").stat().st_size > 5_000


@pytest.mark.slow
def test_hostile_prompt_is_shown_as_text(page, inside):
    hostile = '<img src=x onerror="window.pwned=1"><script>window.pwned=1</script><b>x</b>'
    _look(page, inside, hostile)
    assert page.evaluate("() => window.pwned") is None
    assert (
        page.evaluate(
            "() => document.querySelectorAll('#results img, #results script, #results b').length"
        )
        == 0
    )
    assert "".join(page.locator("#tokens .tok").all_inner_texts()).replace("␣", " ") == (
        "<|bos|>" + hostile
    )
    # the other pages link here
    page.goto(inside.url + "/")
    assert page.locator("nav a[href='/inside']").count() == 1


def test_api_key_guards_the_routes_not_the_page():
    from twofiles.serve.app import ServeSettings, create_app

    app = create_app({"tiny": _model()}, ServeSettings(api_keys=frozenset({"sesame"})))
    with UvicornThread(app) as server:
        status, _, body = server.request("GET", "/inside")
        assert status == 200 and b"/static/inside.js" in body
        body = {"model": "tiny", "prompt": "hi"}
        assert server.request("POST", "/inside/run", body)[0] == 401
        assert server.request("GET", "/inside/models")[0] == 401
        key = {"Authorization": "Bearer sesame"}
        assert server.request("POST", "/inside/run", body, headers=key)[0] == 200


def test_a_run_does_not_block_the_event_loop(inside, monkeypatch):
    """The forward runs on a worker thread: /health answers while a slow run is in progress."""
    import threading
    import time

    import twofiles.serve.inside as inside_module

    started, release = threading.Event(), threading.Event()
    real = inside_module.run_inside

    def slow(*args: Any, **kwargs: Any) -> dict[str, Any]:
        started.set()
        assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(inside_module, "run_inside", slow)
    result: list[int] = []
    worker = threading.Thread(
        target=lambda: result.append(
            _post(inside, "/inside/run", {"model": "tiny", "prompt": "hi"})[0]
        )
    )
    worker.start()
    try:
        assert started.wait(30)
        t0 = time.monotonic()
        status, _, _ = inside.request("GET", "/health", timeout=10)
        assert status == 200 and time.monotonic() - t0 < 5
        assert not result  # the run is still waiting
    finally:
        release.set()
        worker.join(60)
    assert result == [200]
