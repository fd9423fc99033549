"""The text a user's files hold, ready to chunk: plain text and Markdown as they are, the visible
text of HTML, the pages of a PDF, the records of a JSONL file; and which files a folder holds.

Each readable unit is a `Document`: the name its chunks are cited by, its text, and how to say
where a character span lies in it ("lines 12-30", "page 3", "record 7"). What this module does not
do: split into chunks (chunk.py), embed or store (embed.py, index.py).
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from twofiles.errors import BadInputError, TwofilesError

HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
PDF_SUFFIXES = {".pdf"}
JSONL_SUFFIXES = {".jsonl"}
SNIFF_BYTES = 8192  # a NUL byte in a file's first 8 KiB marks it as binary (as git and grep do)


@dataclass
class Document:
    source: str  # what a citation shows: the path as the user named it, or "file.jsonl:LINE"
    text: str
    locate: Callable[[int, int], str] = field(repr=False)  # (start, end) -> "lines 3-9"


@dataclass
class Walk:
    files: list[tuple[Path, str]]  # (absolute path, the name to cite it by)
    hidden: int = 0  # files and folders left out because their name starts with "."
    binary: int = 0  # files left out because they are not text (and not a PDF)
    in_folders: set[Path] = field(default_factory=set)  # the files found by walking a folder
    unreadable: list[str] = field(default_factory=list)  # a folder's files we may not open, why


def line_locator(text: str) -> Callable[[int, int], str]:
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]

    def locate(start: int, end: int) -> str:
        a = bisect.bisect_right(starts, start)
        b = bisect.bisect_right(starts, max(start, end - 1))
        return f"line {a}" if a == b else f"lines {a}-{b}"

    return locate


def is_binary(path: Path) -> bool:
    with open(path, "rb") as f:
        return b"\0" in f.read(SNIFF_BYTES)


def walk(paths: list[tuple[str, Path]]) -> Walk:
    """Every file the (name as given, path) pairs hold: files as given, folders recursively
    (sorted, hidden names and binary files skipped and counted). A named file that is missing is
    a BadInputError; a named file that is binary too (a folder's binaries are only counted)."""
    out = Walk(files=[])
    seen: set[Path] = set()
    for given, path in paths:
        if not path.exists():
            raise BadInputError("no such file or folder", path=given)
        if path.is_file():
            try:
                binary = path.suffix.lower() not in PDF_SUFFIXES and is_binary(path)
            except OSError as e:
                raise BadInputError(f"cannot read ({e.strerror})", path=given) from None
            if binary:
                raise BadInputError(
                    "a binary file (not text, HTML, PDF or JSONL); nothing to index", path=given
                )
            if path.resolve() not in seen:
                seen.add(path.resolve())
                out.files.append((path.resolve(), given))
            continue
        for root, dirs, names in os.walk(path):
            hidden_dirs = [d for d in dirs if d.startswith(".")]
            out.hidden += len(hidden_dirs)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                if name.startswith("."):
                    out.hidden += 1
                    continue
                f = Path(root) / name
                if not f.is_file():
                    continue
                cite = os.path.join(given, os.path.relpath(f, path))
                try:
                    binary = f.suffix.lower() not in PDF_SUFFIXES and is_binary(f)
                except OSError as e:  # no permission: skipped and listed like a non-UTF-8 file
                    out.unreadable.append(f"{cite}: cannot read ({e.strerror})")
                    continue
                if binary:
                    out.binary += 1
                    continue
                if f.resolve() in seen:
                    continue
                seen.add(f.resolve())
                out.in_folders.add(f.resolve())
                out.files.append((f.resolve(), cite))
    return out


def _read_text(path: Path, name: str) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except OSError as e:  # gone or locked since the walk
        raise BadInputError(f"cannot read ({e.strerror})", path=name) from None
    except UnicodeDecodeError as e:
        raise BadInputError(f"not UTF-8 text (byte {e.start})", path=name) from None


class _Visible(HTMLParser):
    """The text a browser shows: no script, style, head or template; blocks on their own lines,
    the source's line breaks inside them spaces; <pre>'s spaces and line breaks kept (code's
    indentation is its meaning)."""

    SKIP = {"script", "style", "head", "title", "noscript", "template", "svg"}
    BLOCK = {
        "p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header",
        "footer", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "dd", "dt", "hr",
    }  # fmt: skip

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[tuple[str, bool]] = []  # (text, inside <pre>)
        self.skipping = 0
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCK:
            self.parts.append(("\n", False))
        self.pre += tag == "pre"

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCK:
            self.parts.append(("\n", False))
        if tag == "pre":
            self.pre = max(0, self.pre - 1)

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        if self.pre:
            self.parts.append((data.replace("\r\n", "\n"), True))
        else:  # a line break in the source is a space on the page
            self.parts.append((data.replace("\r", " ").replace("\n", " "), False))

    def _lines(self) -> Iterator[str]:
        """Each line with its runs of whitespace made one space, unless it holds <pre> text."""
        line: list[str] = []
        pre = False
        for data, in_pre in self.parts:
            for i, piece in enumerate(data.split("\n")):
                if i:
                    yield "".join(line).rstrip() if pre else " ".join("".join(line).split())
                    line, pre = [], False
                line.append(piece)
                pre = pre or (in_pre and bool(piece.strip()))
        yield "".join(line).rstrip() if pre else " ".join("".join(line).split())

    def text(self) -> str:
        lines = self._lines()
        out, blank = [], False
        for line in lines:
            if line:
                out.append(line)
                blank = False
            elif not blank and out:
                out.append("")
                blank = True
        return "\n".join(out).strip("\n")


def html_text(html: str) -> str:
    p = _Visible()
    p.feed(html)
    p.close()
    return p.text()


def _pdf(path: Path, name: str) -> Document:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise TwofilesError(
            f"{name}: reading PDF needs pypdf: pip install 'twofiles[rag]'"
        ) from None
    try:
        pages = [(p.extract_text() or "").strip() for p in PdfReader(str(path)).pages]
    except (PdfReadError, ValueError, KeyError, OSError) as e:
        raise BadInputError(f"not a readable PDF ({e})", path=name) from None
    starts, parts, pos = [], [], 0
    for text in pages:
        starts.append(pos)
        parts.append(text)
        pos += len(text) + 2  # pages are joined by a blank line
    text = "\n\n".join(parts)

    def locate(start: int, end: int) -> str:
        a = bisect.bisect_right(starts, start)
        b = bisect.bisect_right(starts, max(start, end - 1))
        return f"page {a}" if a == b else f"pages {a}-{b}"

    return Document(source=name, text=text, locate=locate)


def _record_locator(record: int) -> Callable[[int, int], str]:
    return lambda start, end: f"record {record}"


def documents(path: Path, name: str, *, field: str = "text") -> Iterator[Document]:
    """The documents one file holds (one, or one per JSONL record)."""
    suffix = path.suffix.lower()
    if suffix in PDF_SUFFIXES:
        yield _pdf(path, name)
    elif suffix in JSONL_SUFFIXES:
        record = 0
        for lineno, raw in enumerate(_read_text(path, name).split("\n"), 1):
            if not raw.strip():
                continue
            record += 1
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                raise BadInputError(f"invalid JSON ({e.msg})", path=name, line=lineno) from None
            if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
                raise BadInputError(
                    f"expected an object with a string field {field!r} (--field)",
                    path=name,
                    line=lineno,
                )
            yield Document(
                source=f"{name}:{lineno}",
                text=obj[field],
                locate=_record_locator(record),
            )
    elif suffix in HTML_SUFFIXES:
        text = html_text(_read_text(path, name))
        yield Document(source=name, text=text, locate=line_locator(text))
    else:
        text = _read_text(path, name)
        yield Document(source=name, text=text, locate=line_locator(text))


__all__ = ["Document", "Walk", "documents", "html_text", "walk"]
