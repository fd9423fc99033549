"""Tiny models for the scheduler and server tests: a random one (every weight non-zero, logits
spread out) and a scripted one (greedy output is a fixed token sequence after a known prompt)."""

from __future__ import annotations

import time

import torch

from twofiles.artifact import LoadedModel
from twofiles.model import ModelConfig, Transformer
from twofiles.tokenizer import Tokenizer

TEXT = "to be or not to be, that is the question. whether 'tis nobler in the mind to suffer " * 30


def tiny_tokenizer() -> Tokenizer:
    return Tokenizer.train([TEXT], 320)


def random_model(tok: Tokenizer, *, seed: int = 0, max_seq_len: int = 128) -> Transformer:
    cfg = ModelConfig(
        vocab_size=tok.vocab_size,
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        hidden_dim=64,
        max_seq_len=max_seq_len,
    )
    model = Transformer(cfg)
    model.init_weights(seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(
                ("o_proj.weight", "down_proj.weight", "lm_head.weight")
            ):  # zero or tiny at init
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[1] ** -0.5 * 2)
    return model.eval()


class ScriptedModel(Transformer):
    """A real Transformer (its caches are written as usual) whose output is scripted: at
    position p it predicts script[p + 1 - prompt_len], then `filler`. lm_head is the identity on
    the vocabulary, and hidden_states returns one-hot rows scaled to be decisive."""

    def __init__(
        self,
        tok: Tokenizer,
        script: list[int],
        prompt_len: int,
        filler: int,
        max_seq_len: int = 256,
    ) -> None:
        V = tok.vocab_size
        dim = V + (-V) % 8
        super().__init__(
            ModelConfig(
                vocab_size=V,
                dim=dim,
                n_layers=1,
                n_heads=4,
                n_kv_heads=4,
                hidden_dim=16,
                max_seq_len=max_seq_len,
            )
        )
        self.init_weights(seed=0)
        with torch.no_grad():
            self.lm_head.weight.zero_()
            self.lm_head.weight[:, :V] = torch.eye(V)
        self.script, self.prompt_len, self.filler = script, prompt_len, filler
        self.eval()

    def hidden_states(self, idx, caches=None, pos=0, *, positions=None, attn_mask=None):
        h = super().hidden_states(idx, caches, pos, positions=positions, attn_mask=attn_mask)
        B, T = idx.shape
        if positions is None:
            positions = torch.arange(pos, pos + T).expand(B, T)
        k = positions + 1 - self.prompt_len
        script = torch.tensor(self.script + [self.filler])
        ids = script[k.clamp(0, len(self.script))]
        ids = torch.where(k < 0, self.filler, ids)
        out = torch.zeros_like(h)
        out.scatter_(-1, ids[..., None], 10.0)
        return out


class SlowModel(ScriptedModel):
    """Never stops on its own (it repeats one letter) and takes a few ms per forward, so a
    request is still running when a test acts on it."""

    def hidden_states(self, idx, caches=None, pos=0, *, positions=None, attn_mask=None):
        time.sleep(0.005)
        return super().hidden_states(idx, caches, pos, positions=positions, attn_mask=attn_mask)


def loaded(model: Transformer, tok: Tokenizer, chat_template: str = "") -> LoadedModel:
    return LoadedModel(model=model, tokenizer=tok, chat_template=chat_template)
