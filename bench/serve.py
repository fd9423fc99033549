"""Serving throughput with continuous batching: aggregate generated tokens/s and time to first token
with 1, 4 and 16 concurrent clients, against `twofiles serve` with batching (--max-seqs 16) and
without it (--max-seqs 1: one sequence at a time, the others wait in the queue).

Both servers run as separate processes on 127.0.0.1 (so the clients' HTTP and JSON work does not
share a GIL with the server); the clients are one asyncio loop of AsyncOpenAI streams. Every round
runs every (server, clients) pair once, in alternating order, so drift on a shared machine hits
all contenders alike; the table reports medians over rounds, ratios against the same server's
single-client throughput, and TTFT percentiles over all requests.

    .venv/bin/python bench/serve.py MODEL [--rounds 5] [--max-tokens 128] [--clients 1 4 16] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time


def start_server(model: str, max_seqs: int, threads: int, max_tokens: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "twofiles", "serve", model, "--port", "0", "--device", "cpu", "--max-seqs", str(max_seqs), "--max-queue", "256", "--max-output-tokens", str(max_tokens), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    proc.stdout.readline()
    summary = json.loads(proc.stdout.readline())
    return proc, summary["base_url"]


async def one_request(client, model: str, prompt: str, max_tokens: int, seed: int) -> tuple[float, int]:
    """(seconds to the first text, completion tokens) for one streamed completion."""
    t0 = time.perf_counter()
    first = None
    tokens = 0
    stream = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.8, seed=seed, stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].text:
            first = time.perf_counter() - t0
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return (first if first is not None else time.perf_counter() - t0), tokens


async def run_level(base_url: str, model: str, clients: int, requests_per_client: int, max_tokens: int, seed: int) -> dict:
    import openai

    prompts = ["ROMEO.", "To be, or not to be", "KING HENRY.", "Now is the winter of our discontent", "HAMLET.", "O, what a noble mind"]
    api = openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=600)

    async def client_loop(c: int) -> list[tuple[float, int]]:
        return [await one_request(api, model, prompts[(c + r) % len(prompts)], max_tokens, seed + 1000 * c + r) for r in range(requests_per_client)]

    t0 = time.perf_counter()
    results = await asyncio.gather(*(client_loop(c) for c in range(clients)))
    wall = time.perf_counter() - t0
    await api.close()
    flat = [x for r in results for x in r]
    tokens = sum(n for _, n in flat)
    return {"tokens": tokens, "seconds": wall, "tok_s": tokens / wall, "ttft": [t for t, _ in flat]}


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a model spec (e.g. runs/speedrun/model.safetensors)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128, help="tokens per request (the model may stop earlier)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=32, help="requests per level and round, split over the clients (at least one each)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in each server process")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from twofiles.serve.app import model_name

    name = model_name(args.model)
    servers = {}
    try:
        for label, seqs in (("batched", max(args.clients)), ("one-at-a-time", 1)):
            servers[label] = start_server(args.model, seqs, args.threads, args.max_tokens)
        for label, (_, url) in servers.items():  # warm-up: first-call costs out of the measurement
            asyncio.run(run_level(url, name, 2, 1, 8, seed=0))
        runs: dict[tuple[str, int], list[dict]] = {(s, c): [] for s in servers for c in args.clients}
        for r in range(args.rounds):
            order = [(s, c) for s in servers for c in args.clients]
            if r % 2:
                order.reverse()
            for s, c in order:
                per_client = max(1, args.requests // c)
                runs[(s, c)].append(asyncio.run(run_level(servers[s][1], name, c, per_client, args.max_tokens, seed=r)))
                print(f"round {r + 1}/{args.rounds} {s:>14} x{c:<3} {runs[(s, c)][-1]['tok_s']:8.1f} tok/s", file=sys.stderr, flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)

    rows = []
    for (s, c), rs in runs.items():
        base = statistics.median(x["tok_s"] for x in runs[(s, args.clients[0])])
        med = statistics.median(x["tok_s"] for x in rs)
        ttft = [t for x in rs for t in x["ttft"]]
        rows.append({"server": s, "clients": c, "tok_s": round(med, 1), "vs_1_client": round(med / base, 2), "ttft_p50_ms": round(percentile(ttft, 0.5) * 1000, 1), "ttft_p95_ms": round(percentile(ttft, 0.95) * 1000, 1), "requests": len(ttft)})
    print(f"| server | clients | tokens/s (median of {args.rounds}) | vs 1 client | TTFT p50 | TTFT p95 | requests |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['server']} | {row['clients']} | {row['tok_s']} | {row['vs_1_client']}x | {row['ttft_p50_ms']} ms | {row['ttft_p95_ms']} ms | {row['requests']} |")
    if args.json:
        print(json.dumps({"model": args.model, "max_tokens": args.max_tokens, "threads": args.threads, "rounds": args.rounds, "rows": rows}))


if __name__ == "__main__":
    main()
