"""Log lines for the current call (the ABI's ``log`` interface).

In a component the host keeps them, bounded (each message truncated, a byte
and line budget per call); a plugin's manifest needs ``log = true``. Off
WebAssembly (unit tests) they go to stderr. Logging returns no error, but a
message larger than the data one host call may pass (1 MiB, or twice the
plugin's ``max_output_kb`` when larger) traps: the call fails with
``host_data_limit``.
"""

from __future__ import annotations

import sys

try:  # in a component: the bindings componentize-py generates
    import wit_world as _world  # type: ignore[import-not-found]  # noqa: F401

    try:
        from wit_world.imports import log as _wit  # type: ignore[import-not-found]
    except ImportError:  # the manifest does not grant `log`: lines are dropped
        _wit = False
except ImportError:  # plain Python: unit tests
    _wit = None

__all__ = ["trace", "debug", "info", "warn", "error"]


def _log(level: str, message: object) -> None:
    text = str(message)
    if _wit is None:
        print(f"[{level}] {text}", file=sys.stderr)
        return
    if _wit is False:
        return
    _wit.log(getattr(_wit.Level, level.upper()), text)


def trace(message: object) -> None:
    """Very detailed tracing, normally discarded."""
    _log("trace", message)


def debug(message: object) -> None:
    """Information useful when debugging the plugin."""
    _log("debug", message)


def info(message: object) -> None:
    """Normal progress information."""
    _log("info", message)


def warn(message: object) -> None:
    """Something unexpected that the tool recovered from."""
    _log("warn", message)


def error(message: object) -> None:
    """Something failed."""
    _log("error", message)
