"""What an evaluation asks of a model, for a model in this process or behind an HTTP API.

What it owns: three questions any task reduces to — the log-likelihood of a continuation given
a context (batched), the bits per byte of a text, and a greedy reply to a prompt — answered by
`LocalBackend` (any model twofiles loads: its own, GGUF, Hugging Face) or by `EndpointBackend`
(an OpenAI-compatible server: chat completions for replies; log-likelihoods only where the server
returns prompt logprobs through /v1/completions with echo). What it leaves to others: tasks and
scoring (eval/tasks.py, eval/runner.py), sampling (engine), chat rendering (twofiles.chat).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from twofiles.errors import TwofilesError

if TYPE_CHECKING:
    from twofiles.artifact import LoadedModel

Progress = Callable[[int], None]  # called with how many requests just finished


@dataclass
class GenRequest:
    """One prompt, in both shapes: chat models get `messages` (few-shot examples as earlier
    turns), base models get `text` (shots written out before the question)."""

    messages: list[dict[str, str]]
    text: str


@dataclass
class BitsPerByte:
    bits_per_byte: float
    loss: float  # nats per token
    tokens: int  # target tokens scored (specials excluded)
    bytes: int


class Backend(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def is_chat(self) -> bool: ...

    def loglikelihood(
        self,
        requests: Sequence[tuple[str, str]],
        *,
        batch_size: int = 8,
        progress: Progress | None = None,
    ) -> list[tuple[float, bool]]:
        """(log P(continuation | context) in nats, whether greedy decoding would produce the
        continuation) for each (context, continuation)."""
        ...

    def bits_per_byte(
        self,
        texts: Sequence[str],
        *,
        seq_len: int = 1024,
        max_windows: int | None = None,
        batch_size: int = 8,
    ) -> BitsPerByte: ...

    def generate(
        self,
        requests: Sequence[GenRequest],
        *,
        max_tokens: int,
        stop: Sequence[str] = (),
        batch_size: int = 8,
        progress: Progress | None = None,
    ) -> list[str]:
        """Greedy replies (text after the prompt, cut before any stop string)."""
        ...


# ---------------------------------------------------------------------------------------------
# A model in this process


class _ArrayStream:
    """An in-memory token sequence with the interface pretraining's evaluation reads."""

    def __init__(self, tokens: Any) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def get(self, start: int, length: int) -> Any:
        return self.tokens[start : start + length]


@dataclass
class LocalBackend:
    """A loaded model. `chat`: render generative prompts with the model's chat template (default:
    when the model file carries one)."""

    loaded: LoadedModel
    name: str = "model"
    chat: bool | None = None
    _format: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.chat is None:
            self.chat = bool(self.loaded.chat_template)
        if self.chat:
            from twofiles.chat import ChatFormat

            self._format = ChatFormat.for_model(self.loaded)

    @property
    def is_chat(self) -> bool:
        return bool(self.chat)

    @property
    def device(self) -> Any:
        from twofiles.engine import model_device

        return model_device(
            self.loaded.model
        )  # not lm_head.weight: a quantized or packed head has none

    def _ids(self, text: str) -> list[int]:
        from twofiles.engine import encode_prompt

        return encode_prompt(self.loaded.tokenizer, text)

    def prompt_ids_for_text(self, text: str) -> list[int]:
        """A plain-text prompt as generation sees it (engine.encode_prompt: the bos when the model's
        tokenizer adds one), its start cut to leave room for one token."""
        return self._ids(text)[-(self.loaded.model.config.max_seq_len - 1) :]

    def end_ids(self) -> set[int]:
        """Ids that end a reply and are not part of its text: end of turn, <|bos|>, the model's eos ids."""
        tok = self.loaded.tokenizer
        stop_ids = list(self._format.stop_token_ids) if self._format is not None else []
        return set(stop_ids) | {tok.bos_id, *getattr(tok, "eos_ids", ())}

    def loglikelihood(
        self,
        requests: Sequence[tuple[str, str]],
        *,
        batch_size: int = 8,
        progress: Progress | None = None,
    ) -> list[tuple[float, bool]]:
        tok = self.loaded.tokenizer
        pairs = []
        for context, continuation in requests:
            # Tokenize the whole text and split it where the context's tokens end (lm-eval's
            # rule): the continuation is scored as the model would read it in running text.
            ctx, whole = tok.encode(context), tok.encode(context + continuation)
            n = len(ctx)
            if whole[:n] != ctx:  # a token spans the boundary: take the common prefix
                n = next(i for i, (a, b) in enumerate(zip(ctx, whole)) if a != b)
            if n == len(whole):
                raise TwofilesError(f"empty continuation after context {context[-40:]!r}")
            # The prompt rule (engine.encode_prompt) applies to the context only, once; an empty
            # context gets the bos anyway: the first scored token needs something to follow.
            start = [tok.bos_id] if getattr(tok, "add_bos", True) or n == 0 else []
            pairs.append((start + whole[:n], whole[n:]))
        return loglikelihood_tokens(
            self.loaded.model, pairs, batch_size=batch_size, progress=progress
        )

    def bits_per_byte(
        self,
        texts: Sequence[str],
        *,
        seq_len: int = 1024,
        max_windows: int | None = None,
        batch_size: int = 8,
    ) -> BitsPerByte:
        """Each text as a training document ([bos] + tokens), scored in consecutive windows with
        pretraining's own evaluation (so the numbers compare with a run's val_bpb)."""
        import numpy as np
        import torch

        from twofiles.eval.bpb import evaluate_bpb
        from twofiles.runtime import Runtime

        tok = self.loaded.tokenizer
        seq_len = min(seq_len, self.loaded.model.config.max_seq_len)
        limit = None if max_windows is None else max_windows * seq_len
        pieces: list[np.ndarray] = []
        for t in texts:  # with a limit, tokenize only as many documents as it needs
            # The bos separates documents whatever the prompt rule: without it one document's
            # end would be context for the next (lm-eval's rolling loglikelihood starts the same).
            pieces.append(np.array([tok.bos_id, *tok.encode(t)], dtype=np.int64))
            if limit is not None and sum(map(len, pieces)) > limit:
                break
        ids = np.concatenate(pieces)
        token_bytes = torch.from_numpy(tok.token_bytes().astype(np.int64)).to(self.device)
        stream = _ArrayStream(ids)
        model = self.loaded.model
        bf16 = (
            self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        )  # the precision rule pretraining evaluates under
        rt = Runtime(device=self.device, autocast_dtype=torch.bfloat16 if bf16 else None)
        with torch.inference_mode():
            loss, bpb = evaluate_bpb(model, stream, token_bytes, rt, seq_len, batch_size, limit)
        model.eval()
        n_targets = len(ids) - 1 if limit is None else min(len(ids) - 1, limit)
        targets = torch.from_numpy(ids[1 : n_targets + 1]).to(self.device)
        nbytes = token_bytes[targets]
        return BitsPerByte(
            bits_per_byte=bpb, loss=loss, tokens=int((nbytes > 0).sum()), bytes=int(nbytes.sum())
        )

    def prompt_ids(self, req: GenRequest) -> list[int]:
        if self._format is not None:
            from twofiles.chat import parse_messages

            return self._format.prompt_ids(parse_messages(req.messages))
        return self._ids(req.text)

    def choice_loglikelihoods(self, req: GenRequest, choices: Sequence[str]) -> list[float]:
        """log P(choice | the prompt as `generate` would render it) for each choice text."""
        prompt = self.prompt_ids(req)
        pairs = [(prompt, self.loaded.tokenizer.encode(c)) for c in choices]
        return [
            ll for ll, _ in loglikelihood_tokens(self.loaded.model, pairs, batch_size=len(pairs))
        ]

    def generate(
        self,
        requests: Sequence[GenRequest],
        *,
        max_tokens: int,
        stop: Sequence[str] = (),
        batch_size: int = 8,
        progress: Progress | None = None,
    ) -> list[str]:
        tok = self.loaded.tokenizer
        stops = (
            [] if self._format is not None else list(stop)
        )  # a chat model's turn ends at its end-of-turn token
        ends = self.end_ids()
        limit = self.loaded.model.config.max_seq_len - 1
        prompts = [
            self.prompt_ids(r)[-limit:] for r in requests
        ]  # keep the question (the end) when shots overflow the context
        order = sorted(
            range(len(prompts)), key=lambda i: -len(prompts[i])
        )  # similar lengths share a batch: less padding
        out = [""] * len(prompts)
        for b in range(0, len(order), batch_size):
            rows = order[b : b + batch_size]
            texts = greedy_batch(
                self.loaded.model,
                tok,
                [prompts[i] for i in rows],
                max_tokens=max_tokens,
                stop=stops,
                end_ids=ends,
            )
            for i, text in zip(rows, texts):
                out[i] = text
            if progress is not None:
                progress(len(rows))
        return out


def greedy_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_tokens: int,
    stop: Sequence[str] = (),
    end_ids: set[int] | frozenset[int] = frozenset(),
) -> list[str]:
    """Greedy replies to prompts of different lengths in one batch, through the one batched
    decoder (twofiles.decoder: rows of different lengths in one forward per step, each exactly
    as an unbatched run). A row stops at an id in `end_ids` (and the tokenizer's bos and eos
    ids) or just before a stop string."""
    from twofiles.decoder import decode_batch
    from twofiles.engine import SamplingParams

    params = SamplingParams(
        temperature=0,
        max_tokens=max_tokens,
        stop=[s for s in stop if s],
        stop_token_ids=sorted(end_ids),
    )
    rows = decode_batch(model, prompts, params, tokenizer=tokenizer, max_rows=max(1, len(prompts)))
    return [r.text for r in rows]


def loglikelihood_tokens(
    model: Any,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> list[tuple[float, bool]]:
    """(sum of log-probabilities of `continuation` given `context`, whether every continuation
    token is the argmax) for token-id pairs, batched. Rows are right-padded: with causal attention
    padding after a row's last token cannot change that row's logits. Longest first, so a batch
    holds rows of similar length; contexts are cut from the left to fit the model's window."""
    import torch

    from twofiles.engine import model_device

    limit = model.config.max_seq_len + 1  # tokens in a row, the last one only a target
    rows = []
    for context, continuation in pairs:
        if not continuation:
            raise ValueError("empty continuation")
        seq = (list(context) + list(continuation))[-limit:]
        rows.append((seq, min(len(continuation), len(seq) - 1)))
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    out: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
    device = model_device(model)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            T = max(len(rows[i][0]) for i in idx) - 1
            x = torch.zeros(len(idx), T, dtype=torch.long)
            for r, i in enumerate(idx):
                seq = rows[i][0]
                x[r, : len(seq) - 1] = torch.tensor(seq[:-1])
            h = model.hidden_states(x.to(device))  # [B, T, dim]
            for r, i in enumerate(idx):
                seq, n = rows[i]
                start = len(seq) - 1 - n  # the positions whose next token is a continuation token
                logp = model.lm_head(h[r, start : start + n]).float().log_softmax(-1)  # [n, V]
                target = torch.tensor(seq[-n:], device=device)
                out[i] = (
                    float(logp.gather(-1, target[:, None]).sum()),
                    bool((logp.argmax(-1) == target).all()),
                )
            if progress is not None:
                progress(len(idx))
    model.train(was_training)
    return out


# ---------------------------------------------------------------------------------------------
# A model behind an OpenAI-compatible API


class EndpointError(TwofilesError):
    """The endpoint refused or failed a request."""


@dataclass
class EndpointBackend:
    """An OpenAI-compatible server at `url` (e.g. http://127.0.0.1:8000 or .../v1). Replies come
    from /v1/chat/completions (temperature 0); log-likelihoods need /v1/completions with
    `echo`, `logprobs` and `max_tokens` 0 (twofiles serve and vLLM offer them; hosted chat APIs do
    not)."""

    url: str
    model_name: str
    api_key: str = ""
    timeout_s: float = 300.0
    name: str = ""
    is_chat: bool = True

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        if not self.url.endswith("/v1"):
            self.url += "/v1"
        self.name = self.name or self.model_name

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:300]
            raise EndpointError(f"{self.url}{path}: HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            raise EndpointError(
                f"{self.url}{path}: cannot reach the endpoint ({getattr(e, 'reason', e)})"
            ) from None
        except json.JSONDecodeError:
            raise EndpointError(f"{self.url}{path}: the reply is not JSON") from None

    def generate(
        self,
        requests: Sequence[GenRequest],
        *,
        max_tokens: int,
        stop: Sequence[str] = (),
        batch_size: int = 8,
        progress: Progress | None = None,
    ) -> list[str]:
        out = []
        for r in requests:
            body: dict[str, Any] = {
                "model": self.model_name,
                "messages": r.messages,
                "max_tokens": max_tokens,
                "temperature": 0.0,
            }
            if stop:
                body["stop"] = list(stop)[:4]  # the OpenAI API takes at most four
            reply = self._post("/chat/completions", body)
            try:
                text = reply["choices"][0]["message"].get("content") or ""
            except (KeyError, IndexError, TypeError, AttributeError):
                raise EndpointError(
                    f"{self.url}/chat/completions: unexpected reply shape: {str(reply)[:200]}"
                ) from None
            out.append(text)
            if progress is not None:
                progress(1)
        return out

    def _prompt_logprobs(self, text: str) -> tuple[list[float | None], list[int], list[Any]]:
        """(token_logprobs, text_offset, top_logprobs) of `text` as a prompt: /v1/completions
        with echo, logprobs 1 and max_tokens 0 (the legacy API's prompt log-probabilities, as
        vLLM and twofiles serve return them)."""
        body = {
            "model": self.model_name,
            "prompt": text,
            "max_tokens": 0,
            "echo": True,
            "logprobs": 1,
            "temperature": 0.0,
        }
        try:
            reply = self._post("/completions", body)
            lp = reply["choices"][0]["logprobs"]
            return (
                list(lp["token_logprobs"]),
                list(lp["text_offset"]),
                list(lp.get("top_logprobs") or []),
            )
        except (EndpointError, KeyError, IndexError, TypeError) as e:
            raise TwofilesError(
                f"the endpoint {self.url} cannot score log-likelihoods ({e}): multiple-choice and bits-per-byte tasks need prompt "
                "logprobs from /v1/completions (echo=true, logprobs, max_tokens=0); run generative tasks only against it"
            ) from None

    def loglikelihood(
        self,
        requests: Sequence[tuple[str, str]],
        *,
        batch_size: int = 8,
        progress: Progress | None = None,
    ) -> list[tuple[float, bool]]:
        """Context and continuation go as one text; the continuation's tokens are those that end
        past the context (a token spanning the boundary counts as the continuation's, as in
        LocalBackend's split), summed. Greedy: each of them is the endpoint's top-1."""
        out = []
        for context, continuation in requests:
            logprobs, offsets, tops = self._prompt_logprobs(context + continuation)
            ends = [*offsets[1:], len(context) + len(continuation)]
            mine = [
                (i, float(lp))
                for i, (lp, end) in enumerate(zip(logprobs, ends))
                if end > len(context) and lp is not None
            ]
            if not mine:
                raise TwofilesError(
                    f"the endpoint returned no tokens for the continuation {continuation!r}"
                )
            total = sum(lp for _, lp in mine)
            greedy = len(tops) == len(logprobs) and all(
                isinstance(tops[i], dict) and tops[i] and max(tops[i].values()) <= lp + 1e-6
                for i, lp in mine
            )
            out.append((total, greedy))
            if progress is not None:
                progress(1)
        return out

    def bits_per_byte(
        self,
        texts: Sequence[str],
        *,
        seq_len: int = 1024,
        max_windows: int | None = None,
        batch_size: int = 8,
    ) -> BitsPerByte:
        """Texts sent in chunks of about 4 bytes per token of `seq_len`; the first token of each
        chunk has no logprob (no context) and is left out of both sums."""
        chunk_chars = 4 * seq_len
        nats = 0.0
        ntok = nbytes = windows = 0
        for text in texts:
            for start in range(0, len(text), chunk_chars):
                if max_windows is not None and windows >= max_windows:
                    break
                piece = text[start : start + chunk_chars]
                logprobs, offsets, _ = self._prompt_logprobs(piece)
                for i, lp in enumerate(logprobs):
                    if lp is None:
                        continue
                    end = offsets[i + 1] if i + 1 < len(offsets) else len(piece)
                    nats -= float(lp)
                    ntok += 1
                    nbytes += len(piece[offsets[i] : end].encode("utf-8"))
                windows += 1
        return BitsPerByte(
            bits_per_byte=nats / math.log(2) / max(nbytes, 1),
            loss=nats / max(ntok, 1),
            tokens=ntok,
            bytes=nbytes,
        )
