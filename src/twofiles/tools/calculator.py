"""The calculator tool: arithmetic a model can trust, on untrusted input.

What it owns: parsing an expression with `ast` and evaluating a whitelist of node types by
walking the tree (never eval/exec), with every operation's cost bounded *before* it runs. What it
leaves to others: anything beyond arithmetic (the Python sandbox).

Accepted: int and float literals; + - * / // % ** (and ^ as a synonym for **, since that is how
people and models write powers); unary + and -; parentheses; comparisons (< <= > >= == !=);
the functions in `FUNCTIONS` and the constants in `CONSTANTS`. Anything else (names, attributes,
strings, subscripts, lambdas, keyword arguments) is refused with a message naming it.

Why each limit: `2**10**10` would take minutes and gigabytes, `9**9**9` forever, so powers,
products and shifts of integers are checked on bit lengths first; a deep tree could exhaust the
parser's recursion, so the text length and node count are capped; and a time bound catches
anything the others miss.
"""

from __future__ import annotations

import ast
import math
import operator
import time
from collections.abc import Callable
from typing import Any

from twofiles.tools.base import ToolResult

MAX_EXPRESSION_CHARS = 1000  # longer input is refused before parsing
MAX_NODES = 500  # syntax-tree nodes
MAX_INT_BITS = 4096  # ~1233 decimal digits: the largest integer any step may produce
MAX_FACTORIAL = 450  # 450! has ~1000 digits, under MAX_INT_BITS
MAX_COMBINATORIC_N = (
    1000  # comb(1000, 500) has ~300 digits; the result is checked against MAX_INT_BITS too
)
MAX_SECONDS = 1.0  # wall-clock bound, checked between operations

Number = int | float | bool


class CalculatorError(ValueError):
    """An expression the calculator refuses or cannot evaluate (the message says why)."""


def _check_int(x: Number) -> Number:
    if isinstance(x, int) and x.bit_length() > MAX_INT_BITS:
        raise CalculatorError(f"result too large (over {MAX_INT_BITS} bits)")
    if isinstance(x, complex):
        raise CalculatorError("complex result (e.g. a fractional power of a negative number)")
    return x


def _pow(a: Number, b: Number) -> Number:
    # bits of a**b ~ b * log2|a|: refuse before computing, not after
    if (
        isinstance(a, int)
        and isinstance(b, int)
        and b > 0
        and abs(a) > 1
        and b * math.log2(abs(a)) > MAX_INT_BITS
    ):
        raise CalculatorError(f"{a}**{b} is too large (over {MAX_INT_BITS} bits)")
    try:
        return a**b
    except ZeroDivisionError:
        raise CalculatorError("zero to a negative power") from None


def _mul(a: Number, b: Number) -> Number:
    if (
        isinstance(a, int)
        and isinstance(b, int)
        and a.bit_length() + b.bit_length() > MAX_INT_BITS + 1
    ):
        raise CalculatorError(f"product too large (over {MAX_INT_BITS} bits)")
    return a * b


def _factorial(n: Number) -> int:
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if not isinstance(n, int) or n < 0:
        raise CalculatorError("factorial needs a non-negative integer")
    if n > MAX_FACTORIAL:
        raise CalculatorError(f"factorial({n}) is too large (limit {MAX_FACTORIAL})")
    return math.factorial(n)


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int) or abs(ndigits) > 100:
        raise CalculatorError("round's digits must be an integer in [-100, 100]")
    return round(x, ndigits)


def _combinatoric(f: Callable[..., int]) -> Callable[..., int]:
    """comb / perm with n capped: comb(10**6, 5*10**5) has ~300,000 digits."""

    def call(n: Number, k: Number | None = None) -> int:
        if not isinstance(n, int) or n > MAX_COMBINATORIC_N:
            raise CalculatorError(f"{f.__name__} needs an integer n <= {MAX_COMBINATORIC_N}")
        if k is not None and not isinstance(k, int):
            raise CalculatorError(f"{f.__name__} needs an integer k")
        return f(n, k) if k is not None else f(n)

    return call


FUNCTIONS: dict[str, Callable[..., Number]] = {
    "sqrt": math.sqrt,
    "cbrt": lambda x: math.copysign(abs(x) ** (1 / 3), x),
    "exp": math.exp,
    "log": math.log,  # log(x) natural, log(x, base)
    "log10": math.log10,
    "log2": math.log2,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "atan2": math.atan2,
    "degrees": math.degrees,
    "radians": math.radians,
    "floor": math.floor,
    "ceil": math.ceil,
    "abs": abs,
    "round": _round,
    "min": min,
    "max": max,
    "factorial": _factorial,
    "gcd": math.gcd,
    "comb": _combinatoric(math.comb),
    "perm": _combinatoric(math.perm),
    "hypot": math.hypot,
}
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau, "inf": math.inf}

_BINARY: dict[type, Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _pow,
    ast.BitXor: _pow,  # "2^10" means a power to people and models, never xor
}
_UNARY: dict[type, Callable[[Number], Number]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_COMPARE: dict[type, Callable[[Number, Number], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_OP_NAMES = {
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.MatMult: "@",
    ast.Invert: "~",
    ast.Not: "not",
}


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Constant):
        return f"the {type(node.value).__name__} literal {node.value!r}"[:80]
    return {
        ast.Name: "names",
        ast.Attribute: "attribute access",
        ast.Subscript: "indexing",
        ast.Lambda: "lambda",
        ast.Tuple: "tuples (write numbers without thousands separators: 1000, not 1,000)",
        ast.List: "lists",
    }.get(type(node), type(node).__name__)


class _Evaluator:
    def __init__(self) -> None:
        self.deadline = time.monotonic() + MAX_SECONDS

    def __call__(self, node: ast.AST) -> Number:
        if time.monotonic() > self.deadline:
            raise CalculatorError(f"took longer than {MAX_SECONDS:g}s")
        if isinstance(node, ast.Expression):
            return self(node.body)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise CalculatorError(f"unsupported: {_describe(node)}")
            return _check_int(node.value)
        if isinstance(node, ast.BinOp):
            op = _BINARY.get(type(node.op))
            if op is None:
                raise CalculatorError(
                    f"unsupported operator {_OP_NAMES.get(type(node.op), type(node.op).__name__)}"
                )
            return _check_int(op(self(node.left), self(node.right)))
        if isinstance(node, ast.UnaryOp):
            op1 = _UNARY.get(type(node.op))
            if op1 is None:
                raise CalculatorError(
                    f"unsupported operator {_OP_NAMES.get(type(node.op), type(node.op).__name__)}"
                )
            return op1(self(node.operand))
        if isinstance(node, ast.Compare):
            left = self(node.left)
            for op_node, right_node in zip(node.ops, node.comparators):
                cmp = _COMPARE.get(type(op_node))
                if cmp is None:
                    raise CalculatorError(f"unsupported comparison {type(op_node).__name__}")
                right = self(right_node)
                if not cmp(left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.Name):
            if node.id in CONSTANTS:
                return CONSTANTS[node.id]
            hint = " (a function: call it, e.g. sqrt(2))" if node.id in FUNCTIONS else ""
            raise CalculatorError(
                f"unknown name {node.id!r}{hint}; constants: {', '.join(CONSTANTS)}"
            )
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                raise CalculatorError(
                    f"unsupported: calling {_describe(node.func)}; functions: {', '.join(FUNCTIONS)}"
                )
            if node.func.id not in FUNCTIONS:
                raise CalculatorError(
                    f"unknown function {node.func.id!r}; functions: {', '.join(FUNCTIONS)}"
                )
            if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
                raise CalculatorError("functions take plain positional arguments only")
            args = [self(a) for a in node.args]
            try:
                return _check_int(FUNCTIONS[node.func.id](*args))
            except TypeError as e:
                raise CalculatorError(f"{node.func.id}: {e}") from None
        raise CalculatorError(f"unsupported: {_describe(node)}")


def evaluate(expression: str) -> Number:
    """The value of an arithmetic expression; raises CalculatorError (a ValueError) saying why
    when it is refused or fails (syntax, domain, division by zero, a limit)."""
    if not isinstance(expression, str):
        raise CalculatorError(f"expression must be a string, got {type(expression).__name__}")
    text = expression.strip().replace("×", "*").replace("÷", "/").replace("−", "-")
    if not text:
        raise CalculatorError("empty expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise CalculatorError(f"syntax error at column {e.offset}: {e.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise CalculatorError("expression too deeply nested") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalculatorError(f"expression has more than {MAX_NODES} parts")
    try:
        return _Evaluator()(tree)
    except CalculatorError:
        raise
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except OverflowError:
        raise CalculatorError("numeric overflow (result too large for a float)") from None
    except ValueError as e:  # math domain errors: sqrt(-1), log(0)
        raise CalculatorError(f"math error: {e}") from None
    except RecursionError:
        raise CalculatorError("expression too deeply nested") from None


def format_number(x: Number) -> str:
    """How results read back to the model: ints exact, floats to 15 significant digits (so
    0.1 + 0.2 reads 0.3), whole floats without a trailing .0 when they fit exactly."""
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if math.isnan(x) or math.isinf(x):
        return str(x)
    if x.is_integer() and abs(x) < 2**53:
        return str(int(x))
    return f"{x:.15g}"


class Calculator:
    """The calculator as a Tool: arguments {"expression": "..."}."""

    name = "calculator"
    description = "Evaluate an arithmetic expression exactly, e.g. (17 * 23 + 4) / 3 or sqrt(2) * pi. Supports + - * / // % ** and sqrt, log, exp, sin, cos, tan, floor, ceil, abs, round, min, max, factorial; constants pi and e."
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            "expression": {
                "type": "string",
                "description": "the expression to evaluate, e.g. 3 * (4 + 5) ** 2",
            }
        },
        "required": ["expression"],
        "additionalProperties": False,
    }

    def run(self, arguments: dict[str, Any]) -> ToolResult:
        expression = arguments.get("expression") if isinstance(arguments, dict) else None
        if expression is None:
            return ToolResult(
                'missing argument "expression" (a string such as "2 + 2")', error=True
            )
        try:
            return ToolResult(format_number(evaluate(expression)))
        except CalculatorError as e:
            return ToolResult(f"calculator error: {e}", error=True)
