"""List the registered personas (`twofiles create`): a table, or JSON with --json."""

from __future__ import annotations

import argparse

from twofiles.cli.common import add_json_flag, emit_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    from twofiles.formats import persona

    records = persona.list_records()
    rows = [
        {
            "name": r["name"],
            "from": r["from"],
            "adapters": r.get("adapters", []),
            "system": r.get("system"),
            "parameters": r.get("parameters", {}),
            "created": r.get("created", ""),
        }
        for r in records
    ]
    if args.json:
        emit_json({"registry": str(persona.registry_dir()), "personas": rows})
        return 0
    if not rows:
        print(
            f"no personas yet (twofiles create NAME -f Modelfile; registry: {persona.registry_dir()})"
        )
        return 0
    table = [("NAME", "FROM", "SYSTEM", "CREATED")]
    for r in rows:
        system = (r["system"] or "").replace("\n", " ")
        table.append(
            (
                r["name"],
                r["from"] + (f" + {len(r['adapters'])} adapters" if r["adapters"] else ""),
                system[:37] + "..." if len(system) > 40 else system,
                r["created"],
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    return 0
