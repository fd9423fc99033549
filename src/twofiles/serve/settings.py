"""The server's limits, named in one place, each with a comment saying why it exists."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServeSettings:
    max_seqs: int = 8  # sequences decoded together per model (slots of the batched KV cache)
    max_queue: int = 32  # requests waiting for a slot, per model; past it: 429 + Retry-After, never an unbounded pile-up
    max_context: int = (
        2048  # KV cache length per sequence (prompt + output), capped by the model's own context
    )
    max_prompt_tokens: int | None = (
        None  # longest prompt accepted (400 past it); None = the context minus one
    )
    prefix_cache_mb: float = (
        512  # keys/values of seen prefixes kept per model (LRU past it); 0 = off
    )
    prefill_chunk: int = 512  # most prompt tokens prefilled between two decode steps; 0 = no limit
    max_output_tokens: int = 1024  # max_tokens above this is clamped to it
    default_max_tokens: int = (
        512  # chat completions without max_tokens (completions default to 16, as OpenAI's)
    )
    max_body_bytes: int = 1 << 20  # request bodies over this get 413, before any parsing
    request_timeout_s: float = (
        300.0  # a request still running after this is cancelled (504, or the stream ends)
    )
    max_n: int = 8  # choices per request
    max_top_logprobs: int = 20  # alternatives per token (OpenAI's own limit)
    max_stop: int = 4  # stop strings per request (OpenAI's own limit)
    retry_after_s: int = 1  # what a 429 tells clients to wait
    api_keys: frozenset[str] = field(
        default_factory=frozenset
    )  # non-empty: /v1 needs "Authorization: Bearer KEY"
    # origins whose pages may call this server from a browser (CORS); empty: none but its own
    cors_origins: tuple[str, ...] = ()
    metrics: bool = True  # GET /metrics (Prometheus); open like /health: counts, never text
    # longest prompt the Inside page reads, in tokens: its replies grow with the lens's layers x T
    # cells and the attention's heads x T x T weights, and each is one forward beside decoding
    inside_max_tokens: int = 256

    def __post_init__(self) -> None:
        for name in (
            "max_seqs",
            "max_context",
            "max_output_tokens",
            "default_max_tokens",
            "max_body_bytes",
            "max_n",
            "max_stop",
            "inside_max_tokens",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.prefix_cache_mb < 0 or self.prefill_chunk < 0:
            raise ValueError("prefix_cache_mb and prefill_chunk must be >= 0 (0 = off)")
        if (
            self.max_queue < 0
            or self.request_timeout_s <= 0
            or self.max_top_logprobs < 0
            or self.retry_after_s < 0
        ):
            raise ValueError(
                "max_queue, max_top_logprobs and retry_after_s must be >= 0 and request_timeout_s > 0"
            )
