"""Time to first token with and without the prefix cache, in one run, through the server's scheduler.

(a) shared system prompt: `--clients` requests (16) submitted at once, each a ~1,000-token system
    prompt (the same for all) + its own short question, rendered by the model's chat template.
    "cold": the cache starts empty (the first request computes the system prompt, the others
    wait for its blocks and load them); "warm": one earlier request has left it in the cache, as
    on a server that has been up a while. Without the cache, cold and warm are the same run.
(b) a `--turns`-turn chat (10): each turn's prompt is the whole conversation so far (previous
    prompt + reply + the new question), greedy; TTFT per turn.
(c) chunked prefill: one request decoding when a `--long-tokens` (1,500) prompt arrives; the
    running request's longest gap between two tokens with prefill chunks of `--prefill-chunk`
    tokens and with whole prompts at once (chunk 0), the prefix cache off.

Both go through `twofiles.scheduler.Scheduler` (what `twofiles serve` runs: continuous batching,
chunked prefill of `--prefill-chunk` tokens, `--max-seqs` slots) with `--prefix-cache-mb` on and 0.
The replies with and without the cache are compared too (greedy: they must be equal).

    .venv/bin/python bench/prefix_cache.py [--model smollm2] [--threads 1] [--clients 16] [--turns 10] [--json]
    .venv/bin/python bench/prefix_cache.py --parts chat --chat-max-tokens 128   # (b) alone, longer replies
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time

import torch

from twofiles.chat import ChatFormat, Message
from twofiles.engine import SamplingParams
from twofiles.formats.resolve import resolve_model
from twofiles.quant import prepare_for_inference
from twofiles.scheduler import Scheduler

SYSTEM_SENTENCE = (
    "You are a careful assistant for a public library: answer questions about opening hours, "
    "loans, renewals, fines, rooms and events politely, briefly and only from these rules. "
)
QUESTIONS = [
    "How long can I keep a book?",
    "Can I renew a loan online?",
    "What is the fine for a late DVD?",
    "Is there a quiet room?",
    "When do you open on Sunday?",
    "Can children borrow e-books?",
    "How do I book a meeting room?",
    "Do you print in colour?",
    "Can I return books at another branch?",
    "Is the library wheelchair accessible?",
    "How many books can I borrow at once?",
    "Do you have language courses?",
    "Can I donate old books?",
    "Is there free Wi-Fi?",
    "What do I need to get a card?",
    "Are pets allowed inside?",
]


def system_prompt(fmt: ChatFormat, tokens: int) -> str:
    text = ""
    while len(fmt.prompt_ids([Message("system", text)])) < tokens:
        text += SYSTEM_SENTENCE
    return text


def ttft(handles) -> list[float]:
    for h in handles:
        assert h.wait(600) and h.finish_reason in ("stop", "length"), h.error
    return [h.first_token_at - h.submitted_at for h in handles]


def shared_prompt(loaded, fmt, args, mb: float) -> dict:
    system = Message("system", system_prompt(fmt, args.system_tokens))
    prompts = [
        fmt.prompt_ids([system, Message("user", QUESTIONS[i % len(QUESTIONS)])])
        for i in range(args.clients)
    ]
    params = SamplingParams(
        temperature=0, max_tokens=args.max_tokens, stop_token_ids=fmt.stop_token_ids
    )
    out = {"prompt_tokens": statistics.mean(map(len, prompts))}
    for phase in ("cold", "warm"):
        with Scheduler(
            {"m": loaded},
            max_seqs=args.max_seqs,
            max_context=2048,
            prefix_cache_mb=mb,
            prefill_chunk=args.prefill_chunk,
        ) as sched:
            if phase == "warm":  # an earlier visitor with the same system prompt
                warmup = fmt.prompt_ids([system, Message("user", "Hello!")])
                ttft([sched.submit("m", warmup, params)])
            t0 = time.perf_counter()
            handles = [sched.submit("m", p, params) for p in prompts]
            times = ttft(handles)
            wall = time.perf_counter() - t0
            stats = sched.stats()["m"]
        out[phase] = {
            "ttft_mean_s": statistics.mean(times),
            "ttft_median_s": statistics.median(times),
            "ttft_max_s": max(times),
            "wall_s": wall,
            "hit_tokens": stats["prefix_hit_tokens"],
            "replies": [h.tokens for h in handles],
        }
    return out


def chat(loaded, fmt, args, mb: float) -> dict:
    params = SamplingParams(
        temperature=0,
        max_tokens=args.chat_max_tokens or args.max_tokens,
        stop_token_ids=fmt.stop_token_ids,
    )
    messages = [Message("system", "You are a helpful assistant.")]
    times, prompt_lens, replies = [], [], []
    with Scheduler(
        {"m": loaded},
        max_seqs=args.max_seqs,
        max_context=2048,
        prefix_cache_mb=mb,
        prefill_chunk=args.prefill_chunk,
    ) as sched:
        for turn in range(args.turns):
            messages.append(Message("user", QUESTIONS[turn % len(QUESTIONS)]))
            ids = fmt.prompt_ids(messages)
            h = sched.submit("m", ids, params)
            times += ttft([h])
            prompt_lens.append(len(ids))
            replies.append(h.tokens)
            text = loaded.tokenizer.decode([t for t in h.tokens if t not in fmt.stop_token_ids])
            messages.append(Message("assistant", text))
        stats = sched.stats()["m"]
    return {
        "ttft_s": times,
        "ttft_mean_s": statistics.mean(times),
        "ttft_last_s": times[-1],
        "prompt_tokens": prompt_lens,
        "hit_tokens": stats["prefix_hit_tokens"],
        "replies": replies,
    }


def stall(loaded, fmt, args, chunk: int) -> dict:
    running = fmt.prompt_ids([Message("user", "Tell me a long story about a lighthouse keeper.")])
    long = fmt.prompt_ids([Message("user", system_prompt(fmt, args.long_tokens))])
    greedy = SamplingParams(temperature=0, max_tokens=48)
    with Scheduler(
        {"m": loaded},
        max_seqs=args.max_seqs,
        max_context=2048,
        prefix_cache_mb=0,
        prefill_chunk=chunk,
    ) as sched:
        h = sched.submit("m", running, greedy)
        times, newcomer = [], None
        for _event in h:
            times.append(time.perf_counter())
            if len(times) == 8:
                newcomer = sched.submit("m", long, SamplingParams(temperature=0, max_tokens=4))
        assert newcomer is not None and newcomer.wait(600)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return {
        "tokens": len(times),
        "gap_median_s": statistics.median(gaps),
        "gap_max_s": max(gaps),
        "newcomer_ttft_s": newcomer.first_token_at - newcomer.submitted_at,
        "long_tokens": len(long),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--system-tokens", type=int, default=1000)
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--max-seqs", type=int, default=8)
    ap.add_argument("--prefill-chunk", type=int, default=512)
    ap.add_argument("--prefix-cache-mb", type=float, default=512)
    ap.add_argument("--long-tokens", type=int, default=1500)
    ap.add_argument(
        "--chat-max-tokens",
        type=int,
        default=None,
        help="reply length of (b)'s turns (default --max-tokens): longer replies, longer history",
    )
    ap.add_argument(
        "--parts", default="shared,chat,stall", help="which of (a) shared, (b) chat, (c) stall"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if not parts or not parts <= {"shared", "chat", "stall"}:
        ap.error(f"--parts {args.parts}: a comma-separated subset of shared, chat, stall")

    loaded = resolve_model(args.model, device=torch.device("cpu"))
    setup = prepare_for_inference(loaded, threads=args.threads)
    fmt = ChatFormat.for_model(loaded)
    results: dict = {
        "model": args.model,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "setup": setup.reasons,
        "args": vars(args),
    }
    # off first, then on: the same warm process for both (allocator, oneDNN kernels)
    if "shared" in parts:
        results["shared_off"] = shared_prompt(loaded, fmt, args, 0)
        results["shared_on"] = shared_prompt(loaded, fmt, args, args.prefix_cache_mb)
    if "chat" in parts:
        results["chat_off"] = chat(loaded, fmt, args, 0)
        results["chat_on"] = chat(loaded, fmt, args, args.prefix_cache_mb)
    if "stall" in parts:
        results["stall_whole"] = stall(loaded, fmt, args, 0)
        results["stall_chunked"] = stall(loaded, fmt, args, args.prefill_chunk)
    print(
        f"{args.model}, {results['threads']} threads, {args.max_seqs} slots, prefill chunk "
        f"{args.prefill_chunk}, max_tokens {args.max_tokens}"
    )
    equal: dict[str, bool] = {}
    if "shared" in parts:
        report_shared(results, args)
        off, on = results["shared_off"], results["shared_on"]
        equal["shared"] = all(off[p]["replies"] == on[p]["replies"] for p in ("cold", "warm"))
        for r in (off["cold"], off["warm"], on["cold"], on["warm"]):
            r.pop("replies")
    if "chat" in parts:
        report_chat(results, args)
        equal["chat"] = results["chat_off"].pop("replies") == results["chat_on"].pop("replies")
    if "stall" in parts:
        report_stall(results, args)
    print(f"greedy replies equal with and without the cache: {equal}")
    if args.json:
        results["replies_equal"] = equal
        print(json.dumps(results))


def report_shared(results: dict, args: argparse.Namespace) -> None:
    off, on = results["shared_off"], results["shared_on"]
    print(
        f"(a) {args.clients} clients, shared system prompt, ~{off['prompt_tokens']:.0f} prompt tokens each"
    )
    print("    phase  cache  TTFT mean  median    max   wall  hit tokens")
    for phase in ("cold", "warm"):
        for name, r in (("off", off[phase]), ("on", on[phase])):
            print(
                f"    {phase:5}  {name:5}  {r['ttft_mean_s']:8.3f}s {r['ttft_median_s']:7.3f}s "
                f"{r['ttft_max_s']:6.2f}s {r['wall_s']:6.2f}s  {r['hit_tokens']}"
            )
        print(
            f"    {phase}: mean TTFT {off[phase]['ttft_mean_s'] / on[phase]['ttft_mean_s']:.1f}x lower with the cache"
        )


def report_chat(results: dict, args: argparse.Namespace) -> None:
    c_off, c_on = results["chat_off"], results["chat_on"]
    print(
        f"(b) a {args.turns}-turn chat, replies of at most {args.chat_max_tokens or args.max_tokens}"
        f" tokens, prompt {c_off['prompt_tokens'][0]} -> {c_off['prompt_tokens'][-1]} tokens"
    )
    print("    turn  " + " ".join(f"{i + 1:6}" for i in range(args.turns)))
    for name, r in (("off", c_off), ("on", c_on)):
        print(f"    {name:4}  " + " ".join(f"{t * 1000:5.0f}ms"[-6:] for t in r["ttft_s"]))
    print(
        f"    mean TTFT {c_off['ttft_mean_s'] * 1000:.0f} ms -> {c_on['ttft_mean_s'] * 1000:.0f} ms "
        f"({c_off['ttft_mean_s'] / c_on['ttft_mean_s']:.1f}x); last turn "
        f"{c_off['ttft_last_s'] * 1000:.0f} ms -> {c_on['ttft_last_s'] * 1000:.0f} ms "
        f"({c_off['ttft_last_s'] / c_on['ttft_last_s']:.1f}x); {c_on['hit_tokens']} of "
        f"{sum(c_on['prompt_tokens'])} prompt tokens from the cache"
    )


def report_stall(results: dict, args: argparse.Namespace) -> None:
    w, c = results["stall_whole"], results["stall_chunked"]
    print(
        f"(c) a {w['long_tokens']}-token prompt arrives while one request decodes ({w['tokens']} tokens)"
    )
    for name, r in ((f"chunks of {args.prefill_chunk}", c), ("whole prompt", w)):
        print(
            f"    {name:16} running request: median gap {r['gap_median_s'] * 1000:.0f} ms, "
            f"longest {r['gap_max_s'] * 1000:.0f} ms; newcomer TTFT {r['newcomer_ttft_s']:.2f}s"
        )


if __name__ == "__main__":
    main()
