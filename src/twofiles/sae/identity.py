"""A model's identity: the hash an SAE file records, so that an SAE is never read on another model.

What it owns: `model_identity`, a sha256 over the model's config and its weights as loaded (fp32
bytes, parameters in name order; a tied embedding and lm_head counted once). Two loads
of the same file, GGUF or safetensors, on any device, give the same identity; a finetuned or
requantized model gives another. The identity is of the model before inference preparation: fused
projections and packed or quantized weights change the names and the bytes, so verbs compute it
on the model as resolve_model returns it. What it leaves to others: the refusal (the verbs).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

import torch

from twofiles.model import Transformer

IDENTITY_CHARS = 16  # hex digits kept: 64 bits, plenty to tell models apart, short to read


def _transformer(model: Transformer | Any) -> Transformer:
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, Transformer) else model


@torch.no_grad()
def model_identity(model: Transformer | Any) -> str:
    """ "sha256:" and the first 16 hex digits of the hash of `model`'s config and weights (a
    Transformer or a LoadedModel). Reads every weight once (about a second for smollm2)."""
    m = _transformer(model)
    h = hashlib.sha256(json.dumps(asdict(m.config), sort_keys=True, default=str).encode())
    seen: set[int] = set()
    for name, p in sorted(m.state_dict(keep_vars=True).items()):
        if id(p) in seen:  # tied embeddings: one tensor under two names
            continue
        seen.add(id(p))
        t = p.detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(t.numpy().data)
    return "sha256:" + h.hexdigest()[:IDENTITY_CHARS]
