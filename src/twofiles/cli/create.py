"""Register a persona: a named model from an Ollama-style Modelfile.

  twofiles create mario -f Modelfile
  twofiles chat mario

The Modelfile (formats/persona.py) names a model (FROM) and the defaults to run it with:
SYSTEM, PARAMETER, TEMPLATE (Jinja), MESSAGE, ADAPTER, LICENSE. The persona is loaded once before
it is registered, so a FROM, an ADAPTER or a TEMPLATE that does not work is refused now, not at
the first chat. Registering a name again replaces it.
"""

from __future__ import annotations

import argparse
import sys

from twofiles.cli.common import add_json_flag, emit_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="the name to register, e.g. mario or mario:v2")
    p.add_argument(
        "-f",
        "--file",
        default="Modelfile",
        metavar="MODELFILE",
        help="the Modelfile (default ./Modelfile); its relative paths are relative to it",
    )
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    import time

    from twofiles.errors import BadInputError, TwofilesError
    from twofiles.formats import persona
    from twofiles.formats.resolve import load_persona

    t0 = time.perf_counter()
    record = persona.build_record(args.name, args.file)
    loaded = load_persona(record, device="cpu", dtype=None)
    if record["template"] is not None or record["system"] is not None or record["messages"]:
        from twofiles.chat import ChatFormat

        probe = persona.persona_of(record).prefix(False) + [{"role": "user", "content": "hi"}]
        try:
            ChatFormat.for_model(loaded).render_text(probe, add_generation_prompt=True)
        except TwofilesError as e:
            line = persona.instruction_line(record["modelfile"], "template")
            raise BadInputError(
                f"the persona cannot chat: {e}", path=record["modelfile"], line=line
            ) from None
    path = persona.save(record)
    print(
        f"created {record['name']} from {record['from']}"
        + (f" + {len(record['adapters'])} adapters file(s)" if record["adapters"] else "")
        + f" in {time.perf_counter() - t0:.2f}s -> {path}",
        file=sys.stderr,
    )
    if args.json:
        emit_json({"name": record["name"], "from": record["from"], "record": str(path)})
    return 0
