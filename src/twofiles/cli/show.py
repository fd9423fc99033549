"""Show a registered persona: what it starts from, its defaults, and whether the files it needs
changed since it was created (--modelfile prints it as a Modelfile, --json as JSON)."""

from __future__ import annotations

import argparse

from twofiles.cli.common import add_json_flag, emit_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="a registered name (twofiles list)")
    p.add_argument(
        "--modelfile",
        action="store_true",
        help="print a Modelfile that `twofiles create` reads back to the same persona",
    )
    add_json_flag(p)


def _block(label: str, text: str) -> None:
    lines = text.split("\n")
    print(f"{label:<11}{lines[0]}")
    for line in lines[1:]:
        print(" " * 11 + line)


def run(args: argparse.Namespace) -> int:
    from twofiles.formats import persona

    record = persona.get(args.name)
    if args.modelfile:
        print(persona.to_modelfile(record), end="")
    # a file whose size or mtime moved is hashed again (a model can be GBs): only when shown
    status = persona.file_status(record) if args.json or not args.modelfile else {}
    if not args.modelfile and not args.json:
        print(f"{'name':<11}{record['name']}")
        print(f"{'from':<11}{record['from']}")
        if record.get("parent"):
            print(f"{'parent':<11}{record['parent']} (copied in when created)")
        for a in record.get("adapters", []):
            print(f"{'adapter':<11}{a}")
        if record.get("system") is not None:
            _block("system", record["system"])
        if record.get("template") is not None:
            _block("template", record["template"])
        for key, value in record.get("parameters", {}).items():
            for v in value if isinstance(value, list) else [value]:  # stop repeats
                print(f"{'parameter':<11}{key} {v}")
        for m in record.get("messages", []):
            _block("message", f"{m['role']}: {m['content']}")
        for text in record.get("license", []):
            _block("license", text)
        for path, state in status.items():
            print(f"{'file':<11}{path} ({state})")
        print(f"{'created':<11}{record.get('created', '')} from {record.get('modelfile', '')}")
    if args.json:
        emit_json({**record, "file_status": status})
    return 0
