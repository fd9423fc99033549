"""Prompt encoding follows the model's own tokenizer settings (`Tokenizer.add_bos`), everywhere a
prompt is encoded: `engine.encode_prompt` (generate), the parameters file, eval's log-likelihood
requests (the rule on the context only, once) and serve's /v1/completions.

Where the flag comes from (GGUF, Hugging Face directories) is tested against transformers in
test_gguf.py and test_formats.py; run.py's side in test_standalone.py.
"""

from __future__ import annotations

import http.client
import json

import pytest

from live_server import UvicornThread
from tiny_models import loaded, random_model, tiny_tokenizer
from twofiles.artifact import load_model, read_metadata, save_model
from twofiles.engine import SamplingParams, encode_prompt, generate_steps
from twofiles.errors import BadInputError
from twofiles.tokenizer import Tokenizer

TEXT = "to be or not"


@pytest.fixture(scope="module")
def toks() -> dict[bool, Tokenizer]:
    tok = tiny_tokenizer()
    return {True: tok, False: Tokenizer.from_json(tok.to_json(), add_bos=False)}


def test_encode_prompt_follows_add_bos(toks) -> None:
    with_bos, without = toks[True], toks[False]
    ids = with_bos.encode(TEXT)
    assert encode_prompt(with_bos, TEXT) == [with_bos.bos_id, *ids]
    assert encode_prompt(without, TEXT) == ids == without.encode(TEXT)
    # nothing to condition on otherwise: an empty prompt starts from the bos either way
    assert encode_prompt(without, "") == encode_prompt(with_bos, "") == [with_bos.bos_id]


def test_the_parameters_file_keeps_the_rule(tmp_path, toks) -> None:
    from safetensors.torch import load_file, save_file

    model = random_model(toks[True])
    for add_bos, tok in toks.items():
        path = save_model(tmp_path / f"{add_bos}.safetensors", model, tok)
        assert json.loads(read_metadata(path)["special"])["add_bos"] is add_bos
        assert load_model(path).tokenizer.add_bos is add_bos
    # A file written before the flag existed keeps the rule it was used with: add the bos.
    path = tmp_path / "True.safetensors"
    meta = read_metadata(path)
    special = json.loads(meta["special"])
    del special["add_bos"]
    old = tmp_path / "old.safetensors"
    save_file(load_file(path), old, metadata={**meta, "special": json.dumps(special)})
    assert load_model(old).tokenizer.add_bos is True
    special["add_bos"] = "no"
    save_file(load_file(path), old, metadata={**meta, "special": json.dumps(special)})
    with pytest.raises(BadInputError, match="'special'.*add_bos"):
        load_model(old)


def test_eval_loglikelihood_puts_the_bos_before_the_context_once(toks) -> None:
    """lm-eval's split: the context's tokens, then the continuation's; the prompt rule only in
    front of the context, and an empty context scored after the bos."""
    from twofiles.eval.backends import LocalBackend, loglikelihood_tokens

    model = random_model(toks[True])
    requests = [("to be or", " not to be"), ("", "to be")]
    for add_bos, tok in toks.items():
        backend = LocalBackend(loaded(model, tok), chat=False)
        got = backend.loglikelihood(requests)
        bos = [tok.bos_id] if add_bos else []
        pairs = [
            (bos + tok.encode("to be or"), tok.encode(" not to be")),
            ([tok.bos_id], tok.encode("to be")),
        ]
        want = loglikelihood_tokens(model, pairs)
        assert [ll for ll, _ in got] == pytest.approx([ll for ll, _ in want], abs=1e-5)
        assert backend.prompt_ids_for_text(TEXT) == encode_prompt(tok, TEXT)
    # the two rules give different numbers: the test above could not pass by accident
    lls = [
        LocalBackend(loaded(model, t), chat=False).loglikelihood(requests[:1])
        for t in toks.values()
    ]
    assert lls[0][0][0] != pytest.approx(lls[1][0][0], abs=1e-4)


def _post(port: int, path: str, body: dict) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(
            "POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"}
        )
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_serve_completions_encode_the_prompt_as_generate_does(toks) -> None:
    from twofiles.serve.app import create_app

    model = random_model(toks[True])
    app = create_app({str(k): loaded(model, t) for k, t in toks.items()})
    with UvicornThread(app) as server:
        port = server.port
        for add_bos, tok in toks.items():
            body = {"model": str(add_bos), "prompt": TEXT, "max_tokens": 6, "temperature": 0}
            code, resp = _post(port, "/v1/completions", body)
            assert code == 200, resp
            ids = encode_prompt(tok, TEXT)
            params = SamplingParams(temperature=0, max_tokens=6)
            want = "".join(s.text for s in generate_steps(model, ids, params, tokenizer=tok))
            assert resp["usage"]["prompt_tokens"] == len(tok.encode(TEXT)) + add_bos
            assert resp["choices"][0]["text"] == want


def test_chat_prompts_are_the_templates_alone(toks) -> None:
    """The chat template writes the bos itself (`{{ bos_token }}`); rendering adds no second one,
    whatever the prompt rule."""
    from twofiles.chat import ChatFormat

    for tok in toks.values():
        ids = ChatFormat.builtin_for(tok).prompt_ids([{"role": "user", "content": TEXT}])
        assert ids[0] == tok.bos_id and tok.bos_id not in ids[1:]
