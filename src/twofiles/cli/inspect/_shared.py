"""What the picture subcommands of `twofiles inspect` (lens, attention, attribute, patch) share:
the model argument and its loading, prompts checked against the context, single-token targets,
and the output folder (every file written atomically). Not a subcommand itself."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twofiles.cli.common import add_device_flag, add_json_flag

if TYPE_CHECKING:
    from twofiles.artifact import LoadedModel


def add_model_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument(
        "model",
        metavar="MODEL",
        help="a twofiles model.safetensors, a .gguf file, a Hugging Face model directory or an "
        "alias (smollm2)",
    )
    p.add_argument(
        "--out",
        default=f"inspect-{verb}",
        metavar="DIR",
        help=f"folder for the PNG(s) and the HTML page (default inspect-{verb})",
    )
    add_device_flag(p)
    add_json_flag(p)


def load(args: argparse.Namespace) -> LoadedModel:
    """The model MODEL names, in eval mode, on --device, its weights as loaded (fp32 for a
    quantized GGUF: the pictures read o_proj and the unembedding as plain matrices)."""
    import time

    from twofiles.formats.resolve import resolve_model
    from twofiles.runtime import pick_device

    device, why = pick_device(args.device)
    t0 = time.perf_counter()
    loaded = resolve_model(args.model, device=device)
    loaded.model.eval()
    cfg = loaded.model.config
    print(
        f"model {args.model}: {cfg.n_layers} layers x {cfg.n_heads} heads, {device.type} ({why}), "
        f"loaded in {time.perf_counter() - t0:.1f}s",
        file=sys.stderr,
    )
    return loaded


def encode(loaded: LoadedModel, text: str, flag: str) -> list[int]:
    """The prompt's ids as generation would see them (bos first where the model's tokenizer
    says so), refused when empty or longer than the model's context."""
    from twofiles.engine import encode_prompt
    from twofiles.errors import BadInputError

    if not text:
        raise BadInputError(f"{flag}: the prompt is empty")
    ids = encode_prompt(loaded.tokenizer, text)
    limit = loaded.model.config.max_seq_len
    if len(ids) > limit:
        raise BadInputError(
            f"{flag}: the prompt is {len(ids)} tokens, longer than the model's context of {limit}"
        )
    return ids


def token_id(loaded: LoadedModel, text: str, flag: str) -> int:
    """The one token `text` is. A text of several tokens is refused, its pieces named: the
    pictures score one next token, and the first piece of a word is often a different question
    than the word (pass that piece itself to score it)."""
    from twofiles.errors import BadInputError

    tok = loaded.tokenizer
    ids = tok.encode(text)
    if len(ids) == 1:
        return int(ids[0])
    if not ids:
        raise BadInputError(f"{flag}: empty token")
    pieces = " + ".join(repr(tok.decode([i])) for i in ids)
    hint = ""
    if not text.startswith(" ") and len(tok.encode(" " + text)) == 1:
        hint = f"; {' ' + text!r} (with the leading space) is one token"
    raise BadInputError(
        f"{flag} {text!r} is {len(ids)} tokens ({pieces}), not one: the next-token pictures "
        f"score a single token; pass one of its pieces, e.g. {tok.decode([ids[0]])!r}{hint}"
    )


def token_texts(loaded: LoadedModel, ids: list[int]) -> list[str]:
    return [loaded.tokenizer.decode([int(i)]) for i in ids]


def out_dir(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_bytes(path: Path, data: bytes) -> str:
    from twofiles.paths import atomic_write_bytes

    atomic_write_bytes(path, data)
    return str(path)


def write_text(path: Path, text: str) -> str:
    return write_bytes(path, text.encode("utf-8"))


def table(rows: list[list[Any]], header: list[str]) -> str:
    """A plain aligned text table for the terminal."""
    cells = [header, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
