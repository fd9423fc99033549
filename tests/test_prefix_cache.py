"""The prefix cache and chunked prefill against runs without them.

Whatever the cache holds (a shared system prompt, an earlier turn, the whole prompt, or less than
it did because blocks were evicted mid-run), and however a prompt is cut into chunks, greedy and
seeded tokens must equal `engine.generate`'s without any cache; and the cache must actually be
used (its hit counters say so), so that the equality is not the trivial one.
"""

from __future__ import annotations

import json

import pytest
import torch

from peers import require_smollm2
from tiny_models import loaded, random_model, tiny_tokenizer
from twofiles.decoder import BatchDecoder, DecodeRow
from twofiles.engine import SamplingParams, generate, generate_steps
from twofiles.prefix_cache import PrefixCache, cache_from_mb
from twofiles.scheduler import PREFIX_STATS, Scheduler


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return random_model(tok, max_seq_len=256)


def ids(n: int, seed: int, vocab: int = 300) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (n,), generator=g).tolist()


GREEDY = SamplingParams(temperature=0, max_tokens=12)
SEEDED = SamplingParams(temperature=1.0, top_k=40, seed=5, max_tokens=12)


# ---------------------------------------------------------------------------- the cache itself


def fake_kv(rows: int = 2, slots: int = 64, layers: int = 2) -> tuple[list, list]:
    g = torch.Generator().manual_seed(0)
    ks = [torch.randn(rows, 2, slots, 8, generator=g) for _ in range(layers)]
    vs = [torch.randn(rows, 2, slots, 8, generator=g) for _ in range(layers)]
    return ks, vs


def test_blocks_round_trip_and_only_full_blocks_are_kept():
    ks, vs = fake_kv()
    cache = PrefixCache(10**6, block_size=4)
    seq = ids(42, 1)
    assert cache.store(seq, ks, vs, row=0) == 10  # 42 tokens: 10 full blocks, 2 left over
    assert cache.blocks == 10 and cache.bytes == 10 * cache.block_bytes
    assert cache.block_bytes == 2 * 2 * 2 * 4 * 8 * 4  # k and v, 2 layers, 2 heads, 4 x 8 fp32
    assert len(cache.match(seq)) == 10 and len(cache.match(seq, 41)) == 10
    assert len(cache.match(seq, 39)) == 9  # a limit cuts to the blocks inside it
    assert len(cache.match(seq[:20] + [0] + seq[21:])) == 5  # a change ends the run
    assert cache.match([9, *seq]) == []  # blocks are found from the start only
    chain = cache.match(seq)
    assert cache.load(chain, ks, vs, row=1, start=2) == 32  # blocks 2..9 into slots 8..39
    for k, v in zip(ks, vs):
        assert torch.equal(k[1, :, 8:40], k[0, :, 8:40]) and torch.equal(
            v[1, :, 8:40], v[0, :, 8:40]
        )
    assert cache.store(seq, ks, vs, row=0) == 0  # already there


def test_blocks_keep_the_kv_cache_dtype():
    """bf16 caches (CUDA's inference dtype) give a bf16 pool: no silent upcast doubling the
    memory, and loads are exact."""
    ks, vs = fake_kv()
    ks, vs = [k.bfloat16() for k in ks], [v.bfloat16() for v in vs]
    cache = PrefixCache(10**6, block_size=4)
    seq = ids(16, 5)
    cache.store(seq, ks, vs, row=0)
    assert cache.block_bytes == 2 * 2 * 2 * 4 * 8 * 2  # 2 bytes an entry
    cache.load(cache.match(seq), ks, vs, row=1)
    assert all(torch.equal(k[1, :, :16], k[0, :, :16]) for k in ks + vs)


def test_lru_eviction_takes_leaves_first_and_keeps_chains_whole():
    ks, vs = fake_kv(slots=64)
    probe = PrefixCache(10**6, block_size=4)
    probe.store(ids(4, 0), ks, vs, 0)
    cache = PrefixCache(12 * probe.block_bytes, block_size=4)  # room for 12 blocks
    a, b = ids(40, 1), ids(32, 2)
    cache.store(a, ks, vs, 0)  # 10 blocks
    cache.store(b, ks, vs, 0)  # 8 more: 6 of a's must go, its last ones
    assert cache.blocks == 12 and cache.evictions == 6
    assert len(cache.match(a)) == 4 and len(cache.match(b)) == 8
    cache.match(a)  # a used last: b's leaves go first now
    cache.store(ids(8, 3), ks, vs, 0)
    assert len(cache.match(a)) == 4 and len(cache.match(b)) == 6
    assert cache.bytes <= cache.max_bytes
    huge = ids(64, 4)  # more than the cap: the first 12 blocks are kept, nothing breaks
    cache.store(huge, ks, vs, 0)
    assert len(cache.match(huge)) == 12 and cache.blocks == 12
    assert cache_from_mb(0) is None and cache_from_mb(1).max_bytes == 10**6


# ---------------------------------------------------------------------------- engine.generate_steps


def steps_with(model, prompt, params, cache):
    return [s.token for s in generate_steps(model, prompt, params, prefix_cache=cache)]


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_engine_turns_reuse_the_cache_and_equal_runs_without_it(model, params):
    cache = PrefixCache(10**7, block_size=4)
    system, q1, q2 = ids(21, 1), ids(5, 2), ids(6, 3)
    first = system + q1
    reply = steps_with(model, first, params, cache)
    assert reply == list(generate(model, first, params))
    assert cache.hit_tokens == 0 and cache.lookup_tokens == len(first)
    # the next turn: earlier prompt + reply + a new message; everything fed before is cached
    second = first + reply + q2
    assert steps_with(model, second, params, cache) == list(generate(model, second, params))
    fed = len(first) + len(reply) - 1  # the reply's last token was never fed
    assert cache.hit_tokens == fed - fed % 4
    # another conversation with the same system prompt hits its blocks
    before = cache.hit_tokens
    other = system + q2
    assert steps_with(model, other, params, cache) == list(generate(model, other, params))
    assert cache.hit_tokens - before == 20


def test_a_prompt_cached_whole_still_computes_its_last_token(model):
    cache = PrefixCache(10**7, block_size=4)
    prompt = ids(24, 7)  # six full blocks
    want = list(generate(model, prompt, GREEDY))
    assert steps_with(model, prompt, GREEDY, cache) == want
    assert steps_with(model, prompt, GREEDY, cache) == want
    assert cache.hit_tokens == 20  # five blocks: the last one holds the token whose logits we need
    assert steps_with(model, prompt[:21], GREEDY, cache) == list(
        generate(model, prompt[:21], GREEDY)
    )


def test_an_abandoned_generation_keeps_what_it_fed(model):
    cache = PrefixCache(10**7, block_size=4)
    prompt = ids(10, 8)
    gen = generate_steps(
        model, prompt, SamplingParams(temperature=0, max_tokens=30), prefix_cache=cache
    )
    got = [next(gen).token for _ in range(7)]
    gen.close()
    # prompt + 6 tokens fed = 16 tokens = 4 blocks
    assert cache.blocks == 4 and len(cache.match(prompt + got)) == 4


def test_a_prefill_cut_short_keeps_nothing_it_did_not_compute(model, monkeypatch):
    """Ctrl-C (or any error) during the prompt's forward: the cache must not keep the prompt's
    blocks, whose keys were never computed, or the next turn would load them."""
    cache = PrefixCache(10**7, block_size=4)
    prompt = ids(20, 9)

    def interrupted(self, *a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(model), "hidden_states", interrupted)
    with pytest.raises(KeyboardInterrupt):
        steps_with(model, prompt, GREEDY, cache)
    monkeypatch.undo()
    assert cache.blocks == 0
    assert steps_with(model, prompt, GREEDY, cache) == list(generate(model, prompt, GREEDY))


# ---------------------------------------------------------------------------- the batched decoder


def run_decoder(decoder: BatchDecoder, rows: list[DecodeRow], chunk: int | None) -> list[list[int]]:
    """Admit everything that fits, then alternate decode steps and prefill chunks, as the
    scheduler does."""
    waiting = list(rows)
    while waiting or decoder.rows:
        decoder.step()
        if waiting and decoder.free_slots:
            k = decoder.free_slots
            decoder.admit(waiting[:k], prefill=False)
            waiting = waiting[k:]
        decoder.prefill(chunk)
    return [r.tokens for r in rows]


@pytest.mark.parametrize("chunk", [None, 7, 16])
def test_decoder_shared_prefix_chunked_equals_generate(model, chunk):
    """Six requests with a 40-token system prompt, three slots: the prompt is computed once (the
    others wait for its blocks, then load them), rows that finish leave their blocks behind, and
    every row's tokens are generate's, greedy or seeded."""
    cache = PrefixCache(10**7, block_size=4)
    system = ids(40, 11)
    prompts = [system + ids(3 + i, 20 + i) for i in range(6)]
    params = [
        GREEDY if i % 2 else SamplingParams(temperature=0.8, seed=i, max_tokens=12)
        for i in range(6)
    ]
    rows = [DecodeRow(p, sp) for p, sp in zip(prompts, params)]
    decoder = BatchDecoder(model, max_rows=3, context=128, prefix_cache=cache)
    got = run_decoder(decoder, rows, chunk)
    assert got == [list(generate(model, p, sp)) for p, sp in zip(prompts, params)]
    assert cache.lookup_tokens == sum(map(len, prompts))
    assert cache.hit_tokens >= 5 * 40  # every row but the first loaded the system prompt
    assert [r.cached for r in rows][1:] == [40] * 5


def test_decoder_identical_prompts_follow_one_row(model, monkeypatch):
    """Identical prompts admitted together: one row computes, the others copy it, chunk by chunk."""
    cache = PrefixCache(10**7, block_size=4)
    prompt = ids(30, 12)
    tokens_in = []
    real = type(model).hidden_states

    def recording(self, idx, *a, **kw):
        tokens_in.append(tuple(idx.shape))
        return real(self, idx, *a, **kw)

    monkeypatch.setattr(type(model), "hidden_states", recording)
    rows = [
        DecodeRow(prompt, SamplingParams(temperature=1.0, seed=s, max_tokens=6)) for s in range(3)
    ]
    decoder = BatchDecoder(model, max_rows=3, context=64, prefix_cache=cache)
    decoder.admit(rows, prefill=False)
    while decoder.prefilling:
        decoder.prefill(8)
    assert tokens_in == [(1, 8), (1, 8), (1, 8), (1, 6)]
    while decoder.rows:
        decoder.step()
    monkeypatch.undo()
    for r in rows:
        assert r.tokens == list(generate(model, prompt, r.params))


def test_chunked_prefill_interleaves_with_decode_steps(model):
    """A long newcomer is prefilled a chunk at a time, and the running row gets a token between
    any two chunks: it is not stalled for the whole prompt."""
    decoder = BatchDecoder(model, max_rows=2, context=256)
    short = DecodeRow(ids(5, 13), SamplingParams(temperature=0, max_tokens=40))
    long = DecodeRow(ids(150, 14), GREEDY)
    decoder.admit([short])
    decoder.admit([long], prefill=False)
    timeline = []
    while not long.tokens:
        decoder.step()
        decoder.prefill(32)
        timeline.append((len(short.tokens), long.length))
    assert [n for _, n in timeline] == [32, 64, 96, 128, 150]
    assert [t for t, _ in timeline] == [2, 3, 4, 5, 6]
    while decoder.rows:
        decoder.step()
    assert short.tokens == list(generate(model, short.prompt, short.params))
    assert long.tokens == list(generate(model, long.prompt, GREEDY))


# ---------------------------------------------------------------------------- the scheduler


def serve_all(sched: Scheduler, reqs):
    handles = [sched.submit("m", p, sp) for p, sp in reqs]
    for h in handles:
        assert h.wait(60) and h.finish_reason in ("stop", "length"), h.error
    return [h.tokens for h in handles]


def test_scheduler_with_a_cache_small_enough_to_evict_mid_run(model, tok):
    """Chats of three turns sharing a system prompt, through the scheduler with a prefix cache of
    a few blocks (blocks are evicted while requests run) and small prefill chunks: every reply
    equals generate's without any cache; the counters add up."""
    system = ids(40, 30)
    with Scheduler(
        {"m": loaded(model, tok)},
        max_seqs=3,
        max_context=200,
        prefix_cache_mb=0.04,
        prefill_chunk=24,
    ) as sched:
        cache = sched.engines["m"].prefix_cache
        assert cache is not None
        chats = [system + ids(4, 40 + i) for i in range(4)]
        lookups = 0
        for turn in range(3):
            params = [
                SamplingParams(temperature=0.9, seed=10 * turn + i, max_tokens=8)
                if i % 2
                else GREEDY
                for i in range(len(chats))
            ]
            got = serve_all(sched, list(zip(chats, params)))
            assert got == [
                list(generate(model, c, p, tokenizer=tok)) for c, p in zip(chats, params)
            ]
            lookups += sum(map(len, chats))
            chats = [c + r + ids(3, 100 * turn + i) for i, (c, r) in enumerate(zip(chats, got))]
        stats = sched.stats()["m"]
    assert set(PREFIX_STATS) <= set(stats)
    assert stats["prefix_lookup_tokens"] == lookups
    assert stats["prefix_hit_tokens"] > 0 and stats["prefix_evictions"] > 0
    # a block: k and v, 2 layers, 2 kv heads, 16 tokens, head_dim 8, fp32 = 4 KiB; 9 fit
    assert cache.block_bytes == 4096 and 0 < stats["prefix_cache_blocks"] <= 9
    assert stats["prefix_cache_bytes"] == stats["prefix_cache_blocks"] * 4096


@pytest.mark.parametrize("n, hit", [(32, 16), (33, 32)])
def test_scheduler_prompt_cached_whole_recomputes_its_last_token(model, tok, n, hit):
    """The same prompt twice, one after the other: the second loads all of it the cache holds
    but its last token (a prompt of two full blocks loads one; of two blocks + 1 token, both)."""
    prompt = ids(n, 70)
    want = list(generate(model, prompt, SEEDED, tokenizer=tok))
    with Scheduler({"m": loaded(model, tok)}) as sched:
        assert serve_all(sched, [(prompt, SEEDED)]) == [want]
        before = sched.stats()["m"]["prefix_hit_tokens"]
        assert serve_all(sched, [(prompt, SEEDED)]) == [want]
        assert sched.stats()["m"]["prefix_hit_tokens"] - before == hit


def test_scheduler_cache_off_counts_nothing(model, tok):
    with Scheduler({"m": loaded(model, tok)}, prefix_cache_mb=0, prefill_chunk=0) as sched:
        prompt = ids(20, 50)
        assert (
            serve_all(sched, [(prompt, GREEDY)] * 2) == [list(generate(model, prompt, GREEDY))] * 2
        )
        assert all(sched.stats()["m"][k] == 0 for k in PREFIX_STATS)


def test_a_request_cancelled_mid_prefill_frees_its_slot_and_keeps_its_blocks(model, tok):
    """Driven by hand (no worker thread): a long prompt is cancelled between two chunks; the next
    step ends it, its computed blocks stay cached, and a request with the same prompt loads them
    and generates what generate does."""
    from twofiles.scheduler import BatchEngine, RequestHandle

    engine = BatchEngine(loaded(model, tok), max_seqs=2, prefix_cache_mb=1, prefill_chunk=32)
    prompt = ids(100, 60)
    h = RequestHandle("m", prompt, GREEDY, None)
    engine.admit([h])
    engine.prefill()
    engine.prefill()
    assert engine.rows[0].length == 64 and not h.tokens
    h.cancel()
    engine.step()
    engine.flush()
    assert h.finish_reason == "cancelled" and engine.free_slots == 2
    assert engine.prefix_cache is not None and engine.prefix_cache.blocks == 4
    again = RequestHandle("m", prompt, GREEDY, None)
    engine.admit([again])
    engine.prefill()
    assert engine.rows[0].cached == 64 and engine.rows[0].length == 64 + 32
    while engine.rows:
        engine.step()
        engine.prefill()
    assert again.tokens == list(generate(model, prompt, GREEDY, tokenizer=tok))


def test_http_completions_equal_with_and_without_the_cache(model, tok):
    """Through the server a user runs (HTTP in, text out): completions of prompts sharing a long
    prefix, greedy and seeded, with a prefix cache and small prefill chunks and without either;
    the same texts, and /health says the cache served the shared prefix."""
    import http.client

    from live_server import UvicornThread
    from twofiles.serve.app import create_app
    from twofiles.serve.settings import ServeSettings

    shared = "whether tis nobler in the mind to suffer " * 4  # 38 tokens: two full blocks
    bodies = [
        {"model": "m", "prompt": shared + end, "max_tokens": 8, **sampling}
        for end in ("the slings", "and arrows", "of outrageous fortune")
        for sampling in ({"temperature": 0}, {"temperature": 1.0, "seed": 7})
    ]

    def call(port: int, method: str, path: str, body: dict | None = None) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            data = None if body is None else json.dumps(body)
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200
            return json.loads(resp.read())
        finally:
            conn.close()

    texts, hits = {}, {}
    for name, mb, chunk in (("off", 0, 0), ("on", 1, 8)):
        settings = ServeSettings(max_seqs=2, prefix_cache_mb=mb, prefill_chunk=chunk)
        with UvicornThread(create_app({"m": loaded(model, tok)}, settings)) as server:
            replies = [call(server.port, "POST", "/v1/completions", b) for b in bodies]
            texts[name] = [r["choices"][0]["text"] for r in replies]
            hits[name] = call(server.port, "GET", "/health")["models"]["m"]["prefix_hit_tokens"]
    assert texts["on"] == texts["off"] and any(texts["off"])
    assert hits["off"] == 0 and hits["on"] >= 5 * 32  # every request after the first


def test_serve_settings_reach_the_scheduler(model, tok):
    from twofiles.cli import build_parser
    from twofiles.serve.app import create_app
    from twofiles.serve.settings import ServeSettings

    app = create_app({"m": loaded(model, tok)}, ServeSettings(prefix_cache_mb=2, prefill_chunk=64))
    engine = app.state.scheduler.engines["m"]
    assert engine.prefix_cache.max_bytes == 2 * 10**6 and engine.prefill_chunk == 64
    app = create_app({"m": loaded(model, tok)}, ServeSettings(prefix_cache_mb=0, prefill_chunk=0))
    engine = app.state.scheduler.engines["m"]
    assert engine.prefix_cache is None and engine.prefill_chunk is None
    with pytest.raises(ValueError, match="prefix_cache_mb"):
        ServeSettings(prefix_cache_mb=-1)
    args = build_parser().parse_args(
        ["serve", "m", "--prefix-cache-mb", "64", "--prefill-chunk", "128"]
    )
    assert (args.prefix_cache_mb, args.prefill_chunk) == (64, 128)


# ---------------------------------------------------------------------------- SmolLM2, for real


def smollm2():
    from twofiles.formats.resolve import resolve_model

    require_smollm2()
    return resolve_model("smollm2")


@pytest.mark.slow
def test_smollm2_server_with_and_without_the_cache():
    """The served model with its chat template: a shared system prompt, greedy and seeded, with a
    cache so small it evicts mid-run (3 MB: four of its 737 KB blocks) and prefill chunks of one
    block, and without either; the same replies."""
    from twofiles.chat import ChatFormat, Message

    smol = smollm2()
    fmt = ChatFormat.for_model(smol)
    system = Message("system", "You are a helpful assistant who answers briefly. " * 6)
    questions = ["What is the capital of France?", "Name a colour.", "What is 2+3?", "Say hi."]
    prompts = [fmt.prompt_ids([system, Message("user", q)]) for q in questions]
    params = [
        SamplingParams(temperature=0, max_tokens=10, stop_token_ids=fmt.stop_token_ids),
        SamplingParams(temperature=0.8, seed=3, max_tokens=10, stop_token_ids=fmt.stop_token_ids),
    ] * 2
    runs = {}
    for name, mb, chunk in (("off", 0, 0), ("tiny", 3, 16)):
        with Scheduler(
            {"m": smol}, max_seqs=2, max_context=256, prefix_cache_mb=mb, prefill_chunk=chunk
        ) as sched:
            runs[name] = serve_all(sched, list(zip(prompts, params)))
            stats = sched.stats()["m"]
    # the system prompt's first blocks (parents outlive children) serve every later request
    assert stats["prefix_hit_tokens"] >= 3 * 16 and stats["prefix_evictions"] > 0
    assert stats["prefix_cache_blocks"] == 4
    assert runs["tiny"] == runs["off"]


@pytest.mark.slow
def test_smollm2_chat_cli_reuses_earlier_turns(capsys, monkeypatch):
    """`twofiles chat` on SmolLM2: with the cache each turn prefills only its new tokens (the
    summary says how many were reused), and the replies are those of a run without it."""
    import io

    from twofiles.cli import main

    smollm2()
    script = "What is the capital of France?\nAnd of Italy?\nAnd of Spain?\n"
    summaries = {}
    for mb in ("512", "0"):
        monkeypatch.setattr("sys.stdin", io.StringIO(script))
        argv = ["chat", "smollm2", "--temperature", "0", "--max-tokens", "20", "--json"]
        assert main([*argv, "--prefix-cache-mb", mb]) == 0
        out, err = capsys.readouterr()
        summaries[mb] = json.loads(out.splitlines()[-1])
    on, off = summaries["512"], summaries["0"]
    assert on["replies"] == off["replies"] and len(on["replies"]) == 3
    assert off["prompt_tokens_reused"] == 0 and on["prompt_tokens"] == off["prompt_tokens"]
    # turns 2 and 3 reuse (nearly) all of the turn before: at least half the prompt tokens
    assert on["prompt_tokens_reused"] >= on["prompt_tokens"] // 2
    assert "prompt tokens reused from earlier turns" in err
