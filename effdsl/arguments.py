"""Checking the arguments of public functions against their type hints, as `EffError`s.

    @checked
    def to_dot(plan: Plan, *, base: Plan | None = None, detail: str = "stage") -> str: ...

    to_dot("b0")      # UsageError: to_dot(): plan must be Plan, not str

A misused public function must not fail deep inside with an `AttributeError`; `checked` looks
at each argument once, against the function's own annotations (classes, `X | None`, unions,
`Literal`, `Mapping`, `Sequence`, `Callable`), so a new parameter is checked as soon as it is
annotated. Values (NaN, bounds) remain each function's business. The hints are resolved on the
first call; a check is an `isinstance` per argument.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar, cast

from effdsl.errors import UsageError

_F = TypeVar("_F", bound=Callable[..., Any])


def checked(function: _F) -> _F:
    """Wrap `function` so that an argument of the wrong type raises `UsageError`."""
    signature = inspect.signature(function)
    hints: dict[str, Any] | None = None

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal hints
        if hints is None:
            hints = _hints(function, signature)
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as error:
            raise UsageError(f"{function.__name__}(): {error}") from None
        for name, value in bound.arguments.items():
            hint = hints.get(name)
            if hint is not None and not conforms(value, hint):
                raise UsageError(
                    f"{function.__name__}(): {name} must be {describe(hint)}, "
                    f"not {type(value).__name__}"
                )
        return function(*args, **kwargs)

    return cast(_F, wrapper)


def _hints(function: Callable[..., Any], signature: inspect.Signature) -> dict[str, Any]:
    """Each parameter's annotation, evaluated; one naming a type only imported for type
    checking (`torch.nn.Module`) is left unchecked."""
    hints = {}
    for name, parameter in signature.parameters.items():
        annotation = parameter.annotation
        if annotation is inspect.Parameter.empty:
            continue
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, function.__globals__)
            except Exception:
                continue
        hints[name] = annotation
    return hints


def conforms(value: Any, hint: Any) -> bool:
    """Whether `value` fits the annotation `hint` (shallowly: a container's items unchecked)."""
    if hint is Any or hint is object:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, option) for option in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin is typing.Annotated:
        return conforms(value, typing.get_args(hint)[0])
    if origin is not None:
        if origin is collections.abc.Callable:
            return callable(value)
        return isinstance(value, origin)
    if hint is type(None):
        return value is None
    if hint is float:  # an int is a float to Python's typing, a bool is not a number here
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a hint this checker does not know: let the function decide


def describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(option) for option in typing.get_args(hint))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(hint, "__name__", str(hint))
