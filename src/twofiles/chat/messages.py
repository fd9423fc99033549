"""Conversations as data: typed messages in the ecosystem's OpenAI form, parsed and validated.

What it owns: `Message` / `ToolCall` (system / user / assistant / tool, assistant `tool_calls`
with JSON-string arguments, tool results with `tool_call_id`), `parse_messages` (errors name the
field: `messages[2].role: ...`), `read_conversations` (JSONL; errors name file:line), one
conversation's JSON file (`load_conversation` / `save_conversation`) and `drop_oldest_exchange`.
What it leaves to others: rendering them into token ids (chat/templates.py), the agent loop
(chat/agent.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from twofiles.errors import BadInputError
from twofiles.paths import read_jsonl

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = get_args(Role)


@dataclass
class ToolCall:
    name: str  # the tool to run
    arguments: dict[str, Any]  # its arguments, already decoded from JSON
    id: str = ""  # links the call to its tool message (OpenAI `tool_call_id`)

    def to_dict(self) -> dict[str, Any]:
        """OpenAI form: arguments as a JSON string."""
        return {
            "id": self.id,
            "type": "function",
            "function": {
                "name": self.name,
                "arguments": json.dumps(self.arguments, ensure_ascii=False),
            },
        }


@dataclass
class Message:
    role: Role
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)  # assistant only
    tool_call_id: str = ""  # tool only: which call this is the result of
    name: str = ""  # tool only (optional): the tool's name

    def to_dict(self) -> dict[str, Any]:
        """OpenAI form; empty optional fields are left out."""
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            d["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        if self.tool_call_id:
            d["tool_call_id"] = self.tool_call_id
        if self.name:
            d["name"] = self.name
        return d


def messages_to_dicts(messages: Sequence[Message]) -> list[dict[str, Any]]:
    return [m.to_dict() for m in messages]


# ---------------------------------------------------------------------------------------------
# Parsing and validation


def _content(value: Any, where: str) -> str:
    """A message's content: a string, null, or OpenAI's list of text parts."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for j, part in enumerate(value):
            if not (
                isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                raise BadInputError(
                    f"{where}[{j}]: only text parts are supported ({{'type': 'text', 'text': ...}})"
                )
            parts.append(part["text"])
        return "".join(parts)
    raise BadInputError(f"{where}: must be a string (got {type(value).__name__})")


def _tool_call(obj: Any, where: str) -> ToolCall:
    if not isinstance(obj, dict):
        raise BadInputError(f"{where}: must be an object (got {type(obj).__name__})")
    if obj.get("type", "function") != "function":
        raise BadInputError(f"{where}.type: must be 'function' (got {obj.get('type')!r})")
    # OpenAI nests name/arguments under "function"; Hugging Face data often has them flat.
    fn, fwhere = (obj["function"], f"{where}.function") if "function" in obj else (obj, where)
    if not isinstance(fn, dict):
        raise BadInputError(f"{fwhere}: must be an object (got {type(fn).__name__})")
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise BadInputError(f"{fwhere}.name: must be a non-empty string (got {name!r})")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise BadInputError(f"{fwhere}.arguments: not valid JSON ({e})") from None
    if not isinstance(args, dict):
        raise BadInputError(
            f"{fwhere}.arguments: must be a JSON object (got {type(args).__name__})"
        )
    call_id = obj.get("id", "")
    if call_id is None:
        call_id = ""
    if not isinstance(call_id, str):
        raise BadInputError(f"{where}.id: must be a string (got {type(call_id).__name__})")
    return ToolCall(name=name, arguments=args, id=call_id)


def parse_message(obj: Any, *, where: str = "message") -> Message:
    """One OpenAI-style message dict -> Message, or BadInputError naming the field at fault."""
    if isinstance(obj, Message):
        return obj
    if not isinstance(obj, dict):
        raise BadInputError(
            f"{where}: must be an object with 'role' and 'content' (got {type(obj).__name__})"
        )
    role = obj.get("role")
    if role not in ROLES:
        raise BadInputError(f"{where}.role: must be one of {', '.join(ROLES)} (got {role!r})")
    if "content" not in obj and not (role == "assistant" and obj.get("tool_calls")):
        raise BadInputError(f"{where}.content: missing")
    content = _content(obj.get("content"), f"{where}.content")
    calls_obj = obj.get("tool_calls") or []
    if calls_obj and role != "assistant":
        raise BadInputError(
            f"{where}.tool_calls: only assistant messages make tool calls (role is {role!r})"
        )
    if not isinstance(calls_obj, list):
        raise BadInputError(f"{where}.tool_calls: must be a list (got {type(calls_obj).__name__})")
    calls = [_tool_call(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls_obj)]
    extra = {}
    for key in ("tool_call_id", "name"):
        value = obj.get(key) or ""
        if not isinstance(value, str):
            raise BadInputError(f"{where}.{key}: must be a string (got {type(value).__name__})")
        extra[key] = value
    if extra["tool_call_id"] and role != "tool":
        raise BadInputError(
            f"{where}.tool_call_id: only tool messages answer a tool call (role is {role!r})"
        )
    return Message(role=role, content=content, tool_calls=calls, **extra)


def parse_messages(obj: Any, *, where: str = "messages") -> list[Message]:
    """A list of OpenAI-style message dicts (or Messages) -> typed Messages. BadInputError names
    the field at fault, e.g. `messages[2].role: must be one of ...`."""
    if not isinstance(obj, list):
        raise BadInputError(f"{where}: must be a list of messages (got {type(obj).__name__})")
    return [parse_message(m, where=f"{where}[{i}]") for i, m in enumerate(obj)]


def read_conversations(path: str | os.PathLike[str]) -> list[list[Message]]:
    """Conversations from a JSONL file, one `{"messages": [...]}` object per line (blank lines
    skipped). Errors name file:line and the field."""
    path = str(path)
    out: list[list[Message]] = []
    for lineno, obj in read_jsonl(path, "conversations file"):
        if not isinstance(obj, dict) or "messages" not in obj:
            raise BadInputError('expected an object with a "messages" list', path=path, line=lineno)
        try:
            msgs = parse_messages(obj["messages"])
        except BadInputError as e:
            raise BadInputError(str(e), path=path, line=lineno) from None
        if not msgs:
            raise BadInputError("messages: empty conversation", path=path, line=lineno)
        out.append(msgs)
    return out


def load_conversation(path: str | os.PathLike[str]) -> list[Message]:
    """One conversation from a JSON file: `{"messages": [...]}` or a bare list (what /save writes)."""
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise BadInputError("no such file", path=path) from None
    except UnicodeDecodeError:
        raise BadInputError("not UTF-8 text", path=path) from None
    except json.JSONDecodeError as e:
        raise BadInputError(f"invalid JSON ({e.msg})", path=path, line=e.lineno) from None
    if isinstance(obj, dict):
        if "messages" not in obj:
            raise BadInputError('expected {"messages": [...]} or a list of messages', path=path)
        obj = obj["messages"]
    try:
        return parse_messages(obj)
    except BadInputError as e:
        raise BadInputError(str(e), path=path) from None


def save_conversation(path: str | os.PathLike[str], messages: Sequence[Message]) -> None:
    """Write `{"messages": [...]}` (OpenAI form), atomically."""
    from twofiles.paths import atomic_write_bytes

    text = json.dumps({"messages": messages_to_dicts(messages)}, ensure_ascii=False, indent=1)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def drop_oldest_exchange(messages: Sequence[Message]) -> list[Message] | None:
    """The conversation without its oldest exchange (the first user message after the leading
    system messages, and the replies and tool results up to the next user message), for when it
    outgrows the model's context. None when only the system prompt and the last user message
    are left: there is nothing more to drop."""
    msgs = list(messages)
    first = next((i for i, m in enumerate(msgs) if m.role != "system"), len(msgs))
    users = [i for i, m in enumerate(msgs) if m.role == "user" and i > first]
    if not users:
        return None
    return msgs[:first] + msgs[users[0] :]


__all__ = [
    "ROLES",
    "Message",
    "Role",
    "ToolCall",
    "drop_oldest_exchange",
    "load_conversation",
    "messages_to_dicts",
    "parse_message",
    "parse_messages",
    "read_conversations",
    "save_conversation",
]
