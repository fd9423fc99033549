"""Chat with a model in the terminal: streamed replies, a system prompt, sampling settings, tools.

Uses the model's own chat template when it has one (SmolLM2: ChatML), else twofiles' built-in
template (said on stderr: a base model was never taught it). On a terminal it is a REPL with
/reset, /save FILE, /load FILE, /help, /exit; with stdin from a pipe or file it reads one user
turn per line (commands work there too) and prints each reply on stdout, so it can be scripted.
Tool calls and their results are shown on stderr. --json prints a summary as the last stdout line.

With --rag DB each user turn retrieves --rag-k passages from a document index (twofiles rag index)
for the turn's message and the user message before it, puts them in the prompt as numbered,
delimited data (twofiles.rag.grounding), and lists the sources the reply cited on stderr. A
citation the reply did not write as [n] is attributed (--rag-cite: by overlap with a passage, or
by the model's constrained choice of a number) and says so. When the grounded prompt does not fit
the context, the lowest-ranked passages go first, then the oldest exchanges (a note on stderr).
--tools retrieve also lets the model search the index itself.

With --guard SPEC the turns run through twofiles.guard (input rules and classifier, spotlighting
of tool results and passages, the tool policy of --allow-tools / a persona's PARAMETER tools and
--allow-hosts, the output filter of --secret and the system prompt's password): each act is shown
on stderr as [guard] and listed in --json's "guard".
"""

from __future__ import annotations

import argparse
import os
import sys

from twofiles.cli.common import (
    add_device_flag,
    add_inference_flags,
    add_json_flag,
    add_sampling_flags,
    add_steer_flags,
    emit_json,
    no_compile_when_steering,
    persona_sampling,
    persona_summary,
    prepare_model,
    sampling_params,
    seeded,
)

HELP = """commands:
  /reset       start over (keeps the --system prompt)
  /save FILE   write the conversation as JSON ({"messages": [...]}, OpenAI form)
  /load FILE   continue a saved conversation
  /help        this text
  /exit        quit (also Ctrl-D)"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="MODEL",
        help="a twofiles model.safetensors, a .gguf file, a Hugging Face model directory, an alias (smollm2), or a registered persona (twofiles list)",
    )
    p.add_argument("--system", default=None, help="a system prompt (instead of a persona's SYSTEM)")
    add_sampling_flags(p, temperature=0.7, top_p=0.9, max_tokens=512, what="reply")
    p.add_argument(
        "--tools",
        default="",
        metavar="NAMES",
        help="comma-separated tools the model may call, e.g. calculator,python",
    )
    p.add_argument(
        "--max-tool-rounds", type=int, default=4, help="most tool-call rounds per reply (default 4)"
    )
    p.add_argument(
        "--workdir",
        default=None,
        metavar="DIR",
        help="keep what the python tool writes (plots) under DIR (default: a temporary directory, removed at exit)",
    )
    p.add_argument("--load", default=None, metavar="FILE", help="start from a saved conversation")
    p.add_argument(
        "--think",
        type=int,
        default=1,
        metavar="N",
        help="System 2: sample N replies per turn (one batch), majority-vote their final numbers, show the winner (default 1 = off)",
    )
    p.add_argument(
        "--scorer",
        default=None,
        metavar="reward:PATH",
        help="with --think N: best-of-N, the sample this reward model (twofiles reward) scores highest, instead of the majority vote",
    )
    p.add_argument(
        "--rag",
        default=None,
        metavar="DB",
        help="ground each reply in passages from this document index (twofiles rag index ... --db DB); "
        "the reply cites them as [n] and the cited sources are listed after it",
    )
    p.add_argument(
        "--rag-k", type=int, default=5, metavar="K", help="passages per turn with --rag (default 5)"
    )
    p.add_argument(
        "--rag-mode",
        choices=("hybrid", "bm25", "dense"),
        default="hybrid",
        help="how --rag ranks passages (default hybrid)",
    )
    p.add_argument(
        "--rag-cite",
        choices=("overlap", "constrained", "model"),  # grounding.CITE_METHODS (not imported:
        default="overlap",  # --help stays fast); the default is grounding.DEFAULT_CITE
        help="with --rag, when a reply writes no [n] itself: cite the passage each sentence "
        "overlaps most (overlap, the default), let the model choose a number in 1..k after its "
        "reply (constrained), or cite only what the model wrote (model). Citations the model "
        "wrote always win; each says how it was made",
    )
    p.add_argument(
        "--prefix-cache-mb",
        type=float,
        default=512,
        metavar="MB",
        help="keep the conversation's keys and values between turns, so each turn computes only "
        "its new tokens (default 512; 0 = off: every turn prefills the whole conversation)",
    )
    p.add_argument(
        "--guard",
        default="none",
        metavar="SPEC",
        help="guardrails: a comma list of input, classifier, spotlight, tools, output; all; or "
        "none (default). What they do is shown on stderr, and listed with --json",
    )
    p.add_argument(
        "--allow-tools",
        default=None,
        metavar="LIST",
        help="with --guard tools: the tools that may run (default: a persona's PARAMETER tools, "
        "else every tool given)",
    )
    p.add_argument(
        "--allow-hosts",
        default="",
        metavar="LIST",
        help="with --guard output/tools: hosts that links, images, URLs and email recipients may "
        "point to (default: none)",
    )
    p.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="TEXT",
        help="with --guard output/tools: a string no reply or tool argument may carry (repeat for "
        "more; passwords and canary tokens in the system prompt are found by themselves)",
    )
    add_steer_flags(p)
    add_device_flag(p)
    add_inference_flags(p, compile=True, layout=True)
    add_json_flag(p)


def _pick_tools(spec: str, workdir: str | None, index=None, k: int = 5) -> dict:
    from twofiles.errors import TwofilesError

    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        return {}
    from twofiles.tools import default_tools

    if workdir is not None:
        os.makedirs(workdir, exist_ok=True)
    available = default_tools(workdir)
    if index is not None:  # --rag: the model may also search the index itself
        from twofiles.rag.grounding import retrieve_tool

        available["retrieve"] = retrieve_tool(index, k=k)
    unknown = [n for n in names if n not in available]
    if "retrieve" in unknown:
        raise TwofilesError("--tools retrieve searches a document index: pass --rag DB")
    if unknown:
        raise TwofilesError(
            f"--tools: unknown tool {', '.join(unknown)} (available: {', '.join(sorted(available))})"
        )
    return {n: available[n] for n in names}


def _show(events, pieces: list[str], shown: list, out, err) -> list:
    """Print a reply's events as they come: text to `out`, tool calls and results to `err`.
    Returns the messages the reply appended."""
    import json

    for event in events:
        shown.append(event)
        kind, value = event
        if kind == "text":
            pieces.append(value)
            out.write(value)
            out.flush()
        elif kind == "tool_call":
            out.flush()
            print(
                f"\n[tool call] {value.name} {json.dumps(value.arguments, ensure_ascii=False)}",
                file=err,
                flush=True,
            )
        elif kind == "tool_result":
            print(f"[tool result] {value}", file=err, flush=True)
        elif kind == "guard":
            out.flush()
            why = "; ".join(value.reasons)
            print(f"\n[guard] {value.guard} ({value.stage}): {why}", file=err, flush=True)
        elif kind == "done":
            return value
    return []


def _think(loaded, fmt, messages, params, n: int, stats, out, err, scorer=None, picks=None) -> list:
    """One turn of System 2: n batched samples, majority vote on their final numbers; the
    first sample with the winning answer is the reply. With a reward model (`scorer`):
    best-of-n, the highest-scored sample (ties: the earliest), each pick added to `picks`."""
    from dataclasses import replace

    from twofiles.chat import Message
    from twofiles.system2 import think

    ids = fmt.prompt_ids(messages)
    p = replace(
        params, stop_token_ids=list(dict.fromkeys([*params.stop_token_ids, *fmt.stop_token_ids]))
    )
    v = think(loaded.model, loaded.tokenizer, ids, p, n)
    stats.tokens += v.tokens
    stats.prompt_tokens = len(ids)
    stats.prompt_tokens_seen += len(ids)  # the summary's prompt tokens, --think or not
    if scorer is not None:
        scores = scorer.score_batch([messages] * len(v.texts), v.texts)
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        print(
            f"[think] {n} samples, reward scores: {', '.join(f'{x:.3f}' for x in scores)} "
            f"-> sample {best + 1}",
            file=err,
            flush=True,
        )
        if picks is not None:
            picks.append({"samples": v.texts, "scores": scores, "chosen": best})
        out.write(v.texts[best])
        out.flush()
        return [Message("assistant", v.texts[best])]
    tally = ", ".join(f"{a} x{c}" for a, c in v.votes.items()) or "no numeric answers"
    print(
        f"[think] {n} samples: {tally} -> {v.answer if v.answer is not None else 'no majority (showing the first sample)'}",
        file=err,
        flush=True,
    )
    out.write(v.reply)
    out.flush()
    return [Message("assistant", v.reply)]


def run(args: argparse.Namespace) -> int:
    import contextlib
    import time
    from dataclasses import asdict, replace

    from twofiles.chat import (
        ChatFormat,
        Message,
        RespondStats,
        drop_oldest_exchange,
        load_conversation,
        messages_to_dicts,
        respond,
        save_conversation,
        tools_in_prompt,
    )
    from twofiles.engine import PromptTooLongError, encode_prompt
    from twofiles.errors import TwofilesError
    from twofiles.formats.resolve import resolve_model
    from twofiles.guard import parse_guards
    from twofiles.runtime import pick_device
    from twofiles.sae.steering import (
        REFERENCE_TEXT,
        parse_steer,
        prepare_steering,
        steer_paths_exist,
        steering,
    )
    from twofiles.tools import openai_tool_specs

    if args.max_tool_rounds < 0:
        raise TwofilesError(f"--max-tool-rounds {args.max_tool_rounds}: must be >= 0")
    if args.think < 1:
        raise TwofilesError(f"--think {args.think}: must be >= 1")
    if args.think > 1 and args.tools:
        raise TwofilesError(
            "--think and --tools do not combine: each sample would run its own tool calls"
        )
    if args.scorer is not None and args.think < 2:
        raise TwofilesError("--scorer picks the best of several samples: pass --think N (N >= 2)")
    if args.rag_k < 1:
        raise TwofilesError(f"--rag-k {args.rag_k}: must be >= 1")
    if args.think > 1 and parse_guards(args.guard):
        raise TwofilesError("--think and --guard do not combine: guards run in the chat loop")
    if args.prefix_cache_mb < 0:
        raise TwofilesError(f"--prefix-cache-mb {args.prefix_cache_mb}: must be >= 0 (0 = off)")
    index = None
    if args.rag is not None:
        from twofiles.rag import open_index

        index = open_index(args.rag)  # before the model loads: a wrong path fails at once
    params = sampling_params(args)
    seed = params.seed
    specs = [parse_steer(s) for s in args.steer]
    no_compile_when_steering(args, bool(specs))
    steer_paths_exist(specs)
    tools = _pick_tools(args.tools, args.workdir, index, args.rag_k)
    start = load_conversation(args.load) if args.load else []

    device, why = pick_device(args.device)
    t0 = time.perf_counter()
    loaded = resolve_model(args.model, device=device)
    fmt = ChatFormat.for_model(loaded)
    err = sys.stderr
    persona = getattr(loaded, "persona", None)
    if persona is not None:  # its PARAMETERs are defaults: the flags given win
        params = persona_sampling(params, args, loaded)
        seed = params.seed
    scorer = None
    if args.scorer is not None:
        from twofiles.scoring import load_reward_scorer, reward_path

        scorer = load_reward_scorer(reward_path(args.scorer, "--scorer"), device=device)
        print(f"best-of-{args.think} by the reward model {scorer.path}", file=err)
    print(
        f"model {args.model}: {sum(p.numel() for p in loaded.model.parameters()) / 1e6:.2f}M parameters, {device.type} ({why}), loaded in {time.perf_counter() - t0:.2f}s",
        file=err,
    )
    if persona is not None:
        print(persona_summary(persona), file=err)
    from twofiles.model import Transformer

    setup = None
    if isinstance(loaded.model, Transformer):  # the inference layout generate and serve use
        setup = prepare_model(loaded, args)
        print(f"inference: {'; '.join(setup.reasons)}", file=err)
    if fmt.builtin and not loaded.chat_template:
        print(
            "this model has no chat template: using twofiles' built-in one (a base model was never taught it: expect text, not answers)",
            file=err,
        )
    else:
        own = persona is not None and persona.template is not None
        print(f"chat template: {'the persona' if own else 'the model'}'s own", file=err)
    print(
        f"seed {seed}" + ("" if seeded(args, loaded) else " (pass --seed to repeat this chat)"),
        file=err,
    )
    describe_tools = tools_in_prompt(getattr(loaded, "provenance", None) or {})
    # the tool descriptions as respond renders them: --rag fits and cites that same prompt
    schemas = openai_tool_specs(tools) if tools and describe_tools else None
    if tools:
        how = (
            "described in the prompt"
            if describe_tools
            else "not described in the prompt (the model was finetuned to call them without a list)"
        )
        print(f"tools: {', '.join(tools)}, {how}", file=err)

    # the steering holds for the whole session (the prefix cache keeps steered keys and values);
    # "norm" units are measured on a fixed text, the same for every chat
    steers = prepare_steering(
        loaded.model, specs, encode_prompt(loaded.tokenizer, REFERENCE_TEXT), units=args.steer_units
    )
    for steer in steers:
        print(steer.describe(), file=err)
    session = contextlib.ExitStack()  # the hooks live on this run's model: nothing outlives it
    session.enter_context(steering(loaded.model, steers))
    guard = _make_guard(args, persona, tools)
    base = [Message("system", args.system)] if args.system is not None else []
    if persona is not None:  # its SYSTEM unless --system, then its few-shot MESSAGEs
        base += [Message(m["role"], m["content"]) for m in persona.prefix(args.system is not None)]
    messages: list[Message] = start or list(base)
    interactive = sys.stdin.isatty()
    if interactive:
        import readline  # noqa: F401  (line editing and history for input())

        print("type /help for commands", file=err)
    out = sys.stdout
    replies: list[str] = []
    stats = RespondStats()
    from twofiles.prefix_cache import cache_from_mb

    prefix_cache = cache_from_mb(args.prefix_cache_mb)  # one for the session: turns share it
    picks: list[dict] = []  # best-of-N: each turn's samples, their scores and the pick
    rag_turns: list[dict] = []  # --rag: each turn's query, passages and citations
    turn, n_calls, gen_seconds = 0, 0, 0.0
    guard_actions: list[dict] = []  # --guard: what each guard did, per turn

    while True:
        try:
            line = input("you> ") if interactive else sys.stdin.readline()
        except EOFError:
            break
        if not interactive and line == "":
            break  # end of the script
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        if line.startswith("/"):
            cmd, _, rest = line.partition(" ")
            rest = rest.strip()
            if cmd in ("/exit", "/quit"):
                break
            if cmd == "/reset":
                messages = list(base)
                print("(conversation reset)", file=err)
            elif cmd == "/save" and rest:
                save_conversation(rest, messages)
                print(f"(saved {len(messages)} messages to {rest})", file=err)
            elif cmd == "/load" and rest:
                try:
                    messages = load_conversation(rest)
                except TwofilesError as e:
                    if not interactive:
                        raise
                    print(f"error: {e}", file=err)
                    continue
                print(f"(loaded {len(messages)} messages from {rest})", file=err)
            else:
                print(HELP, file=err)
            continue

        messages.append(Message("user", line))
        query, passages = (
            _retrieve(index, messages, base, args) if index is not None else ("", None)
        )
        dropped = (0, 0)
        if passages is not None:  # cut to fit before generating: passages first, then old turns
            messages, passages, dropped = _fit(
                messages,
                passages,
                fmt,
                schemas,
                loaded.model.config.max_seq_len,
                params.max_tokens,
                err,
                mark=guard.mark_document if guard is not None else None,
            )
        # each turn its own die, reproducibly
        turn_params = replace(params, seed=None if seed is None else seed + 1000 * turn)
        turn += 1
        if interactive:
            out.write("assistant> ")
        t1 = time.perf_counter()
        pieces: list[str] = []
        added: list[Message] = []
        try:
            while True:
                shown: list = []  # the events seen: after any, a retry would repeat them
                try:
                    if args.think > 1:
                        added = _think(
                            loaded,
                            fmt,
                            _grounded(messages, passages),
                            turn_params,
                            args.think,
                            stats,
                            out,
                            err,
                            scorer,
                            picks,
                        )
                        pieces.append(added[0].content)
                    else:
                        events = respond(
                            loaded,
                            fmt,
                            _grounded(messages, passages, guard),
                            turn_params,
                            tools=tools or None,
                            max_tool_rounds=args.max_tool_rounds,
                            stats=stats,
                            describe_tools=describe_tools,
                            prefix_cache=prefix_cache,
                            guard=guard,
                        )
                        added = _show(events, pieces, shown, out, err)
                    break
                except PromptTooLongError:
                    shorter = drop_oldest_exchange(messages) if not shown else None
                    if shorter is None:
                        raise
                    # Forget the oldest exchange rather than refuse: the conversation goes on.
                    messages = shorter
                    print("(context full: forgot the oldest exchange)", file=err, flush=True)
            n_calls += sum(kind == "tool_call" for kind, _ in shown)
            guard_actions += [{"turn": turn, **asdict(v)} for kind, v in shown if kind == "guard"]
        except PromptTooLongError as e:
            messages.pop()
            if not interactive:
                raise
            print(f"\nerror: {e}; /reset to start over", file=err)
            continue
        except KeyboardInterrupt:
            messages.pop()
            print("\n(interrupted: reply dropped)", file=err)
            continue
        finally:
            gen_seconds += time.perf_counter() - t1
        out.write("\n")
        out.flush()
        messages.extend(added)
        replies.append("".join(pieces))
        if passages is not None:
            choose = None
            if args.rag_cite == "constrained":
                choose = _chooser(
                    loaded, fmt, schemas, messages[: -len(added) or None], passages, prefix_cache
                )
            record = _cite(query, passages, replies[-1], err, args.rag_cite, choose)
            record["passages_dropped"], record["exchanges_dropped"] = dropped
            rag_turns.append(record)

    tps = stats.tokens / gen_seconds if gen_seconds > 0 else 0.0
    print(
        f"{turn} turns, {stats.tokens} tokens generated in {gen_seconds:.2f}s ({tps:.1f} tok/s), {n_calls} tool calls"
        f"; {stats.prompt_tokens_reused} of {stats.prompt_tokens_seen} prompt tokens reused from earlier turns",
        file=err,
    )
    if args.json:
        emit_json(
            {
                "model": args.model,
                "steer": [steer.to_dict() for steer in steers],
                "inference": setup.to_dict() if setup is not None else None,
                "template": "builtin" if fmt.builtin else "model",
                "turns": turn,
                "replies": replies,
                "messages": messages_to_dicts(messages),
                "tool_calls": n_calls,
                "tokens": stats.tokens,
                "prompt_tokens": stats.prompt_tokens_seen,  # every round's prompt, summed
                "prompt_tokens_reused": stats.prompt_tokens_reused,  # of those, from the cache
                "seconds": round(gen_seconds, 4),
                "tokens_per_second": round(tps, 2),
                "seed": seed,
                **({"best_of_n": picks} if scorer is not None else {}),
                **(
                    {"guard": {"guards": sorted(guard.config.guards), "actions": guard_actions}}
                    if guard is not None
                    else {}
                ),
                **(
                    {
                        "rag": {
                            "db": args.rag,
                            "k": args.rag_k,
                            "cite": args.rag_cite,
                            "turns": rag_turns,
                        }
                    }
                    if index is not None
                    else {}
                ),
            }
        )
    if index is not None:
        index.close()
    session.close()
    return 0


def _make_guard(args: argparse.Namespace, persona, tools: dict):
    """The Guard of --guard (None when off): the allow-list from --allow-tools, else the
    persona's PARAMETER tools; hosts and secrets from their flags."""
    from twofiles.errors import BadInputError
    from twofiles.guard import Guard, GuardConfig, parse_guards

    guards = parse_guards(args.guard)
    if args.allow_tools is not None and "tools" not in guards:
        raise BadInputError("--allow-tools applies with --guard tools (or all)")
    if not guards:
        return None
    allowed = None
    if args.allow_tools is not None:
        allowed = frozenset(n.strip() for n in args.allow_tools.split(",") if n.strip())
    elif persona is not None and persona.tools is not None:
        allowed = frozenset(persona.tools)
    cfg = GuardConfig(
        guards=guards,
        secrets=tuple(s for s in args.secret if s),
        allowed_tools=allowed,
        allowed_hosts=tuple(h.strip().lower() for h in args.allow_hosts.split(",") if h.strip()),
    )
    guard = Guard.from_config(cfg)
    print(f"guards: {', '.join(sorted(guards))}", file=sys.stderr)
    return guard


def _retrieve(index, messages: list, base: list, args: argparse.Namespace) -> tuple[str, list]:
    """This turn's query (grounding.rag_query: the message and the user message before it, for
    follow-ups; a persona's few-shot turns in `base` are not the user's) and its passages."""
    from twofiles.rag.grounding import rag_query

    own = messages[len(base) :] if messages[: len(base)] == base else messages
    query = rag_query(own)
    return query, index.search(query, args.rag_k, args.rag_mode)


def _grounded(messages: list, passages: list | None, guard=None) -> list:
    """The prompt's messages: the conversation itself, or with --rag this turn's passages and
    the instruction to treat them as data (the conversation keeps the user's words alone);
    with --guard spotlight the passages are datamarked."""
    if passages is None:
        return messages
    from twofiles.rag.grounding import ground

    return ground(messages, passages, mark=guard.mark_document if guard is not None else None)


def _fit(
    messages: list, passages: list, fmt, schemas, context: int, max_tokens: int, err, mark=None
) -> tuple:
    """The conversation and passages whose grounded prompt (passages through `mark`, the
    spotlight guard's datamarking, as `_grounded` renders them) leaves room for a reply
    (grounding.reply_room), what was dropped, and a note on `err` when anything was."""
    from twofiles.rag.grounding import fit_grounded, reply_room

    room = reply_room(max_tokens, context)
    fitted = fit_grounded(
        messages,
        passages,
        lambda m: len(fmt.prompt_ids(m, tools=schemas)) + room <= context,
        mark=mark,
    )
    dropped = (fitted.passages_dropped, fitted.exchanges_dropped)
    if any(dropped):
        what = (
            [f"{dropped[0]} of {len(passages)} passages (the lowest ranked)"] if dropped[0] else []
        )
        if dropped[1]:
            what.append(
                "the oldest exchange" if dropped[1] == 1 else f"the {dropped[1]} oldest exchanges"
            )
        print(f"(context full: left out {' and '.join(what)})", file=err, flush=True)
    return fitted.messages, fitted.passages, dropped


def _chooser(loaded, fmt, schemas, messages: list, passages: list, prefix_cache):
    """--rag-cite constrained: the closure that asks the model for a passage number after its
    reply, over the grounded prompt of this turn as it was generated from (tools described
    included: it is in the prefix cache), rendered only when a choice is needed."""
    from twofiles.rag.grounding import choose_citation, ground

    def choose(reply: str):
        return choose_citation(
            loaded.model,
            loaded.tokenizer,
            fmt.prompt_ids(ground(messages, passages), tools=schemas),
            reply,
            len(passages),
            prefix_cache=prefix_cache,
        )

    return choose


def _cite(
    query: str, passages: list, reply: str, err, method: str = "overlap", choose=None
) -> dict:
    """After a grounded reply: the sources it cited on `err` (an attributed citation says how it
    was made); the turn's record for --json."""
    from twofiles.rag.grounding import cite, cited_sources, format_sources, passage_json

    cites = cite(reply, passages, method, choose=(lambda: choose(reply)) if choose else None)
    sources = cited_sources(passages, [c.n for c in cites])
    for s, c in zip(sources, cites):
        s["by"] = c.by
    if sources:
        print("sources:\n" + format_sources(sources), file=err, flush=True)
    else:
        print(f"(no sources cited; {len(passages)} passages were given)", file=err, flush=True)
    return {
        "query": query,
        "passages": [passage_json(p, n) for n, p in enumerate(passages, 1)],
        "citations": [c.n for c in cites],
        "citation_details": [c.to_json() for c in cites],
        "sources": sources,
    }
