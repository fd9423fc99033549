"""Serving throughput with continuous batching: aggregate generated tokens/s and time to first token
with 1, 4 and 16 concurrent clients, against `twofiles serve` with batching (--max-seqs 16) and
without it (--max-seqs 1: one sequence at a time, the others wait in the queue).

Both servers run as separate processes on 127.0.0.1 (so the clients' HTTP and JSON work does not
share a GIL with the server); the clients are one asyncio loop of AsyncOpenAI streams. Every round
runs every (server, clients) pair once, in alternating order, so drift on a shared machine hits
all contenders alike; the table reports medians over rounds, ratios against the same server's
single-client throughput (of the medians, and the median of each round's own ratio, which is the
least disturbed by load from elsewhere), the server process's CPU time per generated token (all
its threads; it depends little on how busy the machine is), and TTFT percentiles over all requests.

    .venv/bin/python bench/serve.py MODEL [--rounds 5] [--seconds 15] [--max-tokens 128] [--clients 1 4 16] [--threads 1] [--client raw|openai] [--json]
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


def start_server(
    model: str, max_seqs: int, threads: int, max_tokens: int
) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [
        sys.executable,
        "-m",
        "twofiles",
        "serve",
        model,
        "--port",
        "0",
        "--device",
        "cpu",
        "--max-seqs",
        str(max_seqs),
        "--max-queue",
        "256",
        "--max-output-tokens",
        str(max_tokens),
        "--json",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    proc.stdout.readline()
    summary = json.loads(proc.stdout.readline())
    return proc, summary["base_url"]


async def raw_request(
    base_url: str, model: str, prompt: str, max_tokens: int, seed: int
) -> tuple[float, int]:
    """The same request as one_request, over a bare asyncio connection: the client's own CPU
    cost per chunk is a few microseconds, so on a small machine the clients do not starve the
    server they measure (the openai client parses every chunk into pydantic models)."""
    from urllib.parse import urlsplit

    url = urlsplit(base_url)
    body = json.dumps(
        {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.8,
            "seed": seed,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(
        f"POST {url.path}/completions HTTP/1.1\r\nHost: {url.hostname}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"server answered {status!r}")
    first, tokens = None, 0
    while line := await reader.readline():
        if not line.startswith(b"data: "):
            continue
        if line.startswith(b"data: [DONE]"):
            break
        if (
            first is None
            and b'"text":"' in line.replace(b" ", b"")
            and b'"text":""' not in line.replace(b" ", b"")
        ):
            first = time.perf_counter() - t0
        if b'"usage"' in line:
            tokens = json.loads(line[6:])["usage"]["completion_tokens"]
    writer.close()
    return (first if first is not None else time.perf_counter() - t0), tokens


async def one_request(
    client, model: str, prompt: str, max_tokens: int, seed: int
) -> tuple[float, int]:
    """(seconds to the first text, completion tokens) for one streamed completion."""
    t0 = time.perf_counter()
    first = None
    tokens = 0
    stream = await client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=0.8,
        seed=seed,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].text:
            first = time.perf_counter() - t0
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return (first if first is not None else time.perf_counter() - t0), tokens


async def run_level(
    base_url: str,
    model: str,
    clients: int,
    seconds: float,
    max_tokens: int,
    seed: int,
    client: str = "raw",
) -> dict:
    """`clients` clients each send requests back to back until `seconds` have passed (none starts
    after); throughput is all their tokens over the time to the last reply. A long window keeps
    the ramp-up and the final drain, when the batch is no longer full, a small share."""
    import openai

    prompts = [
        "ROMEO.",
        "To be, or not to be",
        "KING HENRY.",
        "Now is the winter of our discontent",
        "HAMLET.",
        "O, what a noble mind",
    ]
    api = openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=600)

    async def request(c: int, r: int) -> tuple[float, int]:
        args = (model, prompts[(c + r) % len(prompts)], max_tokens, seed + 1000 * c + r)
        return await (raw_request(base_url, *args) if client == "raw" else one_request(api, *args))

    async def client_loop(c: int) -> list[tuple[float, int]]:
        out, r = [], 0
        while time.perf_counter() < t0 + seconds:
            out.append(await request(c, r))
            r += 1
        return out

    t0 = time.perf_counter()
    results = await asyncio.gather(*(client_loop(c) for c in range(clients)))
    wall = time.perf_counter() - t0
    await api.close()
    flat = [x for r in results for x in r]
    tokens = sum(n for _, n in flat)
    return {"tokens": tokens, "seconds": wall, "tok_s": tokens / wall, "ttft": [t for t, _ in flat]}


def cpu_seconds(pid: int) -> float:
    """CPU time the server process has used (all threads): unlike wall time, it hardly depends
    on what else the machine is running."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a model spec (e.g. runs/speedrun/model.safetensors)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--max-tokens",
        type=int,
        default=128,
        help="tokens per request (the model may stop earlier)",
    )
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument(
        "--seconds",
        type=float,
        default=15.0,
        help="how long the clients keep sending requests, per level and round",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each server process")
    ap.add_argument(
        "--client",
        choices=["raw", "openai"],
        default="raw",
        help="raw: bare asyncio HTTP (cheap); openai: the official AsyncOpenAI client",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from twofiles.serve.app import model_name

    name = model_name(args.model)
    servers = {}
    try:
        for label, seqs in (("batched", max(args.clients)), ("one-at-a-time", 1)):
            servers[label] = start_server(args.model, seqs, args.threads, args.max_tokens)
        for _, url in servers.values():  # warm-up: first-call costs out of the measurement
            asyncio.run(run_level(url, name, 2, 0.5, 8, seed=0))
        runs: dict[tuple[str, int], list[dict]] = {
            (s, c): [] for s in servers for c in args.clients
        }
        for r in range(args.rounds):
            order = [(s, c) for s in servers for c in args.clients]
            if r % 2:
                order.reverse()
            for s, c in order:
                cpu0 = cpu_seconds(servers[s][0].pid)
                result = asyncio.run(
                    run_level(
                        servers[s][1],
                        name,
                        c,
                        args.seconds,
                        args.max_tokens,
                        seed=r,
                        client=args.client,
                    )
                )
                result["server_cpu_ms_per_token"] = (
                    (cpu_seconds(servers[s][0].pid) - cpu0) * 1000 / max(1, result["tokens"])
                )
                runs[(s, c)].append(result)
                print(
                    f"round {r + 1}/{args.rounds} {s:>14} x{c:<3} {runs[(s, c)][-1]['tok_s']:8.1f} tok/s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)

    rows = []
    for (s, c), rs in runs.items():
        base = statistics.median(x["tok_s"] for x in runs[(s, args.clients[0])])
        med = statistics.median(x["tok_s"] for x in rs)
        ttft = [t for x in rs for t in x["ttft"]]
        cpu = statistics.median(x["server_cpu_ms_per_token"] for x in rs)
        # the same round's 1-client run was adjacent in time, so this ratio is the least disturbed by load from elsewhere
        paired = statistics.median(
            x["tok_s"] / one["tok_s"] for x, one in zip(rs, runs[(s, args.clients[0])])
        )
        rows.append({
            "server": s, "clients": c, "tok_s": round(med, 1), "vs_1_client": round(med / base, 2), "vs_1_client_paired": round(paired, 2),
            "server_cpu_ms_per_token": round(cpu, 3), "ttft_p50_ms": round(percentile(ttft, 0.5) * 1000, 1),
            "ttft_p95_ms": round(percentile(ttft, 0.95) * 1000, 1), "requests": len(ttft), "rounds_tok_s": [round(x["tok_s"], 1) for x in rs],
        })  # fmt: skip
    print(
        f"| server | clients | tokens/s (median of {args.rounds}) | vs 1 client | same-round ratio (median) | server CPU ms/token | TTFT p50 | TTFT p95 | requests |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['server']} | {row['clients']} | {row['tok_s']} | {row['vs_1_client']}x | {row['vs_1_client_paired']}x | {row['server_cpu_ms_per_token']} | {row['ttft_p50_ms']} ms | {row['ttft_p95_ms']} ms | {row['requests']} |"
        )
    if args.json:
        print(
            json.dumps(
                {
                    "model": args.model,
                    "max_tokens": args.max_tokens,
                    "threads": args.threads,
                    "rounds": args.rounds,
                    "client": args.client,
                    "rows": rows,
                }
            )
        )


if __name__ == "__main__":
    main()
