"""Plugin state the host keeps between calls (the ABI's ``workspace``).

Linked only when the manifest grants ``capabilities.workspace``
(``"read-only"`` or ``"read-write"``). Keys are 1 to 512 bytes of UTF-8,
values and blobs at most 512 KiB. Every function raises
:class:`WorkspaceError` when the host refuses; a tool that lets it propagate
fails with its message.

Off WebAssembly (unit tests) the workspace is an in-memory store; call
:func:`reset` between tests.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List, Optional

try:  # in a component: the bindings componentize-py generates
    import wit_world as _world  # type: ignore[import-not-found]  # noqa: F401
    from componentize_py_types import Err as _Err  # type: ignore[import-not-found]

    try:
        from wit_world.imports import workspace as _wit  # type: ignore[import-not-found]
    except ImportError:  # the manifest does not grant the workspace
        _wit = False
except ImportError:  # plain Python: unit tests
    _wit = None
    _Err = None

__all__ = [
    "WorkspaceError",
    "get",
    "set",
    "delete",
    "list_keys",
    "put_blob",
    "get_blob",
    "get_json",
    "set_json",
    "reset",
]


class WorkspaceError(Exception):
    """The host refused a workspace operation. ``kind`` is ``read-only``,
    ``quota-exceeded``, ``invalid`` or ``unavailable``."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"workspace {kind}: {message}" if message else f"workspace {kind}")
        self.kind = kind


_KINDS = {
    "WorkspaceError_ReadOnly": "read-only",
    "WorkspaceError_QuotaExceeded": "quota-exceeded",
    "WorkspaceError_Invalid": "invalid",
    "WorkspaceError_Unavailable": "unavailable",
}


def _host(operation: str, *args: Any) -> Any:
    if _wit is False:
        raise WorkspaceError(
            "unavailable", "the plugin's manifest does not grant `capabilities.workspace`"
        )
    try:
        return getattr(_wit, operation)(*args)
    except _Err as e:  # type: ignore[misc]
        error = e.value
        raise WorkspaceError(
            _KINDS.get(type(error).__name__, "unavailable"), str(getattr(error, "value", "") or "")
        ) from None


_KEYS: Dict[str, bytes] = {}
_BLOBS: Dict[str, bytes] = {}


def _as_bytes(value: Any, what: str) -> bytes:
    # `bytes(5)` is five zero bytes and `bytes([1, 2])` two bytes: taken
    # as they come, an int or a list would be stored as something else.
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(
        f"{what} takes bytes, not {type(value).__name__}"
        + (" (use set_json for a JSON value)" if what == "workspace.set" else "")
    )


def _check_key(key: str) -> None:
    if not 1 <= len(key.encode()) <= 512:
        raise WorkspaceError("invalid", "a key is 1 to 512 bytes")


#: The largest value or blob the host stores.
_MAX_VALUE_BYTES = 512 * 1024


def _check_size(data: bytes, what: str) -> None:
    if len(data) > _MAX_VALUE_BYTES:
        raise WorkspaceError(
            "invalid", f"a {what} is at most {_MAX_VALUE_BYTES} bytes, this one is {len(data)}"
        )


def _check_ref(ref: str) -> None:
    digits = ref[len("sha256:"):] if ref.startswith("sha256:") else ""
    if len(digits) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise WorkspaceError("invalid", f"a blob ref is `sha256:` and 64 hex digits, not {ref[:80]!r}")


def get(key: str) -> Optional[bytes]:
    """The value stored under ``key``, if any."""
    if _wit is not None:  # a component
        return _host("get", key)
    _check_key(key)
    return _KEYS.get(key)


def set(key: str, value: bytes) -> None:  # noqa: A001 - the ABI's name
    """Store ``value`` under ``key``, replacing any previous value."""
    value = _as_bytes(value, "workspace.set")
    if _wit is not None:  # a component
        _host("set", key, value)
        return
    _check_key(key)
    _check_size(value, "value")
    _KEYS[key] = value


def delete(key: str) -> bool:
    """Remove ``key``; whether it existed."""
    if _wit is not None:  # a component
        return bool(_host("delete", key))
    _check_key(key)
    return _KEYS.pop(key, None) is not None


def list_keys(prefix: str = "", start_after: Optional[str] = None, limit: int = 100) -> List[str]:
    """Keys starting with ``prefix`` in byte order, at most ``limit``
    (capped at 1000), after ``start_after`` when given (for paging)."""
    limit = max(0, min(int(limit), 1000))
    if _wit is not None:  # a component
        return list(_host("list_keys", prefix, start_after, limit))
    keys = sorted((k for k in _KEYS if k.startswith(prefix)), key=lambda k: k.encode())
    if start_after is not None:
        keys = [k for k in keys if k.encode() > start_after.encode()]
    return keys[:limit]


def put_blob(data: bytes) -> str:
    """Store ``data`` as an immutable blob; its ref, ``sha256:<hex>``."""
    data = _as_bytes(data, "workspace.put_blob")
    if _wit is not None:  # a component
        return str(_host("put_blob", data))
    _check_size(data, "blob")
    ref = "sha256:" + hashlib.sha256(data).hexdigest()
    _BLOBS[ref] = data
    return ref


def get_blob(ref: str) -> Optional[bytes]:
    """The blob with ``ref``, if this plugin stored it."""
    if _wit is not None:  # a component
        return _host("get_blob", ref)
    _check_ref(ref)
    return _BLOBS.get(ref.lower())


def get_json(key: str) -> Any:
    """The JSON value stored under ``key`` (``None`` when absent)."""
    value = get(key)
    return None if value is None else json.loads(value)


def set_json(key: str, value: Any) -> None:
    """Store ``value`` as JSON under ``key``.

    Raises ``ValueError`` when ``value`` holds a NaN or an infinite float
    (JSON has no such number; Python would write ``NaN``, which no other
    JSON reader takes), or anything else ``json`` cannot encode."""
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"cannot store {key[:80]!r} as JSON: {e}") from None
    set(key, text.encode())


def reset() -> None:
    """Empty the in-memory workspace (unit tests only)."""
    _KEYS.clear()
    _BLOBS.clear()
