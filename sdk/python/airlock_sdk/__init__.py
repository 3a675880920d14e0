"""Write Airlock tools in Python.

A tool is a plain function decorated with :func:`tool`. Its parameters are
the tool's arguments: the SDK derives the input JSON Schema (draft 2020-12)
from their type hints and the output schema from the return hint, turns the
JSON arguments into Python values (dataclasses, lists, ...) before the
function runs, and the result back into JSON after. The host validates every
call against the schemas; the SDK refuses what they refuse (unknown fields
included), so a function only ever sees well-typed arguments.

Example::

    from dataclasses import dataclass
    from typing import Annotated

    from airlock_sdk import InvalidInput, log, tool

    @dataclass
    class Shouted:
        text: str

    @tool
    def shout(text: Annotated[str, "The text to shout."]) -> Shouted:
        \"\"\"Upper-case the text and add an exclamation mark.\"\"\"
        if not text:
            raise InvalidInput("nothing to shout")
        log.info("shouting")
        return Shouted(text=text.upper() + "!")

Supported hints: ``str``, ``int``, ``float``, ``bool``, ``None``,
``list[T]``, ``dict[str, T]``, ``Optional[T]`` (``T | None``),
``Literal[...]`` of strings, numbers and booleans, ``Annotated[T, "a
description"]``, dataclasses and ``TypedDict`` classes (nested, not
recursive). Anything else (``Any``, ``tuple``, ``set``, unions of several
types, a parameter without a hint, ...) is refused with a
:class:`SchemaError` naming the function and parameter when the module is
imported, that is at build time: never a silently permissive schema.

A parameter annotated :class:`Context` is not an argument: it receives the
call's identity (call id, trace id, principal).

Errors: raise :class:`InvalidInput`, :class:`Failed` or :class:`Denied` (the
ABI's ``tool-error`` kinds). Any other exception becomes ``failed`` with its
type and message only: never a traceback.

Off WebAssembly (unit tests under plain ``python3``), :mod:`log` writes to
stderr and :mod:`workspace` is an in-memory store, so tool functions are
plain functions to test.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import sys
import typing
from typing import Any, Callable, Dict, List, Optional

from . import log, workspace

__all__ = [
    "Context",
    "Denied",
    "Failed",
    "InvalidInput",
    "SchemaError",
    "Tool",
    "ToolError",
    "call",
    "descriptors",
    "log",
    "tool",
    "tools",
    "workspace",
]

#: JSON Schema dialect of every schema the SDK writes.
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: Longest tool name, in bytes (the host's rule).
MAX_TOOL_NAME_BYTES = 64
#: Longest error message a tool returns, in characters.
MAX_ERROR_CHARS = 1024

_TOOL_NAME = re.compile(r"[a-z][a-z0-9_-]*\Z")


def is_valid_tool_name(name: str) -> bool:
    """Whether ``name`` is a valid tool name: lowercase ASCII letters,
    digits, ``-`` and ``_``, starting with a letter, at most 64 bytes,
    without ``__``. The host's own rule (``airlock-names``)."""
    return (
        isinstance(name, str)
        and len(name.encode()) <= MAX_TOOL_NAME_BYTES
        and _TOOL_NAME.match(name) is not None
        and "__" not in name
    )


@dataclasses.dataclass(frozen=True)
class Context:
    """Who is calling, as the host tells the tool. Authorisation has
    already happened in the host; this is for logging and scoping."""

    call_id: str = ""
    trace_id: str = ""
    principal: str = ""


class ToolError(Exception):
    """Why a tool did not produce a result (raise a subclass)."""

    kind = "failed"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = str(message)


class InvalidInput(ToolError):
    """The arguments match the schema but still cannot be used; say what
    to change."""

    kind = "invalid-input"


class Failed(ToolError):
    """The tool tried and failed."""

    kind = "failed"


class Denied(ToolError):
    """The tool refuses to do this."""

    kind = "denied"


class SchemaError(Exception):
    """A tool the SDK cannot describe: an invalid name, a missing
    description, or a type hint it cannot turn into a JSON Schema."""


# ---------------------------------------------------------------------------
# Type hints -> JSON Schema, and JSON values -> Python values.


class _Unsupported(Exception):
    """A hint without a schema; the message says which and why."""


def _describe(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__qualname__
    return repr(hint).replace("typing.", "")


def _is_typeddict(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, dict) and hasattr(hint, "__total__")


def _strip_annotated(hint: Any) -> tuple[Any, Optional[str]]:
    """``Annotated[T, "description", ...]`` -> ``(T, description)``."""
    description = None
    while typing.get_origin(hint) is typing.Annotated:
        args = typing.get_args(hint)
        hint = args[0]
        for extra in args[1:]:
            if isinstance(extra, str):
                description = extra
    return hint, description


def _optional_inner(hint: Any) -> Any:
    """``T`` for ``Optional[T]`` / ``T | None``, else ``None``."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or (sys.version_info >= (3, 10) and _is_union_type(hint)):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0]
        raise _Unsupported(
            f"unsupported type hint `{_describe(hint)}`: a union of several types "
            "(only `Optional[T]` is supported)"
        )
    return None


def _is_union_type(hint: Any) -> bool:
    import types

    return isinstance(hint, types.UnionType)


def _hints(cls: Any) -> Dict[str, Any]:
    try:
        return typing.get_type_hints(cls, include_extras=True)
    except Exception as e:  # a forward reference that does not resolve
        raise _Unsupported(f"cannot resolve the type hints of `{cls.__qualname__}`: {e}") from None


class _Schema:
    """Builds schemas for one tool; ``stack`` guards against recursion."""

    def __init__(self) -> None:
        self.stack: List[Any] = []

    def of(self, hint: Any) -> Dict[str, Any]:
        hint, description = _strip_annotated(hint)
        schema = self._bare(hint)
        if description is not None:
            schema = dict(schema, description=description)
        return schema

    def _bare(self, hint: Any) -> Dict[str, Any]:
        if hint is inspect.Parameter.empty:
            raise _Unsupported("no type hint")
        if hint is Context:
            # The host's to give, never a caller's: only a parameter of its
            # own (`ctx: Context`) receives it.
            raise _Unsupported(
                "a Context can only be a parameter of its own (`ctx: Context`), "
                "not part of an argument or a result"
            )
        inner = _optional_inner(hint)
        if inner is not None:
            inner_schema = self.of(inner)
            return {"anyOf": [inner_schema, {"type": "null"}]}
        if hint is type(None) or hint is None:
            return {"type": "null"}
        if hint is bool:
            return {"type": "boolean"}
        if hint is int:
            # What the host's JSON holds exactly: a larger integer would
            # reach the tool rounded to a float's precision.
            return {"type": "integer", "minimum": INT_MIN, "maximum": INT_MAX}
        if hint is float:
            return {"type": "number"}
        if hint is str:
            return {"type": "string"}
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin is list or origin is List:
            if len(args) != 1:
                raise _Unsupported(f"unsupported type hint `{_describe(hint)}`: say `list[T]`")
            return {"type": "array", "items": self.of(args[0])}
        if origin is dict or origin is Dict:
            if len(args) != 2 or args[0] is not str:
                raise _Unsupported(
                    f"unsupported type hint `{_describe(hint)}`: say `dict[str, T]`"
                )
            return {"type": "object", "additionalProperties": self.of(args[1])}
        if origin is typing.Literal:
            if not args or not all(
                isinstance(a, (str, int, float, bool)) or a is None for a in args
            ):
                raise _Unsupported(
                    f"unsupported type hint `{_describe(hint)}`: literals must be "
                    "strings, numbers, booleans or None"
                )
            return {"enum": list(args)}
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            fields = [(f.name, f) for f in dataclasses.fields(hint) if f.init]
            hints = _hints(hint)
            required = [
                name
                for name, f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            ]
            return self._object(hint, [(name, hints.get(name)) for name, _ in fields], required)
        if _is_typeddict(hint):
            hints = _hints(hint)
            required = sorted(getattr(hint, "__required_keys__", hints.keys()))
            return self._object(hint, list(hints.items()), [k for k in hints if k in required])
        if hint is list or hint is dict:
            raise _Unsupported(
                f"unsupported type hint `{_describe(hint)}`: say what it holds "
                f"(`{hint.__name__}[...]`)"
            )
        raise _Unsupported(f"unsupported type hint `{_describe(hint)}`")

    def _object(self, cls: Any, fields: List[tuple], required: List[str]) -> Dict[str, Any]:
        if cls in self.stack:
            raise _Unsupported(f"`{cls.__qualname__}` refers to itself (recursive types are not supported)")
        self.stack.append(cls)
        properties = {}
        for name, hint in fields:
            try:
                properties[name] = self.of(hint)
            except _Unsupported as e:
                raise _Unsupported(f"field `{cls.__qualname__}.{name}`: {e}") from None
        self.stack.pop()
        schema: Dict[str, Any] = {
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        }
        if required:
            schema["required"] = required
        # The class's own docstring only: `inspect.getdoc` falls back to a
        # base class's (a TypedDict without one would be described by
        # `dict`'s, a subclass by its parent's).
        doc = cls.__dict__.get("__doc__")
        doc = inspect.cleandoc(doc) if isinstance(doc, str) else None
        if doc and not doc.startswith(cls.__name__ + "("):  # not the dataclass's generated doc
            schema["description"] = doc
        return schema


class _Invalid(Exception):
    """An argument value that does not fit its hint."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path
        self.message = message


_JSON_TYPES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def _convert(value: Any, hint: Any, path: str) -> Any:
    """The JSON ``value`` as the Python value ``hint`` describes."""
    hint, _ = _strip_annotated(hint)
    inner = _optional_inner(hint)
    if inner is not None:
        return None if value is None else _convert(value, inner, path)
    if hint is type(None) or hint is None:
        if value is not None:
            raise _Invalid(path, "expected null")
        return None
    if hint is bool:
        if not isinstance(value, bool):
            raise _Invalid(path, "expected a boolean")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(path, "expected an integer")
        if isinstance(value, float):
            if not value.is_integer():
                raise _Invalid(path, "expected an integer")
            return int(value)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(path, "expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _Invalid(path, "expected a string")
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is list or origin is List:
        if not isinstance(value, list):
            raise _Invalid(path, "expected an array")
        return [_convert(v, args[0], f"{path}/{i}") for i, v in enumerate(value)]
    if origin is dict or origin is Dict:
        if not isinstance(value, dict):
            raise _Invalid(path, "expected an object")
        return {k: _convert(v, args[1], f"{path}/{_pointer(k)}") for k, v in value.items()}
    if origin is typing.Literal:
        for a in args:
            if _same_literal(value, a):
                return a
        raise _Invalid(path, "expected one of " + ", ".join(json.dumps(a) for a in args))
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        fields = {f.name: f for f in dataclasses.fields(hint) if f.init}
        hints = _hints(hint)
        kwargs = _fields(value, {name: hints.get(name) for name in fields}, path)
        missing = [
            name
            for name, f in fields.items()
            if name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise _Invalid(path, f"missing field `{missing[0]}`")
        try:
            return hint(**kwargs)
        except ToolError:
            raise
        except ValueError as e:
            # What the class's own checks (`__post_init__`) refuse with a
            # `ValueError` is the caller's input, not the tool failing (any
            # other exception there is the tool's bug).
            raise _Invalid(path, str(e)) from None
    if _is_typeddict(hint):
        hints = _hints(hint)
        result = _fields(value, hints, path)
        for name in getattr(hint, "__required_keys__", hints.keys()):
            if name not in result:
                raise _Invalid(path, f"missing field `{name}`")
        return result
    raise _Invalid(path, f"unsupported type hint `{_describe(hint)}`")


def _same_literal(value: Any, literal: Any) -> bool:
    """Whether `value` is `literal` as JSON Schema's `enum` compares: numbers
    by value (`1.0` is `1`), booleans apart from numbers, the rest by type
    and value."""
    numbers = (int, float)
    if isinstance(value, bool) or isinstance(literal, bool):
        return type(value) is type(literal) and value == literal
    if isinstance(value, numbers) and isinstance(literal, numbers):
        return value == literal
    return type(value) is type(literal) and value == literal


def _fields(value: Any, hints: Dict[str, Any], path: str) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(path, "expected an object")
    out = {}
    for key, v in value.items():
        if key not in hints:
            raise _Invalid(path, f"unknown field `{key}`")
        out[key] = _convert(v, hints[key], f"{path}/{_pointer(key)}")
    return out


def _pointer(key: str) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


#: The integers a tool's arguments and results may hold: the host's JSON
#: keeps 64-bit integers exactly and turns any other into a float, which
#: would round it (12345678901234567890123 → 12345678901234567741440).
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1


def _to_json(value: Any) -> Any:
    """A result as JSON-ready data: dataclasses become objects."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # The fields the schema has: `init=False` ones are left out of both.
        return {
            f.name: _to_json(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.init
        }
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not INT_MIN <= value <= INT_MAX:
        raise ValueError(
            f"the integer {value} is outside -2**63..2**64-1: the host would round it "
            "(return it as a string)"
        )
    return value


# ---------------------------------------------------------------------------
# Tools.


class Tool:
    """A registered tool: its name, description, schemas and function."""

    def __init__(self, func: Callable[..., Any], name: str, description: str):
        self.func = func
        self.name = name
        self.description = description
        where = f"tool `{name}` (function `{func.__qualname__}`)"
        if not is_valid_tool_name(name):
            raise SchemaError(
                f"{where}: the tool name must be lowercase ASCII letters, digits, `-` "
                "and `_`, starting with a letter, at most 64 bytes, without `__` "
                "(pass name=... to @tool)"
            )
        if not description.strip():
            raise SchemaError(f"{where}: no description (give the function a docstring)")
        try:
            hints = typing.get_type_hints(func, include_extras=True)
        except Exception as e:
            raise SchemaError(f"{where}: cannot resolve its type hints: {e}") from None
        self.params: Dict[str, Any] = {}
        self.context_param: Optional[str] = None
        self.required: List[str] = []
        properties = {}
        for param in inspect.signature(func).parameters.values():
            hint = hints.get(param.name, inspect.Parameter.empty)
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise SchemaError(
                    f"{where}, parameter `{param.name}`: *args and **kwargs cannot be "
                    "described by a schema"
                )
            if param.kind is param.POSITIONAL_ONLY:
                raise SchemaError(
                    f"{where}, parameter `{param.name}`: positional-only parameters "
                    "cannot be passed by name"
                )
            # `Annotated[Context, ...]` is the context too: taken as a
            # dataclass, it became an argument whose `principal` the caller
            # chose.
            if _strip_annotated(hint)[0] is Context:
                if self.context_param is not None:
                    raise SchemaError(
                        f"{where}, parameter `{param.name}`: a second Context parameter "
                        f"(`{self.context_param}` is one)"
                    )
                self.context_param = param.name
                continue
            try:
                properties[param.name] = _Schema().of(hint)
            except _Unsupported as e:
                raise SchemaError(f"{where}, parameter `{param.name}`: {e}") from None
            self.params[param.name] = hint
            if param.default is inspect.Parameter.empty:
                self.required.append(param.name)
        self.input_schema: Dict[str, Any] = {
            "$schema": SCHEMA_DIALECT,
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        }
        if self.required:
            self.input_schema["required"] = list(self.required)
        self.returns = hints.get("return", inspect.Parameter.empty)
        try:
            output = _Schema().of(self.returns)
        except _Unsupported as e:
            raise SchemaError(f"{where}, return value: {e}") from None
        self.output_schema: Dict[str, Any] = dict({"$schema": SCHEMA_DIALECT}, **output)

    def descriptor(self) -> Dict[str, Any]:
        """What the component's ``list`` reports for this tool."""
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": json.dumps(self.input_schema),
            "output_schema": json.dumps(self.output_schema),
        }

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def run(self, arguments: str, ctx: Context) -> str:
        """Run the tool on JSON ``arguments``; the result as JSON text.

        Raises :class:`ToolError` (any other exception of the function is
        mapped to :class:`Failed`)."""
        try:
            value = json.loads(arguments)
        except ValueError as e:
            raise InvalidInput(f"arguments are not JSON: {e}") from None
        if not isinstance(value, dict):
            raise InvalidInput("arguments must be a JSON object")
        kwargs = {}
        for key, v in value.items():
            if key not in self.params:
                raise InvalidInput(f"unknown field `{key}`")
            try:
                kwargs[key] = _convert(v, self.params[key], "/" + _pointer(key))
            except _Invalid as e:
                raise InvalidInput(f"at {e.path}: {e.message}") from None
        for name in self.required:
            if name not in kwargs:
                raise InvalidInput(f"missing field `{name}`")
        if self.context_param is not None:
            kwargs[self.context_param] = ctx
        try:
            result = self.func(**kwargs)
        except ToolError:
            raise
        except RecursionError:
            raise Failed("unexpected error: maximum recursion depth exceeded") from None
        except Exception as e:
            raise Failed(_unexpected(e)) from None
        try:
            return json.dumps(_to_json(result), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise Failed(f"cannot serialize the result: {e}") from None


def _unexpected(error: BaseException) -> str:
    """An unexpected exception as a tool error message: its type and
    message, bounded; never a traceback."""
    message = str(error)
    text = f"unexpected {type(error).__name__}: {message}" if message else (
        f"unexpected {type(error).__name__}"
    )
    return _bounded(text)


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


_REGISTRY: Dict[str, Tool] = {}


def tool(
    func: Optional[Callable[..., Any]] = None,
    *,
    name: Optional[str] = None,
    description: Optional[str] = None,
) -> Any:
    """Register a function as a tool: ``@tool`` or ``@tool(name="x-y",
    description="...")``. The name defaults to the function's name, the
    description to its docstring. Raises :class:`SchemaError` for a name,
    description or hint the SDK refuses, and for a name registered twice."""

    def register(f: Callable[..., Any]) -> Tool:
        tool_name = name if name is not None else f.__name__
        text = description if description is not None else (inspect.getdoc(f) or "")
        registered = Tool(f, tool_name, text)
        if tool_name in _REGISTRY:
            raise SchemaError(f"tool `{tool_name}` is registered twice")
        _REGISTRY[tool_name] = registered
        return registered

    if func is not None:
        return register(func)
    return register


def tools() -> List[Tool]:
    """The registered tools, in registration order."""
    return list(_REGISTRY.values())


def descriptors() -> List[Dict[str, Any]]:
    """What the component's ``list`` reports: one dict per tool."""
    return [t.descriptor() for t in _REGISTRY.values()]


def call(name: str, arguments: str, ctx: Optional[Context] = None) -> str:
    """Run the registered tool ``name`` on JSON ``arguments``, as the host
    would; the result as JSON text. Raises :class:`ToolError`."""
    found = _REGISTRY.get(name)
    if found is None:
        raise InvalidInput(f"this plugin has no tool named `{name}`")
    return found.run(arguments, ctx or Context())
