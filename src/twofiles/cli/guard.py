"""`twofiles guard scan FILE.jsonl`: the input guards' verdict on each line of a file.

    twofiles guard scan prompts.jsonl --field text --guard input,classifier --json

One verdict per line: with --json a JSON line each ({"line", "flagged", "score", "reasons"}),
then a summary as the last line (counts; with a `label` field, 0/1 or malicious/benign:
precision, recall and the false-positive rate); a table without it. Every line is read and
checked before anything is scanned: a bad one stops the run (exit 2) naming file:line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

_LABELS = {"1": 1, "0": 0, "true": 1, "false": 0, "malicious": 1, "benign": 0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="guard_cmd", metavar="CMD", required=True)
    p = sub.add_parser(
        "scan",
        help="one verdict (flagged, score, reasons) per line of a JSONL file",
        description="one verdict (flagged, score, reasons) per line of a JSONL file",
    )
    p.add_argument("file", metavar="FILE.jsonl", help="one JSON object per line ('-': stdin)")
    p.add_argument("--field", default="text", help="the field holding the text (default text)")
    p.add_argument(
        "--guard",
        default="input,classifier",
        help="the input guards to run: input (rules + decode-and-rescan), classifier, or both "
        "(default input,classifier)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="the classifier's score from which a line is flagged (default: the one the "
        "shipped classifier chose on validation)",
    )
    p.add_argument("--json", action="store_true", help="JSON lines, the summary last")


def _objects(path: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) per non-blank line of the file, or of stdin for '-'."""
    import json

    from twofiles.errors import BadInputError
    from twofiles.paths import read_jsonl

    if path != "-":
        yield from read_jsonl(path, "prompts file")
        return
    try:
        data = sys.stdin.read()
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(f"cannot read stdin: {e}") from None
    # split on newlines only, as read_jsonl does: a JSON string may hold a raw U+2028
    for n, line in enumerate(data.split("\n"), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInputError(
                f"invalid JSON ({e.msg} at column {e.colno})", path=path, line=n
            ) from None


def read_rows(path: str, field: str) -> list[tuple[int, str, int | None]]:
    """(line number, text, label or None) per non-blank line (also bench/guard.py's reader)."""
    from twofiles.errors import BadInputError

    rows = []
    for n, obj in _objects(path):
        if not isinstance(obj, dict):
            raise BadInputError(
                f"expected a JSON object, got {type(obj).__name__}", path=path, line=n
            )
        text = obj.get(field)
        if not isinstance(text, str):
            got = "missing" if text is None else f"a {type(text).__name__}"
            raise BadInputError(f"field {field!r} is {got}, not a string", path=path, line=n)
        label = None
        if "label" in obj:
            label = _LABELS.get(str(obj["label"]).strip().lower())
            if label is None:
                raise BadInputError(
                    f"label {obj['label']!r}: expected 0/1 or malicious/benign", path=path, line=n
                )
        rows.append((n, text, label))
    return rows


def run(args: argparse.Namespace) -> int:
    import json
    import time

    from twofiles.errors import BadInputError
    from twofiles.guard import Guard, GuardConfig, parse_guards

    guards = parse_guards(args.guard)
    if not guards or not guards <= {"input", "classifier"}:
        raise BadInputError(f"--guard {args.guard}: scan runs the input guards: input, classifier")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise BadInputError(f"--threshold {args.threshold}: must be in [0, 1]")
    rows = read_rows(args.file, args.field)
    guard = Guard.from_config(GuardConfig(guards=guards, threshold=args.threshold))
    t0 = time.perf_counter()
    verdicts = []
    for i in range(0, len(rows), 64):  # the classifier embeds a batch at once
        verdicts += guard.scan_many([text for _, text, _ in rows[i : i + 64]])
    seconds = time.perf_counter() - t0

    summary: dict = {
        "file": args.file,
        "lines": len(rows),
        "flagged": sum(v.flagged for v in verdicts),
        "guards": sorted(guards),
        "threshold": round(guard.threshold, 4) if "classifier" in guards else None,
        "ms_per_line": round(1000 * seconds / max(1, len(rows)), 3),
    }
    labelled = [(v.flagged, y) for v, (_, _, y) in zip(verdicts, rows) if y is not None]
    if labelled:
        tp = sum(f and y == 1 for f, y in labelled)
        fp = sum(f and y == 0 for f, y in labelled)
        fn = sum(not f and y == 1 for f, y in labelled)
        tn = sum(not f and y == 0 for f, y in labelled)
        summary.update(
            labelled=len(labelled),
            tp=tp,
            fp=fp,
            fn=fn,
            tn=tn,
            precision=round(tp / (tp + fp), 4) if tp + fp else None,
            recall=round(tp / (tp + fn), 4) if tp + fn else None,
            false_positive_rate=round(fp / (fp + tn), 4) if fp + tn else None,
        )
    out = sys.stdout
    if args.json:
        for (n, _, _), v in zip(rows, verdicts):
            out.write(json.dumps({"line": n, **v.to_json()}) + "\n")
        out.flush()
        print(json.dumps(summary), flush=True)
        return 0
    print(f"{'line':>6}  {'flag':4}  {'score':>5}  reasons", file=out)
    for (n, _, _), v in zip(rows, verdicts):
        flag = "yes" if v.flagged else "-"
        print(f"{n:>6}  {flag:4}  {v.score:5.2f}  {', '.join(v.reasons)[:100]}", file=out)
    line = f"{summary['flagged']} of {summary['lines']} lines flagged ({summary['ms_per_line']} ms/line)"
    if labelled:

        def pct(x: float | None) -> str:
            return "n/a" if x is None else f"{100 * x:.1f}%"

        line += (
            f"; precision {pct(summary['precision'])}, recall {pct(summary['recall'])}, "
            f"false positives {pct(summary['false_positive_rate'])} of benign"
        )
    print(line, file=out)
    return 0
