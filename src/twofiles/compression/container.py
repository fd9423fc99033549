"""The compressed file: what `twofiles compress` writes and `twofiles decompress` reads.

    magic       8 bytes  b"\\x89TFC\\r\\n\\x1a\\n" (PNG's trick: a text-mode copy that rewrites line
                         ends or stops at ^Z is caught at once)
    version     2 bytes  little-endian, FORMAT_VERSION
    header_len  4 bytes  little-endian
    header_crc  4 bytes  little-endian CRC-32 of the header: a damaged count in it must not set
                         decompression decoding garbage for hours
    header      header_len bytes of UTF-8 JSON (below)
    payload     the arithmetic coder's bits, all blocks in one stream

The header records everything decompression must reproduce, and what to check the result with:

    model        {"weights_sha256", "tokenizer_sha256", "vocab_size", "params", "name"}: the
                 model's identity by content (its weights and tokenizer, never its path; `name`
                 only helps the error message)
    settings     codec.Settings: block_len, batch_size, threads, dtype, device
    environment  {"torch", "cpu_capability", "cpu"}: what else moves floating point
    original     {"bytes", "tokens", "sha256"}: the file that was compressed
    payload      {"bytes", "sha256"}: a damaged or cut file is refused before any decoding

What it leaves to others: the coding itself (coder.py, codec.py).
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from typing import Any

from twofiles.errors import BadInputError

MAGIC = b"\x89TFC\r\n\x1a\n"
FORMAT_VERSION = 1
# A header is a few hundred bytes; anything past this is a damaged length field.
MAX_HEADER_BYTES = 1 << 20
_FIXED = struct.Struct("<HII")  # version, header length, header CRC-32
HEADER_KEYS = ("model", "settings", "environment", "original", "payload")


def pack(header: dict[str, Any], payload: bytes) -> bytes:
    """The whole file: magic, version, header, payload."""
    body = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return MAGIC + _FIXED.pack(FORMAT_VERSION, len(body), zlib.crc32(body)) + body + payload


def unpack(blob: bytes, path: str) -> tuple[dict[str, Any], bytes]:
    """(header, payload) of a compressed file, or a BadInputError naming `path` and what is
    wrong: not this format, another version, a damaged header, a truncated or altered payload."""
    if blob[: len(MAGIC)] != MAGIC:
        raise BadInputError("not a file made by `twofiles compress` (bad magic bytes)", path=path)
    start = len(MAGIC) + _FIXED.size
    if len(blob) < start:
        raise BadInputError("truncated: the file ends inside its fixed header", path=path)
    version, n, crc = _FIXED.unpack_from(blob, len(MAGIC))
    if version != FORMAT_VERSION:
        raise BadInputError(
            f"format version {version}; this twofiles reads version {FORMAT_VERSION}", path=path
        )
    if n > MAX_HEADER_BYTES:
        raise BadInputError(f"damaged header: it claims {n} bytes", path=path)
    if len(blob) < start + n:
        raise BadInputError(
            f"truncated: the header needs {n} bytes, the file has {len(blob) - start} after "
            "its fixed part",
            path=path,
        )
    body = blob[start : start + n]
    if zlib.crc32(body) != crc:
        raise BadInputError("damaged header: its CRC-32 does not match", path=path)
    try:
        header = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInputError(f"damaged header: not JSON ({e})", path=path) from None
    if not isinstance(header, dict) or any(
        not isinstance(header.get(k), dict) for k in HEADER_KEYS
    ):
        raise BadInputError(
            f"damaged header: it needs the objects {', '.join(HEADER_KEYS)}", path=path
        )
    payload = blob[start + n :]
    want = header["payload"].get("bytes")
    if not isinstance(want, int) or want < 0:
        raise BadInputError("damaged header: payload.bytes is not a count", path=path)
    if len(payload) < want:
        raise BadInputError(
            f"truncated: {len(payload)} of the {want} payload bytes are there", path=path
        )
    if len(payload) > want:
        raise BadInputError(
            f"{len(payload) - want} unexpected bytes after the {want}-byte payload", path=path
        )
    if hashlib.sha256(payload).hexdigest() != header["payload"].get("sha256"):
        raise BadInputError("corrupt: the payload's sha256 does not match its header", path=path)
    return header, payload


__all__ = ["FORMAT_VERSION", "MAGIC", "pack", "unpack"]
