"""`twofiles redteam run MODEL` (or `twofiles redteam MODEL`): play an attack suite through the
chat loop under each guard column and report attack success per family.

    twofiles redteam smollm2 --suite builtin --guard each --out runs/redteam-smollm2 --json

Each attack is played in the scene of twofiles.redteam.scenario (a system prompt with a secret,
mock tools to misuse), in its channel (user message, tool output, retrieved document, an earlier
turn), greedy, once per column of --guard. Writes to --out: results.jsonl (one line per attack and
column), utility.jsonl (the skills tasks), summary.json, report.md (the table) and asr.png;
results.partial.jsonl grows while the run goes and is removed at the end. --out must be new,
empty, or a previous red-team run (whose files are replaced); anything else is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from twofiles.cli.common import (
    add_device_flag,
    add_inference_flags,
    add_json_flag,
    comma_list,
    emit_json,
)

OUT_FILES = (
    "results.jsonl",
    "utility.jsonl",
    "summary.json",
    "report.md",
    "asr.png",
    "results.partial.jsonl",
)
KIND = "redteam"  # summary.json's "kind": what marks a directory as a red-team run


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="MODEL",
        help="a twofiles model.safetensors, a .gguf file, a Hugging Face directory or an alias",
    )
    p.add_argument(
        "--suite",
        default="builtin",
        metavar="SUITE",
        help="builtin (every built-in family), builtin:FAMILY[,FAMILY], or attack-suite JSONL "
        "files, comma-separated (format: twofiles.redteam.suite)",
    )
    p.add_argument(
        "--guard",
        action="append",
        default=None,
        metavar="COLUMNS",
        help="guard columns to compare, separated by ';' or given as repeated flags: none, all, "
        "input, classifier, spotlight, tools, output, or a comma set (input,tools); 'each' = none, "
        "each guard alone, all (default: none and all)",
    )
    p.add_argument(
        "--families", default="", metavar="A,B", help="only these families (default: all)"
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="at most N malicious and N benign attacks per family",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed (decoding is greedy)")
    p.add_argument(
        "--max-tokens", type=int, default=64, help="most tokens per reply round (default 64)"
    )
    p.add_argument(
        "--utility",
        type=int,
        default=40,
        metavar="N",
        help="held-out skills tasks played under each column for utility (default 40; 0 = skip)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="where the run's files go")
    p.add_argument(
        "--batch-size",
        type=int,
        default=16,
        metavar="N",
        help="first replies decoded together, N at a time (default 16; 1 = one by one)",
    )
    p.add_argument(
        "--describe-tools",
        choices=("auto", "yes", "no"),
        default="auto",
        help="describe the tools in the prompt: auto follows the model's provenance "
        "(tools_in_prompt); no for a model finetuned to call them without a list whose file "
        "does not say so",
    )
    p.add_argument(
        "--memo",
        default=None,
        metavar="FILE",
        help="keep decoded rounds in FILE (JSONL) and reuse those a run on the same model kept "
        "there; secrets and canaries then derive from --seed and each attack's id (not fresh), "
        "so the prompts repeat and a later run (other columns, more attacks) decodes only new ones",
    )
    p.add_argument(
        "--no-memo",
        action="store_true",
        help="decode every round, even one another column already decoded (to time the memo)",
    )
    p.add_argument(
        "--progress",
        choices=("auto", "on", "off"),
        default="auto",
        help="progress bars on stderr, one per column (auto: when stderr is a terminal)",
    )
    add_device_flag(p)
    add_inference_flags(p, layout=True)
    add_json_flag(p)


def claim_out(out: Path) -> None:
    """Refuse an --out that holds anything but a previous red-team run: never destroy a user's
    work. A previous run's files are replaced at the end of this one (each atomically)."""
    import json

    from twofiles.errors import TwofilesError

    if out.exists() and not out.is_dir():
        raise TwofilesError(f"--out {out}: exists and is not a directory")
    if not out.exists():
        return
    present = sorted(p.name for p in out.iterdir())
    if not present:
        return
    other = [n for n in present if n not in OUT_FILES]
    ours = False
    try:
        ours = json.loads((out / "summary.json").read_text(encoding="utf-8")).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        ours = "results.partial.jsonl" in present and "summary.json" not in present
    if other or not ours:
        raise TwofilesError(
            f"--out {out} holds files that are not a red-team run's "
            f"({', '.join((other or present)[:5])}): choose another --out, or move them away"
        )


def load_attacks(spec: str) -> list:
    """The attacks of --suite: "builtin", "builtin:FAMILY[,FAMILY]" or JSONL files."""
    from twofiles.redteam.suite import load_suites

    return load_suites(spec)


def run(args: argparse.Namespace) -> int:
    import json
    import time

    from twofiles.cli.common import prepare_model
    from twofiles.errors import TwofilesError
    from twofiles.formats.resolve import resolve_model
    from twofiles.paths import atomic_write_bytes
    from twofiles.redteam import report
    from twofiles.redteam.runner import (
        PlaySettings,
        Runner,
        parse_columns,
        run_suite,
        select,
        utility_tasks,
    )
    from twofiles.runtime import pick_device

    if args.max_tokens < 1:
        raise TwofilesError(f"--max-tokens {args.max_tokens}: must be >= 1")
    if args.utility < 0:
        raise TwofilesError(f"--utility {args.utility}: must be >= 0 (0 = skip)")
    if args.batch_size < 1:
        raise TwofilesError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.memo and args.no_memo:
        raise TwofilesError("--memo keeps the memo on disk: it does not combine with --no-memo")
    if args.limit is not None and args.limit < 1:
        raise TwofilesError(f"--limit {args.limit}: must be >= 1")
    columns = parse_columns(args.guard)
    out = Path(args.out)
    claim_out(out)
    families = comma_list(args.families)
    attacks = select(load_attacks(args.suite), families, args.limit)  # bad suites fail here
    tasks = utility_tasks(args.utility, args.seed)

    err = sys.stderr
    device, why = pick_device(args.device)
    t0 = time.perf_counter()
    loaded = resolve_model(args.model, device=device)
    from twofiles.model import Transformer

    if isinstance(loaded.model, Transformer):
        print(f"inference: {'; '.join(prepare_model(loaded, args).reasons)}", file=err)
    runner = Runner(
        loaded,
        PlaySettings(max_tokens=args.max_tokens, seed=args.seed, batch=args.batch_size),
        memo=not args.no_memo,
        keyed=args.seed if args.memo else None,
        memo_path=Path(args.memo) if args.memo else None,
        classifier=_classifier(columns),
    )
    if args.describe_tools != "auto":
        runner.describe_tools = args.describe_tools == "yes"
    n_bad = sum(a.label == "malicious" for a in attacks)
    print(
        f"model {args.model} on {device.type} ({why}); {len(attacks)} attacks "
        f"({n_bad} malicious, {len(attacks) - n_bad} benign), {len(tasks)} utility tasks, "
        f"columns: {', '.join(c.name for c in columns)}",
        file=err,
        flush=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "results.partial.jsonl"
    progress = args.progress == "on" or (args.progress == "auto" and err.isatty())
    with partial.open("w", encoding="utf-8") as f:

        def keep(record: dict[str, Any]) -> None:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()

        records, useful = run_suite(
            runner, attacks, columns, tasks, on_record=keep, progress=progress
        )
    seconds = time.perf_counter() - t0
    summary = report.summarise(records, useful, [c.name for c in columns])
    memo = runner.memo.to_json() if runner.memo is not None else None
    meta = {
        "kind": KIND,
        "model": args.model,
        "suite": args.suite,
        "attacks": len(attacks),
        "malicious": n_bad,
        "benign": len(attacks) - n_bad,
        "utility_tasks": len(tasks),
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "tools_described": runner.describe_tools,
        "secrets": "derived from the seed (--memo)" if args.memo else "fresh",
        "device": device.type,
        "seconds": round(seconds, 2),
        "memo": memo,
    }
    memo_note = (
        f"memo: {memo['rounds_replayed']} of {memo['rounds_replayed'] + memo['rounds_decoded']} "
        f"rounds replayed, ~{memo['seconds_saved']:.0f}s of decoding saved"
        if memo
        else ""
    )

    def jsonl(rows: list[dict[str, Any]]) -> bytes:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()

    atomic_write_bytes(out / "results.jsonl", jsonl(records))
    atomic_write_bytes(out / "utility.jsonl", jsonl(useful))
    atomic_write_bytes(
        out / "report.md",
        report.render_report(summary, {**meta, "memo": memo_note}).encode(),
    )
    report.plot_asr(summary, out / "asr.png", title=f"attack success per family: {args.model}")
    atomic_write_bytes(
        out / "summary.json", (json.dumps({**meta, **summary}, indent=1) + "\n").encode()
    )
    partial.unlink(missing_ok=True)
    print(report.render_table(summary), file=err)
    print(f"{seconds:.1f}s; {memo_note or 'memo off'}; wrote {out}", file=err)
    if args.json:
        emit_json(
            {
                "out": str(out),
                "files": {n: str(out / n) for n in OUT_FILES[:5]},
                "model": args.model,
                "n": {"attacks": len(attacks), "malicious": n_bad, "utility_tasks": len(tasks)},
                "columns": {
                    c: {
                        "asr": summary["overall"][c],
                        "false_refusal": summary["false_refusal"][c],
                        "utility": summary["utility"][c],
                        "guard_ms": summary["guard_ms"][c],
                        "skipped": summary["skipped"][c],
                    }
                    for c in summary["columns"]
                },
                "memo": memo,
                "seconds": round(seconds, 2),
            }
        )
    return 0


def _classifier(columns: list) -> Any:
    """The guard's learned classifier, loaded (with its embedder) before the first play when a
    column uses it: a missing file fails now, and no play's guard time includes the load."""
    if not any("classifier" in c.guards for c in columns):
        return None
    from twofiles.guard import Guard, GuardConfig

    return Guard.from_config(GuardConfig(guards=frozenset({"classifier"}))).classifier
