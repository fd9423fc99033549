"""Evaluation against naive computations and models whose answers are forced.

Bits per byte is recomputed the slow way (a full forward per target token, bytes from decoded
text); batched log-likelihoods equal one-request-at-a-time forwards; a toy "bigram" model whose
every next token is dictated makes multiple-choice answers known in advance; batched ragged
greedy generation equals the engine's one-prompt greedy; extraction and task files get their
known answers and their error messages; an OpenAI-compatible endpoint is a tiny HTTP server
started here on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import json
import math
import re
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from peers import require
from twofiles.artifact import LoadedModel
from twofiles.errors import BadInputError, TwofilesError
from twofiles.eval.backends import (
    EndpointBackend,
    GenRequest,
    LocalBackend,
    greedy_batch,
    loglikelihood_tokens,
)
from twofiles.eval.extract import extract_number, gsm8k_reference, is_match, normalize_number
from twofiles.eval.runner import evaluate, format_results, run_task, summary
from twofiles.eval.tasks import TaskSpec, builtin_tasks, load_examples, load_spec, pick_shots
from twofiles.model import ModelConfig, Transformer
from twofiles.tokenizer import Tokenizer

TEXT = "to be or not to be, that is the question. whether 'tis nobler in the mind to suffer. " * 30


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    tok = Tokenizer.train([TEXT], 300)
    model = Transformer(
        ModelConfig(
            vocab_size=tok.vocab_size,
            dim=32,
            n_layers=2,
            n_heads=4,
            n_kv_heads=2,
            hidden_dim=64,
            max_seq_len=96,
        )
    )
    model.init_weights(seed=0)
    with torch.no_grad():  # a readable spread of probabilities instead of the near-uniform init
        model.lm_head.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.normal_(
                0.0, 0.2, generator=torch.Generator().manual_seed(2)
            )
    model.eval()
    return LoadedModel(model=model, tokenizer=tok)


# ---------------------------------------------------------------------------------------------
# bits per byte and log-likelihoods against naive computations


def test_bits_per_byte_equals_a_naive_computation(tiny: LoadedModel) -> None:
    model, tok = tiny.model, tiny.tokenizer
    texts = [
        "to be or not to be, that is the question",
        "whether 'tis nobler in the mind é to suffer " * 3,
    ]
    seq_len = 16
    got = LocalBackend(tiny).bits_per_byte(texts, seq_len=seq_len, batch_size=3)
    ids = [i for t in texts for i in [tok.bos_id] + tok.encode(t)]
    nats = nbytes = 0.0
    with torch.no_grad():
        for start in range(
            0, len(ids) - 1, seq_len
        ):  # windows restart the context, as the batched code does
            for t in range(start, min(start + seq_len, len(ids) - 1)):
                target = ids[t + 1]
                if target == tok.bos_id:  # a document separator is no text: neither loss nor bytes
                    continue
                logits = model(torch.tensor([ids[start : t + 1]]))[0, -1]
                nats -= float(logits.log_softmax(-1)[target])
    nbytes = sum(
        len(t.encode("utf-8")) for t in texts
    )  # the scored tokens spell the texts exactly ("é" is two byte tokens)
    assert got.bytes == nbytes
    assert got.bits_per_byte == pytest.approx(nats / math.log(2) / nbytes, rel=1e-5)
    assert got.tokens == len(ids) - len(texts)  # every target but the second document's <|bos|>


def test_batched_loglikelihoods_equal_one_at_a_time(tiny: LoadedModel) -> None:
    model, tok = tiny.model, tiny.tokenizer
    pairs = [
        ([tok.bos_id] + tok.encode(c), tok.encode(x))
        for c, x in [
            ("to be or", " not"),
            ("that is the question.", " whether 'tis"),
            ("to", " be or not to be"),
            ("a" * 150, " be"),
        ]
    ]
    got = loglikelihood_tokens(model, pairs, batch_size=3)
    for (ctx, cont), (ll, greedy) in zip(pairs, got):
        seq = (ctx + cont)[-(model.config.max_seq_len + 1) :]  # over-long contexts lose their start
        with torch.no_grad():
            logp = model(torch.tensor([seq[:-1]]))[0].log_softmax(-1)
        tail = range(len(seq) - 1 - len(cont), len(seq) - 1)
        want = sum(float(logp[p, seq[p + 1]]) for p in tail)
        assert ll == pytest.approx(want, abs=1e-4)
        assert greedy == all(int(logp[p].argmax()) == seq[p + 1] for p in tail)


class BigramModel(nn.Module):
    """Forced answers: after token t the model puts (almost) all its mass on next_of[t]."""

    def __init__(self, vocab: int, next_of: dict[int, int], sharpness: float = 20.0) -> None:
        super().__init__()
        self.config = ModelConfig(
            vocab_size=vocab,
            dim=vocab,
            n_layers=1,
            n_heads=1,
            n_kv_heads=1,
            hidden_dim=4,
            max_seq_len=128,
        )
        self.table = torch.arange(vocab)
        for a, b in next_of.items():
            self.table[a] = b
        self.lm_head = nn.Linear(vocab, vocab, bias=False)
        with torch.no_grad():
            self.lm_head.weight.copy_(torch.eye(vocab) * sharpness)

    def hidden_states(self, idx: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return nn.functional.one_hot(self.table[idx], self.config.vocab_size).float()


class CharTokenizer:
    """One token per character of a small alphabet; id 0 is <|bos|>."""

    bos_id = 0
    alphabet = "\0 abcdefghijklmnopqrstuvwxyz?:.\n"

    def encode(self, text: str) -> list[int]:
        return [self.alphabet.index(c) for c in text]

    def decode(self, ids) -> str:
        return "".join(self.alphabet[i] for i in ids if i)


def test_multiple_choice_follows_a_forced_model(tmp_path: Path) -> None:
    tok = CharTokenizer()
    V = len(tok.alphabet)
    enc = tok.encode
    # the forced chain: after ":" comes " ", then "c", "a", "t", "."
    chain = {
        enc(":")[0]: enc(" ")[0],
        enc(" ")[0]: enc("c")[0],
        enc("c")[0]: enc("a")[0],
        enc("a")[0]: enc("t")[0],
        enc("t")[0]: enc(".")[0],
    }
    model = BigramModel(V, chain)
    (tmp_path / "mc.jsonl").write_text(
        "\n".join(
            json.dumps(x)
            for x in [
                {"q": "pet:", "choices": ["dog", "cat", "cow"], "label": 1},
                {"q": "animal:", "choices": ["cat", "bat", "rat"], "label": 0},
                {
                    "q": "wrong:",
                    "choices": ["ant", "cat"],
                    "label": 0,
                },  # the model's pick (cat) is not the label
            ]
        )
        + "\n"
    )
    (tmp_path / "mc.toml").write_text(
        'type = "multiple_choice"\ndata = "mc.jsonl"\nprompt = "{q}"\nchoice_template = " {choice}"\nanswer = "label"\n'
    )
    backend = LocalBackend(LoadedModel(model=model, tokenizer=tok), chat=False)  # type: ignore[arg-type]
    result = run_task(backend, load_spec(str(tmp_path / "mc.toml")), progress=False)
    assert result.value == pytest.approx(2 / 3) and result.n == 3
    assert [s["picked"] for s in result.samples] == [1, 0, 1]
    # the log-likelihood is known exactly: each forced token costs log(1 + (V-1) e^-20) nats, any other 20 nats more
    forced = -math.log(1 + (V - 1) * math.exp(-20))
    assert result.samples[0]["loglikelihoods"][1] == pytest.approx(
        4 * forced, abs=1e-5
    )  # " cat": 4 forced tokens
    # " dog": " " is forced; "d" (the model wanted "c"), "o" and "g" each cost 20 nats more
    assert result.samples[0]["loglikelihoods"][0] == pytest.approx(
        forced + 3 * (forced - 20), abs=1e-4
    )


def test_accuracy_norm_divides_by_the_choice_bytes(tmp_path: Path) -> None:
    tok = CharTokenizer()
    V = len(tok.alphabet)
    a, space = tok.encode("a")[0], tok.encode(" ")[0]
    model = BigramModel(
        V, {space: a, a: a}, sharpness=1.0
    )  # a gentle push towards "a" after " " or "a"
    (tmp_path / "d.jsonl").write_text(
        json.dumps({"q": "x:", "choices": ["aaaa", "b"], "label": 0}) + "\n"
    )
    (tmp_path / "t.toml").write_text(
        'type = "multiple_choice"\ndata = "d.jsonl"\nprompt = "{q}"\nanswer = "label"\nmetric = "accuracy_norm"\n'
    )
    r = run_task(
        LocalBackend(LoadedModel(model=model, tokenizer=tok), chat=False),
        load_spec(str(tmp_path / "t.toml")),
        progress=False,
    )  # type: ignore[arg-type]
    # c = log(e + V - 1): " aaaa" costs 5c - 4 nats (4 pushed tokens), " b" 2c; per byte (5 and 2 bytes) " aaaa" is cheaper
    assert r.metrics["accuracy"] == 0.0 and r.metrics["accuracy_norm"] == 1.0 and r.value == 1.0


def test_ragged_batched_greedy_equals_the_engine(tiny: LoadedModel) -> None:
    from twofiles.engine import SamplingParams, encode_prompt, generate

    model, tok = tiny.model, tiny.tokenizer
    prompts = [
        encode_prompt(tok, p)
        for p in ["to be", "that is the question. whether", "t", "nobler in the mind to suffer"]
    ]
    got = greedy_batch(model, tok, prompts, max_tokens=12, end_ids={tok.bos_id})
    for p, text in zip(prompts, got):
        ids = list(generate(model, p, SamplingParams(temperature=0, max_tokens=12), tokenizer=tok))
        assert text == tok.decode([i for i in ids if i != tok.bos_id])
    # stop strings cut each row exactly where the engine's text stream would
    stopped = greedy_batch(model, tok, prompts, max_tokens=12, stop=["e"], end_ids={tok.bos_id})
    assert all("e" not in s and g.startswith(s) for s, g in zip(stopped, got))


# ---------------------------------------------------------------------------------------------
# extraction


@pytest.mark.parametrize(
    "text, want",
    [
        ("so she makes 9 * 2 = $18.\n#### 18", "18"),
        ("The answer is 1,250 dollars.", "1250"),
        ("3 apples and 4 pears, 7 in all", "7"),
        ("-5 degrees", "-5"),
        ("It costs $3.50", "3.5"),
        ("no digits here", None),
        ("7.0", "7"),
    ],
)
def test_extract_number(text: str, want: str | None) -> None:
    assert extract_number(text) == want


def test_references_and_matching() -> None:
    assert gsm8k_reference("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\n#### 1,800") == "1800"
    assert normalize_number("$1,000.00") == "1000"
    assert (
        is_match("18.00", "18", "number")
        and not is_match("19", "18", "number")
        and not is_match(None, "18", "number")
    )
    assert is_match("Paris", "Paris", "exact") and not is_match("paris", "Paris", "exact")


# ---------------------------------------------------------------------------------------------
# task files


def test_builtin_tasks_load() -> None:
    tasks = builtin_tasks()
    assert {"plays", "quotes", "capitals", "arithmetic", "gsm8k", "skills"} <= tasks.keys()
    for name in ("plays", "quotes", "capitals", "arithmetic"):
        spec = load_spec(name)
        assert load_examples(spec), name
    assert len(load_examples(load_spec("quotes"))) == 30


def test_gsm8k_comes_from_the_installed_package() -> None:
    from twofiles.eval.tasks import split_fewshot

    spec = load_spec("gsm8k")
    examples = load_examples(spec)
    assert len(examples) == 1319
    scored, pool = split_fewshot(spec, examples)
    assert len(scored) == 1311 and pool is not None and len(pool) == 8
    assert gsm8k_reference(examples[0].fields["answer"]) == "18"


def _spec(tmp_path: Path, toml: str, data: str) -> TaskSpec:
    (tmp_path / "d.jsonl").write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    (tmp_path / "t.toml").write_text(toml)
    return load_spec(str(tmp_path / "t.toml"))


def test_task_file_errors_name_file_line_and_field(tmp_path: Path) -> None:
    gen = 'type = "generate"\ndata = "d.jsonl"\nprompt = "Q: {question}"\n'
    with pytest.raises(BadInputError, match=r"d\.jsonl:2: not valid JSON"):
        load_examples(_spec(tmp_path, gen, '{"question": "a", "answer": "1"}\n{oops\n'))
    spec = _spec(tmp_path, gen, '{"question": "a", "answer": "1"}\n{"q": "b", "answer": "2"}\n')
    backend = ScriptedBackend(["1", "2"])
    with pytest.raises(BadInputError, match=r"d\.jsonl:2: field 'question' is missing"):
        run_task(backend, spec, progress=False)
    with pytest.raises(BadInputError, match="unknown key"):
        _spec(tmp_path, gen + "promtp = 'x'\n", "")
    with pytest.raises(BadInputError, match="type="):
        _spec(tmp_path, 'type = "essay"\ndata = "d.jsonl"\n', "")
    with pytest.raises(BadInputError, match="t.toml: not a valid TOML"):
        _spec(tmp_path, "type = \n", "")
    mc = 'type = "multiple_choice"\ndata = "d.jsonl"\nprompt = "{q}"\nanswer = "label"\n'
    with pytest.raises(BadInputError, match=r"d\.jsonl:1: field 'label'=7: no such choice"):
        run_task(
            backend,
            _spec(tmp_path, mc, '{"q": "a", "choices": ["x", "y"], "label": 7}\n'),
            progress=False,
        )
    with pytest.raises(BadInputError, match=r"d\.jsonl:1: not UTF-8"):
        load_examples(_spec(tmp_path, gen, b'{"question": "\xff"}\n'))  # type: ignore[arg-type]
    with pytest.raises(TwofilesError, match="unknown task"):
        load_spec("no-such-task")


class ScriptedBackend:
    """Replies from a script, in request order; records the requests."""

    name, is_chat = "scripted", False

    def __init__(self, replies: list[str]) -> None:
        self.replies, self.requests = replies, []

    def generate(self, requests, *, max_tokens, stop=(), batch_size=8, progress=None):
        self.requests += list(requests)
        return self.replies[: len(requests)]


def test_generative_scoring_and_few_shot_selection(tmp_path: Path) -> None:
    rows = [{"question": f"{i} + 1", "answer": f"x\n#### {i + 1}"} for i in range(6)]
    toml = (
        'type = "generate"\ndata = "d.jsonl"\nprompt = "Q: {question}\\nA:"\nreference = "gsm8k"\nextract = "number"\n'
        'fewshot = "tail:2"\nfewshot_answer = "{answer}"\n'
    )
    spec = _spec(tmp_path, toml, "".join(json.dumps(r) + "\n" for r in rows))
    backend = ScriptedBackend(["The answer is 1.", "#### 2", "I think 4", "3 then 4, so 4"])
    r = run_task(backend, spec, shots=2, progress=False)
    assert r.n == 4 and r.value == pytest.approx(
        3 / 4
    )  # the shot pool (the last 2) is never scored
    assert [s["correct"] for s in r.samples] == [True, True, False, True]
    for req, i in zip(backend.requests, range(4)):
        assert (
            req.text.endswith(f"Q: {i} + 1\nA:")
            and "Q: 4 + 1" in req.text
            and "Q: 5 + 1" in req.text
        )
        assert [m["role"] for m in req.messages] == [
            "user",
            "assistant",
            "user",
            "assistant",
            "user",
        ]
    assert pick_shots([1, 2, 3], 2, 2, seed=0, index=0) == pick_shots(
        [1, 2, 3], 2, 2, seed=0, index=0
    )  # seeded
    assert 2 not in pick_shots([1, 2, 3], 2, 2, seed=5, index=9)
    table = format_results([r])
    assert "| t | accuracy | 0.7500 |" in table
    assert summary([r])["t"]["accuracy"] == 0.75


# ---------------------------------------------------------------------------------------------
# an OpenAI-compatible endpoint


class FakeAPI(http.server.BaseHTTPRequestHandler):
    """Chat completions answer 'What is a + b?' (wrongly when a is odd); completions with echo
    return per-character logprobs that favour the letters of 'paris'."""

    logprobs = True

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/v1/chat/completions":
            q = body["messages"][-1]["content"]
            a, b = map(int, re.findall(r"(\d+) \+ (\d+)", q)[-1])
            reply = {
                "choices": [
                    {"message": {"role": "assistant", "content": f"It is {a + b + (a % 2)}."}}
                ]
            }
        elif self.path == "/v1/completions" and self.logprobs:
            text = body["prompt"]
            lps = [None] + [-0.1 if c in "paris" else -3.0 for c in text[1:]]
            tops = [None] + [{c: lp} for c, lp in zip(text[1:], lps[1:])]
            reply = {
                "choices": [
                    {
                        "text": text,
                        "logprobs": {
                            "tokens": list(text),
                            "token_logprobs": lps,
                            "text_offset": list(range(len(text))),
                            "top_logprobs": tops,
                        },
                    }
                ]
            }
        else:
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b'{"error": "not found"}')
            return
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def fake_api():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    FakeAPI.logprobs = True


def test_endpoint_generative_and_loglikelihood_tasks(tmp_path: Path, fake_api: str) -> None:
    rows = [{"question": f"What is {a} + 2?", "answer": str(a + 2)} for a in range(4)]
    spec = _spec(
        tmp_path,
        'type = "generate"\ndata = "d.jsonl"\nprompt = "{question}"\n',
        "".join(json.dumps(r) + "\n" for r in rows),
    )
    backend = EndpointBackend(fake_api, "fake")
    r = run_task(backend, spec, progress=False)
    assert (
        r.value == 0.5 and r.samples[1]["reply"] == "It is 4."
    )  # 1 + 2 + 1: odd a answers wrongly
    mc = 'type = "multiple_choice"\ndata = "d.jsonl"\nprompt = "the capital of france is"\nchoices = "c"\nanswer = "a"\n'
    mc_spec = _spec(tmp_path, mc, json.dumps({"c": ["rome", "paris", "bonn"], "a": "paris"}) + "\n")
    assert run_task(backend, mc_spec, progress=False).value == 1.0
    bpb = backend.bits_per_byte(["paris is"], seq_len=1024)
    assert bpb.bytes == 7 and bpb.bits_per_byte == pytest.approx(
        (6 * 0.1 + 3.0) / math.log(2) / 7
    )  # 'p' has no context: not counted
    FakeAPI.logprobs = False  # a chat-only server: a clear refusal, not a wrong score
    with pytest.raises(TwofilesError, match="cannot score log-likelihoods"):
        run_task(backend, mc_spec, progress=False)


def test_endpoint_unreachable_is_a_clear_error() -> None:
    with pytest.raises(TwofilesError, match="cannot reach"):
        EndpointBackend("http://127.0.0.1:9", "x", timeout_s=5).generate(
            [GenRequest([{"role": "user", "content": "hi"}], "hi")], max_tokens=4
        )


# ---------------------------------------------------------------------------------------------
# the verb


@pytest.fixture(scope="module")
def model_file(tiny: LoadedModel, tmp_path_factory) -> str:
    from twofiles.artifact import save_model

    return str(
        save_model(tmp_path_factory.mktemp("m") / "model.safetensors", tiny.model, tiny.tokenizer)
    )


def test_cli_eval_json_contract(model_file: str, tmp_path: Path, capsys) -> None:
    from twofiles.cli import main

    out_file = tmp_path / "results.json"
    rc = main(
        [
            "eval",
            model_file,
            "--tasks",
            "quotes,arithmetic,plays",
            "--limit",
            "3",
            "--no-progress",
            "--json",
            "--out",
            str(out_file),
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    summary_line = json.loads(out.strip().splitlines()[-1])
    tasks = summary_line["tasks"]
    assert set(tasks) == {"quotes", "arithmetic", "plays"}
    assert 0.0 <= tasks["quotes"]["accuracy"] <= 1.0 and tasks["quotes"]["n"] == 3
    assert 0.0 <= tasks["arithmetic"]["accuracy"] <= 1.0
    assert tasks["plays"]["bits_per_byte"] > 0 and tasks["plays"]["metric"] == "bits_per_byte"
    assert "| quotes | accuracy |" in out
    saved = json.loads(out_file.read_text())
    assert [r["task"] for r in saved["results"]] == ["quotes", "arithmetic", "plays"]
    assert evaluate  # the library entry point the verb uses


def test_cli_eval_bad_task_exits_2(model_file: str, capsys) -> None:
    from twofiles.cli import main

    assert main(["eval", model_file, "--tasks", "nope"]) == 2
    assert "unknown task" in capsys.readouterr().err


def test_cli_eval_endpoint(fake_api: str, tmp_path: Path, capsys) -> None:
    from twofiles.cli import main

    rows = [{"question": f"What is {a} + 2?", "answer": str(a + 2)} for a in range(4)]
    spec = _spec(
        tmp_path,
        'type = "generate"\ndata = "d.jsonl"\nprompt = "{question}"\n',
        "".join(json.dumps(r) + "\n" for r in rows),
    )
    rc = main(
        [
            "eval",
            "--endpoint",
            fake_api,
            "--model-name",
            "fake",
            "--tasks",
            spec.path,
            "--json",
            "--no-progress",
        ]
    )
    assert rc == 0
    assert (
        json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tasks"]["t"]["accuracy"]
        == 0.5
    )


# ---------------------------------------------------------------------------------------------
# the report card


def _fake_run(d: Path, tiny: LoadedModel, bpb: float, with_eval: bool) -> Path:
    from twofiles.artifact import save_model
    from twofiles.eval.report import write_run_info

    d.mkdir()
    save_model(
        d / "model.safetensors",
        tiny.model,
        tiny.tokenizer,
        provenance={
            "val_bpb": bpb,
            "steps": 20,
            "tokens": 2048,
            "runtime": "cpu fp32",
            "data_splits": {"train": {"documents": 3, "tokens": 900, "bytes": 2700}},
        },
    )
    (d / "metrics.jsonl").write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"step": 10, "loss": 5.0, "tokens": 1024},
                {"step": 10, "val_loss": 4.0, "val_bpb": bpb + 1, "tokens": 1024},
                {"step": 20, "loss": 4.0, "tokens": 2048},
                {"step": 20, "val_loss": 3.0, "val_bpb": bpb, "tokens": 2048, "final": True},
            ]
        )
    )
    (d / "config.json").write_text(json.dumps({"seq_len": 64, "lr": 0.01}))
    if with_eval:
        (d / "eval.json").write_text(
            json.dumps(
                {
                    "model": "m",
                    "results": [
                        {
                            "task": "quotes",
                            "metric": "accuracy",
                            "value": 0.5,
                            "n": 30,
                            "shots": 0,
                            "metrics": {"accuracy": 0.5, "stderr": 0.09},
                        }
                    ],
                }
            )
        )
        write_run_info(
            d,
            {
                "title": "My run",
                "stages": {"pretrain": 12.5},
                "samples": [{"prompt": "ROMEO.", "text": " Ay me"}],
            },
        )
    return d


def test_report_is_rebuilt_from_the_run_directory(
    tmp_path: Path, tiny: LoadedModel, capsys
) -> None:
    from twofiles.cli import main

    run = _fake_run(tmp_path / "a", tiny, 2.5, with_eval=True)
    assert main(["report", str(run)]) == 0
    report = (run / "report.md").read_text()
    for needle in (
        "# My run",
        "| validation bits per byte (held-out text) | **2.5000** |",
        "| steps | 20 |",
        "## Benchmarks",
        "| quotes | accuracy | 0.5000 | 0.090 | 30 | 0 |",
        "| pretrain | 12.5 |",
        "ROMEO. Ay me",
        '"seq_len": 64',
        "3 documents",
    ):
        assert needle in report, needle
    assert "## Loss curve" not in report  # no loss.png in this run
    capsys.readouterr()


def test_report_compares_runs_side_by_side(tmp_path: Path, tiny: LoadedModel, capsys) -> None:
    from twofiles.cli import main

    a, b = (
        _fake_run(tmp_path / "a", tiny, 2.5, with_eval=True),
        _fake_run(tmp_path / "b", tiny, 2.0, with_eval=False),
    )
    png = tmp_path / "cmp.png"
    assert main(["report", str(a), str(b), "--png", str(png), "--json"]) == 0
    out = capsys.readouterr().out
    assert "| | a | b |" in out
    assert "| validation bits per byte (held-out text) | **2.5000** | **2.0000** |" in out
    assert "| quotes (accuracy) | 0.5000 |  |" in out
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert json.loads(out.strip().splitlines()[-1])["runs"][1]["numbers"]["val_bpb"] == 2.0
    assert main(["report", str(tmp_path)]) == 2  # not a run directory


# ---------------------------------------------------------------------------------------------
# lm-evaluation-harness adapter (lm-eval comes with the test extra)


def test_lm_eval_adapter_answers_the_three_request_types(tiny: LoadedModel) -> None:
    require("lm_eval", "pip install -e '.[test]' (or the `lmeval` extra)")
    from lm_eval.api.instance import Instance

    from twofiles.engine import SamplingParams, encode_prompt, generate
    from twofiles.eval.lmeval import TwofilesLM, register

    model, tok = tiny.model, tiny.tokenizer
    lm = TwofilesLM(loaded=tiny, batch_size=2)

    def inst(kind: str, *args) -> Instance:
        return Instance(request_type=kind, doc={}, arguments=args, idx=0)

    pairs = [("to be or", " not to be"), ("that is the", " question")]
    got = lm.loglikelihood([inst("loglikelihood", c, x) for c, x in pairs])
    assert got == LocalBackend(tiny).loglikelihood(pairs)
    text = (
        "whether 'tis nobler in the mind to suffer the slings and arrows " * 3
    )  # longer than the 96-token context
    (rolling,) = lm.loglikelihood_rolling([inst("loglikelihood_rolling", text)])
    ids = [tok.bos_id] + tok.encode(text)
    assert len(ids) > 96
    naive = 0.0
    with torch.no_grad():
        for start in range(1, len(ids), 96):  # each window sees only the token before it
            seq = ids[start - 1 : start + 96]
            logp = model(torch.tensor([seq[:-1]]))[0].log_softmax(-1)
            naive += sum(float(logp[i, seq[i + 1]]) for i in range(len(seq) - 1))
    assert rolling == pytest.approx(naive, rel=1e-5)
    (reply,) = lm.generate_until(
        [inst("generate_until", "to be", {"until": ["question"], "max_gen_toks": 10})]
    )
    greedy = tok.decode(
        [
            i
            for i in generate(
                model,
                encode_prompt(tok, "to be"),
                SamplingParams(temperature=0, max_tokens=10),
                tokenizer=tok,
            )
            if i != tok.bos_id
        ]
    )
    assert reply == greedy.split("question")[0]
    assert register("twofiles-test") is TwofilesLM


def test_skill_tasks_are_checked_with_the_skills_checker() -> None:
    examples = load_examples(load_spec("skills"))
    kinds = [e.fields["kind"] for e in examples]
    assert (
        len(examples) == 120 and len(set(kinds[:6])) == 6
    )  # interleaved: any --limit covers every kind
    right = ScriptedBackend(
        [e.obj.reply for e in examples[:12]]
    )  # the demonstrated replies are right by construction
    assert run_task(right, load_spec("skills"), limit=12, progress=False).value == 1.0
    wrong = ScriptedBackend(["I cannot say."] * 12)
    assert run_task(wrong, load_spec("skills"), limit=12, progress=False).value == 0.0
