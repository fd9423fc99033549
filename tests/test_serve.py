"""The OpenAI-compatible server, live: uvicorn on 127.0.0.1 (a free port), the official `openai`
client, tiny models.

Replies are checked against the engine run directly on the same prompt (the server must be a
thin adapter, not a second generator); tool calls come from a scripted model whose greedy output
is a known tool call; bad requests are sent raw (http.client) as well as through the client, and
each must get a 4xx with a message naming what is wrong. A short load test (32 clients) checks
that nothing 5xx's, that no slot is lost and that memory stays flat.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from live_server import UvicornThread
from peers import require_smollm2
from tiny_models import ScriptedModel, SlowModel, loaded, random_model, tiny_tokenizer
from twofiles.chat import ChatFormat
from twofiles.engine import SamplingParams, encode_prompt, generate_steps
from twofiles.serve.app import create_app
from twofiles.serve.protocol import ToolSpec
from twofiles.serve.settings import ServeSettings

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}
TOOL_QUESTION = [{"role": "user", "content": "what is 2+3?"}]
TOOL_CALL_JSON = '{"name": "calculator", "arguments": {"expression": "2+3"}}'


class LiveServer(UvicornThread):
    """A live server, started at once (`stop()` in the fixture), with the openai client and raw
    http.client requests."""

    def __init__(self, app) -> None:
        super().__init__(app)
        self.start()

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.url + "/v1",
            api_key=kw.pop("api_key", "none"),
            max_retries=0,
            timeout=60,
            **kw,
        )

    def raw(
        self, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None
    ) -> tuple[int, dict, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(
                method,
                path,
                body=body,
                headers={"Content-Type": "application/json", **(headers or {})},
            )
            r = conn.getresponse()
            data = r.read()
            return r.status, dict(r.getheaders()), json.loads(data) if data else {}
        finally:
            conn.close()

    def stats(self) -> dict:
        return self.raw("GET", "/health")[2]["models"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def models(tok):
    tiny = loaded(random_model(tok, max_seq_len=128), tok)
    fmt = ChatFormat.for_model(tiny)
    tool_dicts = [ToolSpec.model_validate(CALCULATOR).model_dump(exclude_none=True)]
    prompt_len = len(fmt.prompt_ids(TOOL_QUESTION, tools=tool_dicts))
    sp = tok.special_ids
    script = [
        sp["<|tool_call_start|>"],
        *tok.encode(TOOL_CALL_JSON),
        sp["<|tool_call_end|>"],
        sp["<|assistant_end|>"],
    ]
    scripted = loaded(
        ScriptedModel(tok, script, prompt_len, filler=sp["<|assistant_end|>"], max_seq_len=512), tok
    )
    slow = loaded(SlowModel(tok, [], 0, filler=tok.encode("a")[0], max_seq_len=4096), tok)
    return {"tiny": tiny, "scripted": scripted, "slow": slow}


@pytest.fixture(scope="module")
def server(models):
    s = LiveServer(
        create_app(
            models,
            ServeSettings(
                max_seqs=4,
                max_queue=64,
                max_context=4096,
                max_body_bytes=64 * 1024,
                max_output_tokens=2000,
            ),
        )
    )
    yield s
    s.stop()


def engine_chat(model_loaded, messages, params):
    fmt = ChatFormat.for_model(model_loaded)
    ids = fmt.prompt_ids(messages)
    p = SamplingParams(**{**params.__dict__, "stop_token_ids": fmt.stop_token_ids})
    steps = list(generate_steps(model_loaded.model, ids, p, tokenizer=model_loaded.tokenizer))
    return "".join(s.text for s in steps), len(ids), len(steps)


MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "to be or not to be?"},
]


# ---------------------------------------------------------------------------------------------
# the happy paths, through the official client


def test_models_and_health(server):
    ids = [m.id for m in server.client().models.list().data]
    assert ids == ["tiny", "scripted", "slow"]
    assert server.client().models.retrieve("tiny").id == "tiny"
    status, _, body = server.raw("GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["models"]["tiny"]["slots"] == 4


def test_chat_equals_the_engine(server, models):
    r = server.client().chat.completions.create(
        model="tiny", messages=MESSAGES, temperature=0, max_tokens=12
    )
    text, prompt_tokens, completion_tokens = engine_chat(
        models["tiny"], MESSAGES, SamplingParams(temperature=0, max_tokens=12)
    )
    assert r.object == "chat.completion" and r.model == "tiny"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == text
    assert r.choices[0].finish_reason in ("stop", "length")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (prompt_tokens, completion_tokens)


def test_streaming_chat_equals_non_streamed(server):
    kw = dict(model="tiny", messages=MESSAGES, temperature=0.7, seed=3, max_tokens=20)
    whole = server.client().chat.completions.create(**kw)
    chunks = list(
        server.client().chat.completions.create(
            **kw, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [whole.choices[0].finish_reason]
    assert (
        chunks[-1].choices == []
        and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    )


def test_completions_equal_the_engine(server, models):
    m = models["tiny"]
    r = server.client().completions.create(
        model="tiny", prompt="whether tis", max_tokens=10, temperature=0, logprobs=2
    )
    steps = list(
        generate_steps(
            m.model,
            encode_prompt(m.tokenizer, "whether tis"),
            SamplingParams(temperature=0, max_tokens=10),
            tokenizer=m.tokenizer,
        )
    )
    assert r.choices[0].text == "".join(s.text for s in steps)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == sum(
        1
        for s in steps
        if s.finish != "stop" or s.token not in (m.tokenizer.bos_id, *m.tokenizer.eos_ids)
    )
    assert all(
        1 <= len(t) <= 2 for t in lp.top_logprobs
    )  # a dict: two tokens may decode alike and all(x <= 0 for x in lp.token_logprobs)
    streamed = list(
        server.client().completions.create(
            model="tiny", prompt="whether tis", max_tokens=10, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in streamed) == r.choices[0].text
    echo = server.client().completions.create(
        model="tiny", prompt=["to be", "not"], max_tokens=3, temperature=0, echo=True, n=2
    )
    assert [c.index for c in echo.choices] == [0, 1, 2, 3]
    assert echo.choices[0].text.startswith("to be") and echo.choices[3].text.startswith("not")


def _naive_prompt_logprobs(model, ids):
    """log P(ids[t] | ids[:t]) for t >= 1 from one plain forward (the reference)."""
    import torch

    with torch.inference_mode():
        logp = model(torch.tensor([ids]))[0].float().log_softmax(-1)  # [T, V]
    return [float(logp[t - 1, ids[t]]) for t in range(1, len(ids))], logp


def test_echo_logprobs_score_the_prompt(server, models):
    """echo + logprobs + max_tokens 0: the prompt's tokens, each with its log-probability given
    those before it (the first: null), in the legacy form, with offsets into the echoed text."""
    m, text = models["tiny"], "to be, or not to be: Zürich's naïve café"
    ids = encode_prompt(m.tokenizer, text)
    code, _, r = server.raw(
        "POST",
        "/v1/completions",
        json.dumps({"model": "tiny", "prompt": text, "echo": True, "logprobs": 2, "max_tokens": 0}),
    )
    assert code == 200, r
    (choice,) = r["choices"]
    assert choice["text"] == text and choice["finish_reason"] == "length"
    lp = choice["logprobs"]
    assert lp["tokens"] == [m.tokenizer.decode([t]) for t in ids]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    want, logp = _naive_prompt_logprobs(m.model, ids)
    assert lp["token_logprobs"][1:] == pytest.approx(want, abs=1e-5)
    for t in range(1, len(ids)):
        tops = lp["top_logprobs"][t]
        assert 1 <= len(tops) <= 2 and max(tops.values()) == pytest.approx(
            float(logp[t - 1].max()), abs=1e-5
        )
    # offsets: characters into the text; the tokens' bytes rebuild it piece by piece
    offsets = lp["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[-1] < len(text)
    rebuilt = b"".join(m.tokenizer.token_to_bytes(t) for t in ids).decode()
    assert rebuilt == text
    assert [
        len(b"".join(m.tokenizer.token_to_bytes(t) for t in ids[:i]).decode("utf-8", "ignore"))
        for i in range(len(ids))
    ] == offsets
    assert r["usage"]["completion_tokens"] == 0 and r["usage"]["prompt_tokens"] == len(ids)

    # with max_tokens > 0 the generated tokens follow the prompt's, as vLLM returns them
    r = server.client().completions.create(
        model="tiny", prompt=text, echo=True, logprobs=1, max_tokens=3, temperature=0
    )
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(ids) + 3 and r.choices[0].text.startswith(text)
    assert lp.token_logprobs[1 : len(ids)] == pytest.approx(want, abs=1e-5)
    assert lp.text_offset[len(ids)] == len(text)


def test_endpoint_eval_equals_local_eval(server, models, tmp_path):
    """`eval --endpoint` against this server scores multiple choice and bits per byte as the
    local backend does on the same model: the same log-likelihoods, to float noise."""
    from twofiles.eval.backends import EndpointBackend, LocalBackend
    from twofiles.eval.runner import run_task
    from twofiles.eval.tasks import load_spec

    rows = [
        {"q": "to be or not to", "c": [" be", " see", "be"], "a": " be"},
        {
            "q": "Where is Zürich? In",
            "c": [" Switzerland", " Austria", " Ünterland"],
            "a": " Switzerland",
        },
        {"q": "The king said:", "c": [" whether tis nobler", " no", "x"], "a": " no"},
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "mc.toml").write_text(
        'type = "multiple_choice"\ndata = "d.jsonl"\nprompt = "{q}"\nchoices = "c"\nanswer = "a"\n'
    )
    spec = load_spec(str(tmp_path / "mc.toml"))
    local = run_task(LocalBackend(models["tiny"], name="tiny"), spec, progress=False)
    remote = run_task(EndpointBackend(server.url, "tiny"), spec, progress=False)
    assert len(local.samples) == len(remote.samples) == len(rows)
    for a, b in zip(local.samples, remote.samples):
        assert b["loglikelihoods"] == pytest.approx(a["loglikelihoods"], abs=1e-4)
    assert remote.value == local.value

    # one document: local scoring runs documents together in windows, the endpoint one at a time
    texts = ["to be, or not to be, that is the question: Zürich, naïve"]
    want = LocalBackend(models["tiny"]).bits_per_byte(texts, seq_len=128)
    got = EndpointBackend(server.url, "tiny").bits_per_byte(texts, seq_len=128)
    assert (got.tokens, got.bytes) == (want.tokens, want.bytes)
    assert got.bits_per_byte == pytest.approx(want.bits_per_byte, abs=1e-4)


def test_tool_call_is_parsed(server):
    r = server.client().chat.completions.create(
        model="scripted", messages=TOOL_QUESTION, tools=[CALCULATOR], temperature=0
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "calculator" and call.id
    assert json.loads(call.function.arguments) == {"expression": "2+3"}
    assert not choice.message.content
    chunks = list(
        server.client().chat.completions.create(
            model="scripted", messages=TOOL_QUESTION, tools=[CALCULATOR], temperature=0, stream=True
        )
    )
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(tc.function.name, json.loads(tc.function.arguments)) for tc in calls] == [
        ("calculator", {"expression": "2+3"})
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not any(c.choices[0].delta.content for c in chunks)  # the call's text is not content
    # a follow-up turn with the call and its result renders and runs
    follow = TOOL_QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "5"},
    ]
    r2 = server.client().chat.completions.create(
        model="scripted", messages=follow, tools=[CALCULATOR], temperature=0, max_tokens=5
    )
    assert r2.choices[0].finish_reason == "stop"


def test_chat_logprobs(server, models):
    r = server.client().chat.completions.create(
        model="tiny", messages=MESSAGES, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    _, _, completion_tokens = engine_chat(
        models["tiny"], MESSAGES, SamplingParams(temperature=0, max_tokens=8)
    )
    # the tiny model's greedy reply runs to max_tokens: one logprobs entry per token
    assert completion_tokens == 8 and r.choices[0].finish_reason == "length"
    assert len(content) == r.usage.completion_tokens == completion_tokens
    for entry in content:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert (
            entry.logprob == pytest.approx(tops[0]) and entry.token == entry.top_logprobs[0].token
        )  # greedy: the top one
        assert (
            bytes(entry.bytes).decode("utf-8", "replace") == entry.token or "\ufffd" in entry.token
        )
    assert "".join(e.token for e in content) == r.choices[0].message.content


def test_n_choices_with_a_seed_are_reproducible(server):
    kw = dict(model="tiny", messages=MESSAGES, temperature=1.0, max_tokens=10, n=3, seed=7)
    a = server.client().chat.completions.create(**kw)
    b = server.client().chat.completions.create(**kw)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert (
        len({c.message.content for c in a.choices}) > 1
    )  # seed, seed+1, seed+2: different samples


# ---------------------------------------------------------------------------------------------
# bad requests: always a 4xx with a message, never a 500


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"model": "nope", "messages": MESSAGES}, 404, ["nope", "not served"]),
        ({"model": "tiny", "messages": MESSAGES, "max_tokens": -1}, 400, ["max_tokens"]),
        ({"model": "tiny", "messages": MESSAGES, "temperature": "hot"}, 400, ["temperature"]),
        (
            {"model": "tiny", "messages": MESSAGES, "temprature": 0},
            400,
            ["temprature", "unknown field"],
        ),
        ({"model": "tiny"}, 400, ["messages", "missing"]),
        ({"model": "tiny", "messages": []}, 400, ["messages"]),
        ({"model": "tiny", "messages": "hi"}, 400, ["messages"]),
        (
            {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]},
            400,
            ["messages[0].role"],
        ),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": 5}]},
            400,
            ["messages[0].content"],
        ),
        ({"model": "tiny", "messages": MESSAGES, "n": 0}, 400, ["n"]),
        ({"model": "tiny", "messages": MESSAGES, "n": 100}, 400, ["n", "at most"]),
        ({"model": "tiny", "messages": MESSAGES, "top_p": 0}, 400, ["top_p"]),
        ({"model": "tiny", "messages": MESSAGES, "stop": ["a", "b", "c", "d", "e"]}, 400, ["stop"]),
        (
            {"model": "tiny", "messages": MESSAGES, "top_logprobs": 3},
            400,
            ["top_logprobs", "logprobs"],
        ),
        (
            {"model": "tiny", "messages": MESSAGES, "presence_penalty": 1.0},
            400,
            ["presence_penalty"],
        ),
        ({"model": "tiny", "messages": MESSAGES, "tools": [{"type": "function"}]}, 400, ["tools"]),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "to be " * 3000}]},
            400,
            ["prompt", "tokens"],
        ),
        ({"model": "tiny", "messages": MESSAGES, "stream": "yes"}, 400, ["stream"]),
        ([1, 2, 3], 400, []),
    ],
)
def test_bad_chat_requests_get_4xx_with_a_message(server, body, status, words):
    code, _, resp = server.raw("POST", "/v1/chat/completions", json.dumps(body))
    assert code == status, resp
    message = resp["error"]["message"]
    for w in words:
        assert w in message, message


@pytest.mark.parametrize(
    "body, words",
    [
        ({"model": "tiny", "prompt": ""}, ["prompt"]),
        ({"model": "tiny", "prompt": [10**9]}, ["token id", "vocabulary"]),
        ({"model": "tiny", "prompt": "x", "logprobs": 50}, ["logprobs"]),
        ({"model": "tiny", "prompt": "x", "suffix": "y"}, ["suffix"]),
        ({"model": "tiny", "prompt": {"a": 1}}, ["prompt"]),
        ({"model": "tiny", "prompt": "to be " * 300}, ["prompt is", "shorten the prompt"]),
        ({"model": "tiny", "prompt": [[1, 2], []]}, ["prompt[1]"]),
        ({"model": "tiny", "prompt": "x", "max_tokens": 0}, ["max_tokens", "echo"]),
        (
            {"model": "tiny", "prompt": "x", "echo": True, "logprobs": 1, "stream": True},
            ["stream", "prompt logprobs"],
        ),
        ({"model": "tiny", "prompt": "x", "echo": True, "max_tokens": -1}, ["max_tokens"]),
        (
            {
                "model": "tiny",
                "prompt": "to be " * 300,
                "echo": True,
                "logprobs": 1,
                "max_tokens": 0,
            },
            ["prompt is", "shorten the prompt"],
        ),
    ],
)
def test_bad_completion_requests_get_400(server, body, words):
    code, _, resp = server.raw("POST", "/v1/completions", json.dumps(body))
    assert code == 400, resp
    for w in words:
        assert w in resp["error"]["message"]


def test_malformed_transport_gets_4xx(server):
    code, _, resp = server.raw("POST", "/v1/chat/completions", '{"model": "tiny", "messages": [')
    assert code == 400 and "invalid JSON" in resp["error"]["message"]
    code, _, resp = server.raw("POST", "/v1/chat/completions", b"\xff\xfe not json")
    assert code == 400
    code, _, resp = server.raw(
        "POST",
        "/v1/chat/completions",
        json.dumps({"model": "tiny", "messages": MESSAGES, "pad": "x" * 100_000}),
    )
    assert code == 413 and "limit" in resp["error"]["message"]
    code, _, resp = server.raw("GET", "/v1/nowhere")
    assert code == 404 and "error" in resp
    code, _, _ = server.raw("GET", "/v1/chat/completions")
    assert code == 405


def test_chunked_body_over_the_limit_gets_413(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    chunks = (b"x" * 8192 for _ in range(20))  # no Content-Length: sent chunked, 160 KiB
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=chunks,
        headers={"Content-Type": "application/json"},
        encode_chunked=True,
    )
    r = conn.getresponse()
    assert r.status == 413 and "limit" in json.loads(r.read())["error"]["message"]
    conn.close()


def test_client_errors_through_the_official_client(server):
    c = server.client()
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=-5)


# ---------------------------------------------------------------------------------------------
# slots, limits, keys


def wait_idle(server, model: str, seconds: float = 10) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        s = server.stats()[model]
        if (s["active"], s["queued"]) == (0, 0) or time.monotonic() > deadline:
            return s
        time.sleep(0.02)


def test_disconnect_mid_stream_frees_the_slot(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    body = json.dumps({"model": "slow", "prompt": "a", "max_tokens": 2000, "stream": True})
    conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    for _ in range(5):
        assert r.readline().startswith(b"data: ")
        r.readline()
    assert server.stats()["slow"]["active"] == 1
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    assert wait_idle(server, "slow")["active"] == 0


def test_disconnect_while_waiting_for_a_non_streamed_reply_frees_the_slot(server):
    sock = socket.create_connection(("127.0.0.1", server.port))
    body = json.dumps({"model": "slow", "prompt": "a", "max_tokens": 2000}).encode()
    sock.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % len(body)
        + body
    )
    deadline = time.monotonic() + 10
    while server.stats()["slow"]["active"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    sock.close()
    assert wait_idle(server, "slow")["active"] == 0


def test_full_queue_gets_429_with_retry_after(models):
    s = LiveServer(
        create_app(
            {"slow": models["slow"]},
            ServeSettings(
                max_seqs=1, max_queue=0, max_context=4096, max_output_tokens=4000, retry_after_s=2
            ),
        )
    )
    try:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
        conn.request(
            "POST",
            "/v1/completions",
            body=json.dumps({"model": "slow", "prompt": "a", "max_tokens": 3000, "stream": True}),
            headers={"Content-Type": "application/json"},
        )
        r = conn.getresponse()
        r.readline()
        code, headers, resp = s.raw(
            "POST", "/v1/completions", json.dumps({"model": "slow", "prompt": "a", "max_tokens": 5})
        )
        assert (
            code == 429 and headers.get("retry-after") == "2" and "busy" in resp["error"]["message"]
        )
        with pytest.raises(openai.RateLimitError):
            s.client().completions.create(model="slow", prompt="a", max_tokens=5)
        conn.close()
        assert wait_idle(s, "slow")["active"] == 0
        assert (
            s.client()
            .completions.create(model="slow", prompt="a", max_tokens=3)
            .usage.completion_tokens
            == 3
        )
    finally:
        s.stop()


def test_request_timeout_gets_504_and_frees_the_slot(models):
    s = LiveServer(
        create_app(
            {"slow": models["slow"]},
            ServeSettings(request_timeout_s=0.3, max_context=4096, max_output_tokens=4000),
        )
    )
    try:
        t0 = time.monotonic()
        code, _, resp = s.raw(
            "POST",
            "/v1/completions",
            json.dumps({"model": "slow", "prompt": "a", "max_tokens": 3000}),
        )
        assert code == 504 and "limit" in resp["error"]["message"] and time.monotonic() - t0 < 5
        assert wait_idle(s, "slow")["active"] == 0
    finally:
        s.stop()


def test_api_keys(models, tmp_path):
    s = LiveServer(
        create_app({"tiny": models["tiny"]}, ServeSettings(api_keys=frozenset({"k1", "k2"})))
    )
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client().models.list()
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="k3").chat.completions.create(
                model="tiny", messages=MESSAGES, max_tokens=2
            )
        assert (
            s.client(api_key="k2")
            .chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2)
            .choices
        )
        code, headers, resp = s.raw(
            "POST", "/v1/completions", json.dumps({"model": "tiny", "prompt": "a"})
        )
        assert (
            code == 401
            and headers.get("www-authenticate") == "Bearer"
            and "API key" in resp["error"]["message"]
        )
        assert s.raw("GET", "/health")[0] == 200  # health stays open for probes
    finally:
        s.stop()


@pytest.mark.slow
def test_bounded_load_no_5xx_no_lost_slots_memory_flat(server):
    """32 concurrent clients, three rounds of mixed requests; bounded in count and time."""
    import psutil

    proc = psutil.Process()
    clients = [server.client() for _ in range(32)]

    def one(i: int) -> str:
        c = clients[i]
        if i % 3 == 0:
            chunks = list(
                c.chat.completions.create(
                    model="tiny", messages=MESSAGES, max_tokens=16, stream=True, seed=i
                )
            )
            return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        if i % 3 == 1:
            return (
                c.completions.create(model="tiny", prompt="to be", max_tokens=16, seed=i)
                .choices[0]
                .text
            )
        return (
            c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=16, seed=i)
            .choices[0]
            .message.content
        )

    rss = []
    t0 = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        for _ in range(3):
            list(pool.map(one, range(32)))  # raises on any error response
            assert wait_idle(server, "tiny") == {**server.stats()["tiny"], "active": 0, "queued": 0}
            rss.append(proc.memory_info().rss)
    assert time.monotonic() - t0 < 120
    assert rss[2] - rss[0] < 40 * 2**20, (
        f"memory grew {(rss[2] - rss[0]) / 2**20:.1f} MiB over two rounds"
    )


@pytest.mark.slow
def test_smollm2_through_the_server_equals_the_engine():
    """The real model, its own (ChatML) template and tokenizer: two concurrent greedy chats
    through the server equal the engine run on each alone."""
    from twofiles.formats.resolve import resolve_model

    require_smollm2()
    smol = resolve_model("smollm2")
    s = LiveServer(create_app({"smollm2": smol}, ServeSettings(max_seqs=2, max_context=512)))
    try:
        questions = [
            [{"role": "user", "content": "What is the capital of France?"}],
            [
                {"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": "Name a colour of the sky."},
            ],
        ]
        with ThreadPoolExecutor(2) as pool:
            replies = list(
                pool.map(
                    lambda m: s.client().chat.completions.create(
                        model="smollm2", messages=m, temperature=0, max_tokens=10
                    ),
                    questions,
                )
            )
        for messages, r in zip(questions, replies):
            text, prompt_tokens, completion_tokens = engine_chat(
                smol, messages, SamplingParams(temperature=0, max_tokens=10)
            )
            assert r.choices[0].message.content == text and len(text) > 3
            assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (
                prompt_tokens,
                completion_tokens,
            )
    finally:
        s.stop()


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "model",
    "messages",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "stop",
    "seed",
    "n",
    "stream",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "prompt",
    "echo",
]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
    fields=st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6),
    valid_base=st.booleans(),
)
def test_fuzzed_requests_never_get_a_5xx(server, path, fields, valid_base):
    base = (
        {"model": "tiny", "messages": MESSAGES, "max_tokens": 2}
        if "chat" in path
        else {"model": "tiny", "prompt": "to be", "max_tokens": 2}
    )
    body = {**base, **fields} if valid_base else fields
    code, _, resp = server.raw("POST", path, json.dumps(body))
    assert code < 500, (code, resp)
    if code >= 400:
        assert resp["error"]["message"]


@pytest.mark.parametrize(
    "raw",
    [
        '{"model": "tiny", "prompt": "a", "temperature": NaN}',
        '{"model": "tiny", "prompt": "a", "max_tokens": Infinity}',
        "[" * 50_000 + "]" * 50_000,
        '{"model": "tiny", "prompt": "\\ud800"}',
    ],
)
def test_odd_json_gets_4xx(server, raw):
    code, _, resp = server.raw("POST", "/v1/completions", raw)
    assert 400 <= code < 500 and resp["error"]["message"]
