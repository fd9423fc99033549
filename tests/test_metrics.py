"""GET /metrics: the server's Prometheus metrics, scraped from a live server (uvicorn on a free
port, tiny models) and parsed with prometheus_client's own parser.

Each test builds its own app and asserts exact counts, so it also checks that apps in one
process do not share a registry. Token counters must equal the usage the responses reported;
requests are counted by endpoint (the route's template) and status, 4xx, 429, 413 and a
disconnected stream included.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from live_server import UvicornThread
from tiny_models import SlowModel, loaded, random_model, tiny_tokenizer
from twofiles.engine import encode_prompt
from twofiles.serve.app import create_app
from twofiles.serve.metrics import SchedulerCollector
from twofiles.serve.settings import ServeSettings

MESSAGES = [{"role": "user", "content": "to be or not to be?"}]
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


class Server(UvicornThread):
    """A live server with JSON requests over http.client and a /metrics parser."""

    def post(self, path: str, body: Any) -> tuple[int, dict]:
        status, _, data = self.request("POST", path, body)
        return status, json.loads(data)

    def stream_usage(self, path: str, body: dict) -> dict:
        """A streamed request's usage (stream_options.include_usage)."""
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        status, _, data = self.request("POST", path, body)
        assert status == 200
        events = [line[6:] for line in data.decode().splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        return json.loads(events[-2])["usage"]

    def scrape(self) -> dict[tuple[str, frozenset], float]:
        status, headers, data = self.request("GET", "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain; version=")
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(data.decode())
            for s in family.samples
        }

    def stats(self) -> dict:
        return json.loads(self.request("GET", "/health")[2])["models"]


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum over every sample of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@pytest.fixture(scope="module")
def models() -> dict:
    tok = tiny_tokenizer()
    return {
        "tiny": loaded(random_model(tok, max_seq_len=128), tok),
        "slow": loaded(SlowModel(tok, [], 0, filler=tok.encode("a")[0], max_seq_len=4096), tok),
    }


def test_requests_tokens_and_timings_are_counted(models):
    settings = ServeSettings(max_seqs=4, max_context=128)
    with Server(create_app({"tiny": models["tiny"]}, settings)) as s:
        usages = []
        chat = {"model": "tiny", "messages": MESSAGES, "max_tokens": 8, "seed": 1}
        status, body = s.post(CHAT, chat)
        assert status == 200
        usages.append(body["usage"])
        usages.append(s.stream_usage(CHAT, chat))
        completion = {"model": "tiny", "prompt": ["to be", "or not"], "n": 2, "max_tokens": 6}
        status, body = s.post(COMPLETIONS, completion)
        assert status == 200 and len(body["choices"]) == 4
        usages.append(body["usage"])
        usages.append(s.stream_usage(COMPLETIONS, {**completion, "prompt": "to be", "n": 1}))
        assert s.post(CHAT, {**chat, "temperature": -1})[0] == 400
        assert s.post(CHAT, {**chat, "model": "nope"})[0] == 404
        assert s.request("GET", "/v1/models/tiny")[0] == 200
        assert s.request("GET", "/no/such/page")[0] == 404
        m = s.scrape()

    requests = "twofiles_requests_total"
    assert value(m, requests, endpoint=CHAT, status="200") == 2
    assert value(m, requests, endpoint=CHAT, status="400") == 1
    assert value(m, requests, endpoint=CHAT, status="404") == 1
    assert value(m, requests, endpoint=COMPLETIONS, status="200") == 2
    assert value(m, requests, endpoint="/v1/models/{name:path}", status="200") == 1
    assert value(m, requests, endpoint="unmatched", status="404") == 1
    assert total(m, requests) == 8  # /metrics does not count itself
    assert value(m, "twofiles_request_duration_seconds_count", endpoint=CHAT) == 4

    prompt = sum(u["prompt_tokens"] for u in usages)
    generated = sum(u["completion_tokens"] for u in usages)
    assert value(m, "twofiles_prompt_tokens_total", model="tiny") == prompt
    assert value(m, "twofiles_generation_tokens_total", model="tiny") == generated
    choices = 1 + 1 + 4 + 1
    assert total(m, "twofiles_generations_total", model="tiny") == choices
    assert total(m, "twofiles_generations_total", finish_reason="cancelled") == 0
    ttft = value(m, "twofiles_time_to_first_token_seconds_count", model="tiny")
    assert (
        ttft == choices and value(m, "twofiles_time_to_first_token_seconds_sum", model="tiny") > 0
    )
    per_token = value(m, "twofiles_time_per_output_token_seconds_count", model="tiny")
    assert 1 <= per_token <= choices  # one per generation of two tokens or more
    inf = value(m, "twofiles_time_to_first_token_seconds_bucket", model="tiny", le="+Inf")
    assert inf == choices

    assert value(m, "twofiles_slots", model="tiny") == 4
    assert ("twofiles_num_requests_running", frozenset({("model", "tiny")})) in m
    assert ("twofiles_num_requests_waiting", frozenset({("model", "tiny")})) in m


def wait_idle(s: Server, model: str) -> None:
    deadline = time.monotonic() + 10
    while (s.stats()[model]["active"], s.stats()[model]["queued"]) != (0, 0):
        assert time.monotonic() < deadline, "the model did not go idle"
        time.sleep(0.02)


def test_disconnects_busy_and_oversized_requests_are_counted(models):
    settings = ServeSettings(
        max_seqs=1, max_queue=0, max_context=4096, max_output_tokens=4000, max_body_bytes=2048
    )
    with Server(create_app({"slow": models["slow"]}, settings)) as s:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
        body = {"model": "slow", "prompt": "a", "max_tokens": 3000, "stream": True}
        conn.request("POST", COMPLETIONS, json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        for _ in range(5):
            assert r.readline().startswith(b"data: ")
            r.readline()
        running = s.scrape()
        assert value(running, "twofiles_num_requests_running", model="slow") == 1
        assert s.post(COMPLETIONS, {"model": "slow", "prompt": "a", "max_tokens": 2})[0] == 429
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        wait_idle(s, "slow")
        big = {"model": "slow", "prompt": "a" * 4096}
        assert s.post(COMPLETIONS, big)[0] == 413
        m = s.scrape()

    requests = "twofiles_requests_total"
    assert value(m, requests, endpoint=COMPLETIONS, status="200") == 1  # the stream's 200
    assert value(m, requests, endpoint=COMPLETIONS, status="429") == 1
    assert value(m, requests, endpoint=COMPLETIONS, status="413") == 1  # refused before routing
    assert value(m, "twofiles_generations_total", model="slow", finish_reason="cancelled") == 1
    assert total(m, "twofiles_generations_total") == 1  # the 429 never became a generation
    assert value(m, "twofiles_generation_tokens_total", model="slow") >= 5
    prompt = len(encode_prompt(models["slow"].tokenizer, "a"))
    assert value(m, "twofiles_prompt_tokens_total", model="slow") == prompt  # the 429's: none
    assert value(m, "twofiles_num_requests_running", model="slow") == 0


def test_metrics_can_be_turned_off_and_stay_open_beside_api_keys(models):
    tiny = {"tiny": models["tiny"]}
    with Server(create_app(tiny, ServeSettings(metrics=False))) as s:
        assert s.request("GET", "/metrics")[0] == 404
        assert s.post(CHAT, {"model": "tiny", "messages": MESSAGES, "max_tokens": 2})[0] == 200
    with Server(create_app(tiny, ServeSettings(api_keys=frozenset({"k"})))) as s:
        assert s.request("GET", "/v1/models")[0] == 401
        status, _, data = s.request("GET", "/health")
        assert status == 200 and json.loads(data) == {"status": "ok", "models": s.stats()}
        m = s.scrape()  # no key: /metrics is open, as /health is
    assert value(m, "twofiles_requests_total", endpoint="/v1/models", status="401") == 1
    assert value(m, "twofiles_requests_total", endpoint="/health", status="200") == 2


class _Stats:
    def __init__(self, stats: dict) -> None:
        self._stats = stats

    def stats(self) -> dict:
        return self._stats


def test_prefix_cache_stats_are_exported_when_the_scheduler_has_them():
    base = {"slots": 8, "active": 2, "queued": 3, "context": 2048}
    prefix = {
        "prefix_lookup_tokens": 400,
        "prefix_hit_tokens": 300,
        "prefix_cache_bytes": 1 << 20,
        "prefix_cache_blocks": 16,
        "prefix_evictions": 5,
    }
    stats = {
        "a": {**base, **prefix},
        "b": dict(base),
        "c": {**base, **prefix, "prefix_lookup_tokens": 0},
    }
    samples = {
        (s.name, s.labels["model"]): s.value
        for family in SchedulerCollector(_Stats(stats)).collect()
        for s in family.samples
    }
    assert samples[("twofiles_num_requests_waiting", "b")] == 3
    assert samples[("twofiles_num_requests_running", "b")] == 2
    assert samples[("twofiles_slots", "b")] == 8
    assert samples[("twofiles_prefix_cache_queries_total", "a")] == 400
    assert samples[("twofiles_prefix_cache_hits_total", "a")] == 300
    assert samples[("twofiles_prefix_cache_evictions_total", "a")] == 5
    assert samples[("twofiles_prefix_cache_bytes", "a")] == 1 << 20
    assert samples[("twofiles_prefix_cache_blocks", "a")] == 16
    assert samples[("twofiles_prefix_cache_hit_rate", "a")] == 0.75
    assert not any(model == "b" and name.startswith("twofiles_prefix") for name, model in samples)
    assert ("twofiles_prefix_cache_hit_rate", "c") not in samples  # no lookups: no rate
    without = list(SchedulerCollector(_Stats({"b": base})).collect())
    assert not any(f.name.startswith("twofiles_prefix") for f in without)


def test_prefix_cache_hits_of_a_real_server_reach_the_scrape(models):
    """The same long prompt twice through the real scheduler: the second request's prompt is
    served from the prefix cache, and /metrics says so with the scheduler's own numbers."""
    settings = ServeSettings(max_seqs=2, max_context=128, prefix_cache_mb=16)
    prompt = "to be or not to be, that is the question: whether tis nobler in the mind " * 2
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 2, "seed": 1}
    with Server(create_app({"tiny": models["tiny"]}, settings)) as s:
        assert s.post(COMPLETIONS, body)[0] == 200
        first = s.scrape()
        assert s.post(COMPLETIONS, body)[0] == 200
        wait_idle(s, "tiny")
        samples, stats = s.scrape(), s.stats()["tiny"]
    prompt_tokens = len(encode_prompt(models["tiny"].tokenizer, prompt))
    assert value(first, "twofiles_prefix_cache_hits_total", model="tiny") == 0
    hits = value(samples, "twofiles_prefix_cache_hits_total", model="tiny")
    lookups = value(samples, "twofiles_prefix_cache_queries_total", model="tiny")
    assert lookups == 2 * prompt_tokens == stats["prefix_lookup_tokens"]
    # the whole prompt but its last token (recomputed for its logits), in whole 16-token blocks
    assert hits == stats["prefix_hit_tokens"] == (prompt_tokens - 1) // 16 * 16 > 0
    assert value(samples, "twofiles_prefix_cache_hit_rate", model="tiny") == hits / lookups
    assert value(samples, "twofiles_prefix_cache_blocks", model="tiny") > 0


def test_a_personas_requests_are_counted_under_its_name(models):
    """A persona served on its base model's engine: its prompt and generated tokens and its
    generations are counted under the name the client asked for, the engine's gauges under the
    base model."""
    from twofiles.formats.resolve import persona_view

    record = {"name": "terse:latest", "system": "Be terse.", "parameters": {"num_predict": 3}}
    served = {"tiny": models["tiny"], "terse": persona_view(models["tiny"], record)}
    settings = ServeSettings(max_seqs=2, max_context=128)
    with Server(create_app(served, settings, shared={"terse": "tiny"})) as s:
        status, body = s.post(CHAT, {"model": "terse", "messages": MESSAGES, "seed": 1})
        assert status == 200 and body["usage"]["completion_tokens"] == 3
        m = s.scrape()
    usage = body["usage"]
    assert value(m, "twofiles_prompt_tokens_total", model="terse") == usage["prompt_tokens"]
    assert value(m, "twofiles_generation_tokens_total", model="terse") == 3
    assert total(m, "twofiles_generations_total", model="terse") == 1
    assert value(m, "twofiles_time_to_first_token_seconds_count", model="terse") == 1
    assert total(m, "twofiles_generations_total", model="tiny") == 0
    assert value(m, "twofiles_slots", model="tiny") == 2
