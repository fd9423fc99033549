"""EleutherAI's lm-evaluation-harness with twofiles models: an adapter (the `lmeval` extra).

What it owns: `TwofilesLM`, an lm-eval `LM` answering the harness's three request types with the
evaluation backend of this package — `loglikelihood` (batched, lm-eval's context/continuation
split), `loglikelihood_rolling` (a whole text in disjoint windows, each conditioned on the token
before it, as lm-eval's own rolling windows are) and `generate_until` (greedy, batched, cut at the
`until` strings). What it leaves to others: the harness's tasks and datasets (they come from the
Hugging Face hub), the model math, generation.

    import lm_eval
    from twofiles.eval.lmeval import TwofilesLM
    lm_eval.simple_evaluate(model=TwofilesLM("smollm2"), tasks=["hellaswag"], limit=100)

`register()` makes it available by name (`--model twofiles --model_args pretrained=smollm2`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lm_eval.api.model import LM  # the optional extra: pip install 'twofiles[lmeval]'

from twofiles.eval.backends import LocalBackend, greedy_batch, loglikelihood_tokens


class TwofilesLM(LM):
    """Any model twofiles loads (`pretrained`: model.safetensors, .gguf, HF directory, alias)."""

    def __init__(
        self,
        pretrained: str | None = None,
        *,
        loaded: Any = None,
        device: str = "auto",
        batch_size: int | str = 8,
        max_gen_toks: int = 256,
    ) -> None:
        super().__init__()
        if loaded is None:
            from twofiles.formats.resolve import resolve_model
            from twofiles.runtime import pick_device

            if pretrained is None:
                raise ValueError(
                    "give pretrained=MODEL (a model file, .gguf, Hugging Face directory or alias)"
                )
            loaded = resolve_model(pretrained, device=pick_device(device)[0])
        self.backend = LocalBackend(loaded, name=pretrained or "model", chat=False)
        self.batch_size = int(batch_size)
        self.max_gen_toks = int(max_gen_toks)

    @property
    def _model(self) -> Any:
        return self.backend.loaded.model

    @property
    def _tok(self) -> Any:
        return self.backend.loaded.tokenizer

    def loglikelihood(
        self, requests: Sequence[Any], disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        return self.backend.loglikelihood(
            [tuple(r.args) for r in requests], batch_size=self.batch_size
        )

    def loglikelihood_rolling(
        self, requests: Sequence[Any], disable_tqdm: bool = False
    ) -> list[float]:
        window = self._model.config.max_seq_len
        out = []
        for r in requests:
            ids = [self._tok.bos_id] + self._tok.encode(r.args[0])
            pairs = [
                (ids[start - 1 : start], ids[start : start + window])
                for start in range(1, len(ids), window)
            ]
            out.append(
                sum(
                    ll
                    for ll, _ in loglikelihood_tokens(
                        self._model, pairs, batch_size=self.batch_size
                    )
                )
            )
        return out

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        out = []
        for r in requests:  # each request may carry its own stop strings and length
            context, gen_kwargs = r.args
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_tokens = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
            prompt = self.backend.prompt_ids_for_text(context)
            out.append(
                greedy_batch(
                    self._model,
                    self._tok,
                    [prompt],
                    max_tokens=max_tokens,
                    stop=until,
                    end_ids=self.backend.end_ids(),
                )[0]
            )
        return out


def register(name: str = "twofiles") -> type[TwofilesLM]:
    """Register TwofilesLM with lm-eval's model registry under `name`."""
    from lm_eval.api.registry import register_model

    return register_model(name)(TwofilesLM)
