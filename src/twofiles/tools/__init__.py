"""Tools a model may call: the contract, and the default set.

What it owns: `ToolResult` (what a tool returns) and the `Tool` protocol (a name, a description,
a JSON schema of its arguments, and `run`), both defined in base.py so that the tools import the
contract without importing this package; `default_tools` (the calculator and the Python
sandbox), `openai_tool_specs` (the tools as the OpenAI `tools` list, for chat templates and the
HTTP API) and `run_tool`. What it leaves to others: deciding when to call a tool and feeding
results back to the model (chat.respond), parsing tool calls out of generated text
(chat.ChatFormat).

A tool never raises for bad arguments or failing code: it returns `ToolResult(error=True)` with
a message the model (and the person reading) can act on, because a model's tool call is
untrusted input, not a programming error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twofiles.tools.base import Tool, ToolResult

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["Tool", "ToolResult", "default_tools", "openai_tool_specs", "run_tool"]


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
