"""The contract between a model and its tools: what a tool is and what it returns.

What it owns: `ToolResult` and the `Tool` protocol. The tools themselves (calculator.py,
python.py) import this module, and the package (`twofiles.tools`) imports them, so the contract
lives here, below both. What it leaves to others: the tools, and choosing and calling them
(twofiles.tools).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


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


__all__ = ["Tool", "ToolResult"]
