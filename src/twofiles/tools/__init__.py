"""Tools a model may call: the contract, and the default set.

What it owns: `ToolResult` (what a tool returns), the `Tool` protocol (a name, a description, a
JSON schema of its arguments, and `run`), `default_tools` (the calculator and the Python
sandbox) and `openai_tool_specs` (the tools as the OpenAI `tools` list, for chat templates and the
HTTP API). What it leaves to others: deciding when to call a tool and feeding results back to the
model (chat.respond), parsing tool calls out of generated text (chat.ChatFormat).

A tool never raises for bad arguments or failing code: it returns `ToolResult(error=True)` with
a message the model (and the person reading) can act on, because a model's tool call is
untrusted input, not a programming error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["Tool", "ToolResult", "default_tools", "openai_tool_specs", "run_tool"]


@dataclass
class ToolResult:
    content: str  # what the model reads back (output, value, or the error message)
    error: bool = False  # the call failed (bad arguments, exception, limit hit)
    files: list[str] = field(
        default_factory=list
    )  # absolute paths of files the call produced (e.g. PNG plots)


@runtime_checkable
class Tool(Protocol):
    name: str  # how the model calls it
    description: str  # one or two sentences the model reads to decide when to call it
    parameters: dict  # JSON schema (type "object") of the `arguments` dict

    def run(self, arguments: dict[str, Any]) -> ToolResult: ...


def default_tools(scratch_dir: str | None = None) -> dict[str, Tool]:
    """{"calculator": Calculator(), "python": PythonSandbox(scratch_dir)}. With `scratch_dir`,
    each Python run gets a fresh directory inside it (plots land there); without, inside a
    temporary directory that lives as long as the tool."""
    from twofiles.tools.calculator import Calculator
    from twofiles.tools.python import PythonSandbox

    tools: list[Tool] = [Calculator(), PythonSandbox(scratch_dir)]
    return {t.name: t for t in tools}


def openai_tool_specs(tools: Mapping[str, Tool]) -> list[dict[str, Any]]:
    """The tools in the OpenAI chat-completions `tools` format (what chat templates render)."""
    return [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
        }
        for t in tools.values()
    ]


def run_tool(tools: Mapping[str, Tool], name: str, arguments: Any) -> ToolResult:
    """Call a tool by name as a model asked; unknown names and non-dict arguments become error
    results, never exceptions."""
    tool = tools.get(name)
    if tool is None:
        return ToolResult(
            f"unknown tool {name!r}; available: {', '.join(sorted(tools)) or 'none'}", error=True
        )
    if not isinstance(arguments, dict):
        return ToolResult(
            f"arguments for {name!r} must be a JSON object, got {type(arguments).__name__}",
            error=True,
        )
    return tool.run(arguments)
