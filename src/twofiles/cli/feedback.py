"""Turn the thumbs and corrections people gave in the web UI into finetuning data.

twofiles feedback export --out data/feedback
  -> data/feedback/sft.jsonl          {"messages": [..., the good answer]}
     data/feedback/preferences.jsonl  {"messages": [...], "chosen": [...], "rejected": [...]}
twofiles feedback export --db feedback.sqlite --arena-db arena.sqlite --out data/feedback
twofiles feedback export --arena-db --out data/feedback     (both of the web UI's databases)
  (arena votes become preference pairs too: the winning reply over the losing one)

Without --db it reads the database the web UI writes ($TWOFILES_FEEDBACK_DB, else
~/.cache/twofiles/feedback.sqlite: twofiles.paths.default_db).
"""

from __future__ import annotations

import argparse
import sys

from twofiles.cli.common import add_json_flag, emit_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser(
        "export",
        help="write SFT and preference JSONL from a feedback database",
        description="Write OUT/sft.jsonl (corrected or upvoted answers) and OUT/preferences.jsonl "
        "(corrections over originals, upvoted over downvoted replies to the same conversation).",
    )
    p.add_argument(
        "--db",
        default=None,
        metavar="PATH",
        help="the feedback database (SQLite; default: the one the web UI writes, "
        "$TWOFILES_FEEDBACK_DB or ~/.cache/twofiles/feedback.sqlite)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument(
        "--arena-db",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="also turn the arena's votes into preference pairs (winner over loser; ties left "
        "out); without PATH: the arena database the web UI writes",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave malformed rows out (listed on stderr) instead of stopping",
    )
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    from twofiles.feedback import export_feedback
    from twofiles.paths import default_db

    args.db = str(args.db or default_db("feedback"))
    if args.arena_db == "":
        args.arena_db = str(default_db("arena"))
    summary = export_feedback(args.db, args.out, skip_bad=args.skip_bad, arena_db=args.arena_db)
    for why in summary.skipped:
        print(f"skipped {args.db}: {why}", file=sys.stderr)
    print(
        f"{summary.rows} feedback rows -> {summary.sft} SFT examples ({summary.sft_path}), "
        f"{summary.preferences} preference pairs ({summary.preferences_path}"
        + (f", {summary.arena_preferences} of them from arena votes)" if args.arena_db else ")")
        + (f"; {len(summary.skipped)} malformed rows skipped" if summary.skipped else "")
    )
    if args.json:
        emit_json(summary.to_dict())
    return 0
