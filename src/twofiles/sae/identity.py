"""A model's identity: the hash an SAE file records, so that an SAE is never read on another model.

What it owns: `model_identity`, a sha256 over the model's weights as loaded (names, shapes,
dtypes and bytes, in name order: the same hash `sae train` records, sae/activations.py's
`model_id`). Two loads of the same file on any device give the same identity; a finetuned or
requantized model, or the same weights in another dtype, gives another. The identity is of the
model before inference preparation: fused projections and packed or quantized weights change the
names and the bytes, so verbs compute it on the model as resolve_model returns it. What it leaves to others: the refusal (the verbs).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from twofiles.model import Transformer

IDENTITY_CHARS = 16  # hex digits kept: 64 bits, plenty to tell models apart, short to read


def _transformer(model: Transformer | Any) -> Transformer:
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, Transformer) else model


@torch.no_grad()
def model_identity(model: Transformer | Any) -> str:
    """The first 16 hex digits of the sha256 of `model`'s weights (a Transformer or a
    LoadedModel): each tensor's name, shape, dtype and bytes, in name order. Reads every weight
    once (about a second for smollm2)."""
    m = _transformer(model)
    h = hashlib.sha256()
    for name, t in sorted(m.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:IDENTITY_CHARS]
