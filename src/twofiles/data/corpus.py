"""Reading documents: text/Markdown files, directories, JSONL, Parquet, the built-in corpus.

What it owns: turning inputs into a stream of normalised `Document`s and reporting bad input by
file and line. Nothing is held in memory beyond one file (txt/md), one line (JSONL) or one row
group batch (Parquet).

Inputs:
  FILE.txt / FILE.md      one document per file (any other extension is read the same way)
  FILE.jsonl              one document per line, the string field `text_field` (default "text")
  FILE.parquet            one document per row of the string column `text_field`
  DIR                     recursively, in sorted order, the .txt/.md/.jsonl/.parquet files inside
  builtin:shakespeare     the built-in corpus (data/builtin.py), one document per work

Normalisation (`normalize`): Unicode NFC, CRLF and lone CR -> LF, control characters dropped
except newline and tab.

Bad input (BadInputError naming path:line): a missing file, bytes that are not UTF-8, a binary
file (NUL bytes), an empty file, a JSONL line that is not JSON / is not an object / lacks the
field / whose field is not a string, a Parquet file without the column. By default the first bad
input stops the stream; with skip_bad=True it is skipped and counted in `stats` by reason.
Empty documents inside a JSONL/Parquet file are skipped and counted as "empty_document".

What it leaves to others: dedup, splitting and tokenizing (prepare.py).
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from twofiles.errors import BadInputError

BUILTIN_PREFIX = "builtin:"
BUILTIN_SHAKESPEARE = "builtin:shakespeare"
# Extensions picked up when walking a directory (an explicitly named file is read whatever its name).
DIR_EXTENSIONS = (".txt", ".md", ".jsonl", ".parquet")
PARQUET_BATCH_ROWS = 1024

# C0 and C1 control characters except \t (0x09) and \n (0x0a); \r is handled before this.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def normalize(text: str) -> str:
    """NFC, LF line endings, no control characters other than newline and tab."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    return text


@dataclass(frozen=True)
class Document:
    text: str  # normalised text
    source: str  # the file it came from (or "builtin:shakespeare/<id>")
    line: int | None = None  # 1-based line (JSONL) or row (Parquet); None for whole files


@dataclass
class CorpusStats:
    documents: int = 0  # documents yielded
    skipped: Counter = field(default_factory=Counter)  # reason -> count (bad input skipped)
    files: list[str] = field(default_factory=list)  # files opened, in order

    def to_dict(self) -> dict:
        return {
            "documents": self.documents,
            "skipped": sum(self.skipped.values()),
            "skipped_by_reason": dict(sorted(self.skipped.items())),
        }


class _Bad(Exception):
    """Internal: one bad input, with the reason code used in stats."""

    def __init__(self, reason: str, message: str, path: str, line: int | None = None) -> None:
        super().__init__(message)
        self.reason, self.error = reason, BadInputError(message, path=path, line=line)


def expand_inputs(inputs: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Inputs with directories replaced by their files (recursive, sorted). Missing paths stay in
    the list so that reading reports them."""
    out: list[str] = []
    for inp in inputs:
        s = str(inp)
        if s.startswith(BUILTIN_PREFIX):
            out.append(s)
        elif os.path.isdir(s):
            found = sorted(
                str(p)
                for p in Path(s).rglob("*")
                if p.is_file()
                and p.suffix.lower() in DIR_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(s).parts)
            )
            if not found:
                raise BadInputError(f"directory has no {'/'.join(DIR_EXTENSIONS)} files", path=s)
            out.extend(found)
        else:
            out.append(s)
    return out


def _line_of(data: bytes, pos: int) -> int:
    return data.count(b"\n", 0, pos) + 1


def _decode(data: bytes, path: str, line_offset: int = 0) -> str:
    if b"\x00" in data:
        raise _Bad(
            "binary",
            "binary file (contains NUL bytes)",
            path,
            line_offset + _line_of(data, data.index(b"\x00")),
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = line_offset + _line_of(data, e.start)
        raise _Bad(
            "not_utf8",
            f"bytes that are not UTF-8 at offset {e.start} ({data[e.start : e.start + 4]!r}); convert the file to UTF-8",
            path,
            line,
        ) from None


def _read_text_file(path: str) -> Iterator[Document]:
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark
        data = data[3:]
    text = normalize(_decode(data, path))
    if not text.strip():
        raise _Bad("empty", "empty file", path)
    yield Document(text, path)


def _read_jsonl(path: str, text_field: str) -> Iterator[Document | _Bad]:
    """Yields documents, or a _Bad per bad line (the caller decides whether to stop)."""
    n_lines = 0  # non-blank lines
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            n_lines += 1
            try:
                s = _decode(raw, path, lineno - 1)
                try:
                    obj = json.loads(s)
                except json.JSONDecodeError as e:
                    raise _Bad(
                        "not_json", f"not valid JSON ({e.msg} at column {e.colno})", path, lineno
                    ) from None
                if not isinstance(obj, dict):
                    raise _Bad(
                        "not_object",
                        f"expected a JSON object with a '{text_field}' field, got {type(obj).__name__}",
                        path,
                        lineno,
                    )
                if text_field not in obj:
                    keys = ", ".join(sorted(obj)[:8])
                    raise _Bad(
                        "missing_field",
                        f"no '{text_field}' field (fields: {keys or 'none'}); choose one with --text-field",
                        path,
                        lineno,
                    )
                value = obj[text_field]
                if not isinstance(value, str):
                    raise _Bad(
                        "not_string",
                        f"field '{text_field}' is {type(value).__name__}, not a string",
                        path,
                        lineno,
                    )
            except _Bad as bad:
                yield bad
                continue
            text = normalize(value)
            if not text.strip():
                yield _Bad("empty_document", "empty document", path, lineno)
                continue
            yield Document(text, path, lineno)
    if n_lines == 0:
        yield _Bad("empty", "empty file (no non-blank lines)", path)


def _read_parquet(path: str, text_field: str) -> Iterator[Document | _Bad]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        yield _Bad("not_parquet", f"not a readable Parquet file ({e})", path)
        return
    names = pf.schema_arrow.names
    if text_field not in names:
        yield _Bad(
            "missing_field",
            f"no '{text_field}' column (columns: {', '.join(names[:8])}); choose one with --text-field",
            path,
        )
        return
    col_type = pf.schema_arrow.field(text_field).type
    if not (pa.types.is_string(col_type) or pa.types.is_large_string(col_type)):
        yield _Bad("not_string", f"column '{text_field}' has type {col_type}, not string", path)
        return
    if pf.metadata.num_rows == 0:
        yield _Bad("empty", "empty file (no rows)", path)
        return
    row = 0
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_field]):
        for value in batch.column(0).to_pylist():
            row += 1
            if value is None:
                yield _Bad("not_string", f"column '{text_field}' is null in row {row}", path, row)
                continue
            text = normalize(value)
            if not text.strip():
                yield _Bad("empty_document", "empty document", path, row)
                continue
            yield Document(text, path, row)


def _read_builtin(name: str) -> Iterator[Document]:
    if name != BUILTIN_SHAKESPEARE:
        raise _Bad("missing", f"unknown built-in corpus (known: {BUILTIN_SHAKESPEARE})", name)
    from twofiles.data.builtin import shakespeare_documents

    for work in shakespeare_documents():
        yield Document(work.text, f"{BUILTIN_SHAKESPEARE}/{work.id}")


def _read_any(path: str, text_field: str) -> Iterator[Document | _Bad]:
    if path.startswith(BUILTIN_PREFIX):
        yield from _read_builtin(path)
        return
    if not os.path.exists(path):
        raise _Bad("missing", "no such file or directory", path)
    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl":
        yield from _read_jsonl(path, text_field)
    elif suffix == ".parquet":
        yield from _read_parquet(path, text_field)
    else:
        yield from _read_text_file(path)


class Corpus:
    """Re-iterable stream of Documents from `inputs`. `stats` covers the latest iteration."""

    def __init__(
        self,
        inputs: Iterable[str | os.PathLike[str]],
        *,
        text_field: str = "text",
        skip_bad: bool = False,
    ) -> None:
        self.inputs = [str(i) for i in inputs]
        if not self.inputs:
            raise BadInputError("no input given")
        self.text_field = text_field
        self.skip_bad = skip_bad
        self.stats = CorpusStats()

    def files(self) -> list[str]:
        return expand_inputs(self.inputs)

    def __iter__(self) -> Iterator[Document]:
        self.stats = stats = CorpusStats()
        for path in self.files():
            stats.files.append(path)
            try:
                for item in _read_any(path, self.text_field):
                    if isinstance(item, _Bad):
                        self._bad(item)
                        continue
                    stats.documents += 1
                    yield item
            except _Bad as bad:
                self._bad(bad)
            except (IsADirectoryError, PermissionError) as e:
                self._bad(_Bad("unreadable", f"cannot read ({e.strerror})", path))

    def _bad(self, bad: _Bad) -> None:
        if (
            bad.reason == "empty_document"
        ):  # not an error: counted and skipped even without skip_bad
            self.stats.skipped[bad.reason] += 1
            return
        if not self.skip_bad:
            raise bad.error
        self.stats.skipped[bad.reason] += 1


def read_documents(
    inputs: Iterable[str | os.PathLike[str]], *, text_field: str = "text", skip_bad: bool = False
) -> Iterator[Document]:
    """Convenience: iterate a fresh Corpus."""
    return iter(Corpus(inputs, text_field=text_field, skip_bad=skip_bad))
