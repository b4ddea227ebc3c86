"""A calculator tool: evaluates arithmetic safely, without `eval`."""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable

_OPERATORS: dict[type, Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}
_MAX_EXPONENT = 100


def _value(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_value(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise ValueError(f"the exponent {right} is too large (at most {_MAX_EXPONENT})")
        return _OPERATORS[type(node.op)](left, right)
    raise ValueError(f"{ast.unparse(node)!r} is not arithmetic: use numbers and + - * / // % **")


def evaluate(expression: str) -> float:
    """Evaluate an arithmetic expression and return its value.

    :param expression: numbers and the operators + - * / // % ** with parentheses, such as "2480 * 0.125 + 17".
    """
    tree = ast.parse(expression.replace(",", ""), mode="eval")
    result = _value(tree.body)
    return int(result) if isinstance(result, float) and result.is_integer() else result
