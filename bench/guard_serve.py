"""What the guards cost on `twofiles serve`: added latency per chat request against no guard, in
one run.

One server process (`twofiles serve MODEL`, no guard of its own) answers every request; each
request asks for its guards through the `guard` field, so every combination runs on the same
server, model and warm caches. Each round sends one request per combination, in an order
rotated every round, so drift on a shared machine hits all of them alike. Replies are greedy and
short (--max-tokens), so a request is mostly the model's time and the guards' share shows.

Reported per combination: the median latency of a non-streamed request, the median of each
round's difference against the same round's unguarded request (the least disturbed by load from
elsewhere), and for streamed requests the time to the first visible text (the output filter
holds back a tail that could still grow into a secret or a link). The guards' own work is also
timed in-process, without HTTP or a model: µs per input scan and per output-filtered reply.

    .venv/bin/python bench/guard_serve.py [MODEL] [--rounds 15] [--max-tokens 16] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

PROMPTS = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "Give me a word that rhymes with cat.",
    "How many legs does a spider have?",
    "What do bees make?",
]
COMBOS = {
    "none": "none",
    "input": "input",
    "input+classifier": "input,classifier",
    "output": "output",
    "all": "all",
}


def start_server(model: str, threads: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "twofiles", "serve", model, "--port", "0", "--device", "cpu"]
    cmd += ["--threads", str(threads), "--no-personas", "--json"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    proc.stdout.readline()
    return proc, json.loads(proc.stdout.readline())["base_url"]


def request(base: str, body: dict) -> bytes:
    req = urllib.request.Request(
        base + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        return r.read()


def timed(base: str, body: dict) -> float:
    t0 = time.perf_counter()
    request(base, body)
    return time.perf_counter() - t0


def first_text(base: str, body: dict) -> float:
    """Seconds to the first SSE chunk with visible content."""
    req = urllib.request.Request(
        base + "/chat/completions",
        data=json.dumps({**body, "stream": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    t0 = time.perf_counter()
    seen = None
    with urllib.request.urlopen(req, timeout=300) as r:
        for line in r:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            choices = chunk.get("choices") or []
            if seen is None and choices and choices[0].get("delta", {}).get("content"):
                seen = time.perf_counter() - t0
    return seen if seen is not None else time.perf_counter() - t0


def in_process(repeats: int = 2000) -> dict[str, float]:
    """µs per call of the guards' own work: input scan of a prompt, output filter of a reply."""
    from twofiles.guard import GUARDS, Guard, GuardConfig

    reply = "Paris is the capital of France, see https://en.wikipedia.org/wiki/Paris for more. " * 3
    out = {}
    for name, guards in (("input", {"input"}), ("all", set(GUARDS))):
        guard = Guard.from_config(GuardConfig(guards=frozenset(guards), secrets=("hunter2",)))
        t0 = time.perf_counter()
        for i in range(repeats):
            guard.scan(PROMPTS[i % len(PROMPTS)])
        out[f"scan[{name}]"] = (time.perf_counter() - t0) / repeats * 1e6
    t0 = time.perf_counter()
    for _ in range(repeats):
        f = guard.output_filter()
        f.push(reply)
        f.finish()
    out["output filter (250-char reply)"] = (time.perf_counter() - t0) / repeats * 1e6
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default="smollm2")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    proc, base = start_server(args.model, args.threads)
    try:
        names = list(COMBOS)
        with urllib.request.urlopen(base + "/models") as r:
            model = json.loads(r.read())["data"][0]["id"]

        def body(name: str, prompt: str) -> dict:
            return {
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": args.max_tokens,
                "temperature": 0,
                "guard": COMBOS[name],
            }

        for name in names:  # warm-up: first-use costs (imports, the prefix cache) out of the way
            timed(base, body(name, PROMPTS[0]))
        latency: dict[str, list[float]] = {n: [] for n in names}
        stream: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.rounds):
            prompt = PROMPTS[r % len(PROMPTS)]
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                latency[name].append(timed(base, body(name, prompt)))
                stream[name].append(first_text(base, body(name, prompt)))
    finally:
        proc.terminate()
        proc.wait(30)

    def ms(x: float) -> float:
        return round(1000 * x, 1)

    rows = []
    for name in names:
        paired = [a - b for a, b in zip(latency[name], latency["none"])]
        rows.append(
            {
                "guards": name,
                "median_ms": ms(statistics.median(latency[name])),
                "added_ms_paired_median": ms(statistics.median(paired)),
                "stream_first_text_ms": ms(statistics.median(stream[name])),
            }
        )
    result = {
        "model": args.model,
        "rounds": args.rounds,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "rows": rows,
        "in_process_us": {k: round(v, 1) for k, v in in_process().items()},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.model}, {args.rounds} rounds, max_tokens {args.max_tokens}")
    print(f"{'guards':18} {'median ms':>10} {'added ms':>9} {'stream 1st text ms':>18}")
    for row in rows:
        print(
            f"{row['guards']:18} {row['median_ms']:>10} {row['added_ms_paired_median']:>9} "
            f"{row['stream_first_text_ms']:>18}"
        )
    for k, v in result["in_process_us"].items():
        print(f"in-process {k}: {v} µs")


if __name__ == "__main__":
    main()
