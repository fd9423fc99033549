"""Continuous batching against the unbatched engine.

Whatever shares the batch (rows of other lengths, rows that join mid-generation, rows that finish
or are cancelled and hand their slot on), each request's tokens must equal engine.generate's for
the same prompt and params: greedy, and seeded sampling too (each row has its own generator).
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from tiny_models import loaded, random_model, tiny_tokenizer
from twofiles.engine import PromptTooLongError, SamplingParams, generate, generate_steps
from twofiles.errors import TwofilesError
from twofiles.scheduler import PREFIX_STATS, QueueFullError, Scheduler


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return random_model(tok)


def prompts(tok, n: int) -> list[list[int]]:
    words = [
        "to",
        "be",
        "or",
        "not",
        "to",
        "be",
        "that",
        "is",
        "the",
        "question",
        "whether",
        "tis",
        "nobler",
        "in",
        "the",
        "mind",
    ]
    return [
        [tok.bos_id] + tok.encode(" ".join(words[i % 5 : i % 5 + 1 + (7 * i) % 11]))
        for i in range(n)
    ]


def reference(model, tok, prompt, params) -> list[int]:
    return list(generate(model, prompt, params, tokenizer=tok))


def run_all(sched: Scheduler, model, reqs, *, stagger: int = 0):
    """Submit (prompt, params) pairs. With `stagger`, the first `stagger` requests start alone and
    the worker is held inside its third forward (the first request has 2 tokens by then) until
    the rest are queued: those join rows that are mid-generation, whatever the machine's timing."""
    held, release = threading.Event(), threading.Event()
    forwards = 0

    def hold(module, args) -> None:
        nonlocal forwards
        forwards += 1
        if forwards == 3:
            held.set()
            release.wait(30)

    hook = model.model.embed_tokens.register_forward_pre_hook(hold) if stagger else None
    try:
        handles = [sched.submit("m", p, params) for p, params in reqs[: stagger or len(reqs)]]
        if stagger:
            assert held.wait(30), "the worker never reached its third forward"
            assert not handles[0].done and len(handles[0].tokens) == 2
            handles += [sched.submit("m", p, params) for p, params in reqs[stagger:]]
            release.set()
        for h in handles:
            assert h.wait(60), "request did not finish"
    finally:
        release.set()
        if hook is not None:
            hook.remove()
    if stagger:
        assert handles[0].joined_beside == 0
        assert handles[stagger].joined_beside >= 1  # it joined while the first was mid-generation
    return handles


def test_greedy_rows_equal_unbatched_whatever_shares_the_batch(model, tok):
    ps = prompts(tok, 7)
    reqs = [
        (p, SamplingParams(temperature=0, max_tokens=30 if i == 0 else 5 + 4 * (i % 4)))
        for i, p in enumerate(ps)
    ]
    wants = [reference(model, tok, p, params) for p, params in reqs]
    with Scheduler({"m": loaded(model, tok)}, max_seqs=3) as sched:
        handles = run_all(sched, model, reqs, stagger=2)
        assert sched.stats()["m"]["active"] == 0
    assert len({len(p) for p in ps}) > 3  # the batch really mixes lengths
    for (_, params), h, want in zip(reqs, handles, wants):
        assert h.tokens == want
        assert len(want) == params.max_tokens and h.finish_reason == "length"
    # the first row decodes 30 tokens: every later request was prefilled beside it or another
    assert all(h.joined_beside >= 1 for h in handles[2:])


def test_seeded_sampling_rows_equal_unbatched(model, tok):
    ps = prompts(tok, 5)
    reqs = [
        (
            p,
            SamplingParams(
                temperature=0.9,
                top_k=50,
                top_p=0.95,
                seed=100 + i,
                max_tokens=12,
                repetition_penalty=1.2 if i % 2 else 1.0,
            ),
        )
        for i, p in enumerate(ps)
    ]
    with Scheduler({"m": loaded(model, tok)}, max_seqs=4) as sched:
        handles = run_all(sched, model, reqs, stagger=1)
    for (p, params), h in zip(reqs, handles):
        assert h.tokens == reference(model, tok, p, params)


def test_text_and_stop_strings_match_the_engine(model, tok):
    p = prompts(tok, 3)[2]
    full = "".join(
        s.text
        for s in generate_steps(
            model, p, SamplingParams(temperature=0, max_tokens=30), tokenizer=tok
        )
    )
    assert len(full) > 6
    stop = full[4:7]
    params = SamplingParams(temperature=0, max_tokens=30, stop=[stop])
    want = "".join(s.text for s in generate_steps(model, p, params, tokenizer=tok))
    with Scheduler({"m": loaded(model, tok)}, max_seqs=2) as sched:
        h = sched.submit("m", p, params)
        other = sched.submit("m", prompts(tok, 1)[0], SamplingParams(temperature=0, max_tokens=20))
        assert h.wait(30) and other.wait(30)
    assert h.text == want and stop not in h.text and h.finish_reason == "stop"


def test_logprobs_are_the_models_log_softmax(model, tok):
    p = prompts(tok, 4)[3]
    with Scheduler({"m": loaded(model, tok)}) as sched:
        h = sched.submit("m", p, SamplingParams(temperature=0, max_tokens=6), logprobs=3)
        events = list(_collect_events(h))
    ids = list(p)
    with torch.no_grad():
        for ev in events:
            logp = model(torch.tensor([ids]))[0, -1].log_softmax(-1)
            assert ev.logprob == pytest.approx(float(logp[ev.token]), abs=1e-4)
            assert [i for i, _ in ev.top_logprobs] == logp.topk(3).indices.tolist()
            assert ev.top_logprobs[0][0] == ev.token  # greedy takes the top one
            ids.append(ev.token)


def _collect_events(h):
    """Events of a finished request, rebuilt from a thread-side iteration."""
    return list(h)


def test_cancel_frees_the_slot_and_others_continue(model, tok):
    ps = prompts(tok, 3)
    with Scheduler({"m": loaded(model, tok)}, max_seqs=1, max_queue=4) as sched:
        long = sched.submit(
            "m", ps[0], SamplingParams(temperature=0, max_tokens=100, stop_token_ids=[])
        )
        waiting = sched.submit("m", ps[1], SamplingParams(temperature=0, max_tokens=4))
        deadline = time.monotonic() + 30
        while not long.tokens and time.monotonic() < deadline:
            time.sleep(0.001)
        long.cancel()
        assert long.wait(30) and long.finish_reason in ("cancelled", "stop", "length")
        assert waiting.wait(30)
        assert waiting.tokens == reference(
            model, tok, ps[1], SamplingParams(temperature=0, max_tokens=4)
        )
        queued_then_cancelled = sched.submit(
            "m", ps[2], SamplingParams(temperature=0, max_tokens=50)
        )
        queued_then_cancelled.cancel()
        assert queued_then_cancelled.wait(30)
        assert sched.stats()["m"]["active"] == 0 and sched.stats()["m"]["queued"] == 0


def test_bounded_queue_refuses_instead_of_piling_up(model, tok):
    loaded_model = loaded(model, tok)
    with Scheduler({"m": loaded_model}, max_seqs=2, max_queue=3) as sched:
        gate = threading.Event()
        engine = sched.engines["m"]
        real_step = engine.step

        def blocked_step():
            gate.wait(30)
            real_step()

        engine.step = blocked_step  # the worker stalls mid-generation: nothing leaves the queue
        accepted, refused = [], 0
        for p in prompts(tok, 12):
            try:
                accepted.append(sched.submit("m", p, SamplingParams(temperature=0, max_tokens=3)))
            except QueueFullError as e:
                refused += 1
                assert "busy" in str(e)
        gate.set()
        assert refused > 0 and len(accepted) <= 2 + 3 + 2
        for h in accepted:
            assert h.wait(30) and h.finish_reason in ("stop", "length")
        stats = sched.stats()["m"]
        assert {k: stats[k] for k in ("slots", "active", "queued", "context")} == {
            "slots": 2,
            "active": 0,
            "queued": 0,
            "context": 128,
        }
        assert all(isinstance(stats[k], int) for k in PREFIX_STATS)


def test_bad_requests_fail_at_submit(model, tok):
    with Scheduler({"m": loaded(model, tok)}, max_context=64) as sched:
        with pytest.raises(TwofilesError, match="not served"):
            sched.submit("nope", [1, 2], SamplingParams())
        with pytest.raises(PromptTooLongError, match="64 tokens"):
            sched.submit("m", [5] * 64, SamplingParams())
        with pytest.raises(TwofilesError, match="empty prompt"):
            sched.submit("m", [], SamplingParams())
        with pytest.raises(TwofilesError, match="max_tokens"):
            sched.submit("m", [1], SamplingParams(max_tokens=0))
        # output is capped by the context: prompt + output fills it exactly
        h = sched.submit(
            "m", [tok.bos_id] * 60, SamplingParams(temperature=0, max_tokens=50, stop_token_ids=[])
        )
        assert h.wait(30)
        assert (h.finish_reason, len(h.tokens)) == ("length", 4)


def test_a_failing_forward_fails_its_requests_not_the_server(model, tok):
    with Scheduler({"m": loaded(model, tok)}) as sched:
        engine = sched.engines["m"]
        real = engine.admit
        calls = []

        def failing_admit(handles):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("out of memory (simulated)")
            real(handles)

        engine.admit = failing_admit
        bad = sched.submit("m", prompts(tok, 1)[0], SamplingParams(temperature=0, max_tokens=3))
        assert bad.wait(30) and bad.finish_reason == "error" and "simulated" in bad.error
        good = sched.submit("m", prompts(tok, 1)[0], SamplingParams(temperature=0, max_tokens=3))
        assert good.wait(30) and good.finish_reason in ("stop", "length")


def test_async_iteration_from_an_event_loop(model, tok):
    import asyncio

    p = prompts(tok, 2)[1]
    params = SamplingParams(temperature=0, max_tokens=8)

    async def main(sched):
        h = sched.submit("m", p, params)
        return [ev.token async for ev in h if ev.token is not None]

    with Scheduler({"m": loaded(model, tok)}) as sched:
        assert asyncio.run(main(sched)) == reference(model, tok, p, params)


def test_quantized_model_rows_equal_its_unbatched_engine(tok):
    from twofiles.quant import quantize_model

    model = random_model(tok, seed=3)
    quantize_model(
        model, "int8", embedding=True
    )  # no lm_head.weight any more: device and dtype come from elsewhere
    ps = prompts(tok, 4)
    reqs = [(p, SamplingParams(temperature=0, max_tokens=6)) for p in ps]
    with Scheduler({"m": loaded(model, tok)}, max_seqs=2) as sched:
        handles = run_all(sched, model, reqs, stagger=1)
    for (p, params), h in zip(reqs, handles):
        assert h.tokens == reference(model, tok, p, params)
