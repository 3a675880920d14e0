"""The component's export of ``airlock:plugin/tools``: the registered tools,
listed and called through the bindings componentize-py generates. Imported
only inside a component build (``airlock plugin build``)."""

from __future__ import annotations

import sys
from typing import List

from componentize_py_types import Err  # type: ignore[import-not-found]
from wit_world import exports  # type: ignore[import-not-found]
from wit_world.imports import types  # type: ignore[import-not-found]

import airlock_sdk
from airlock_sdk import log


class _LogWriter:
    """``print`` and stray writes to stdout/stderr become log lines: the
    component has no terminal."""

    def __init__(self, write_line):
        self._write_line = write_line
        self._buffer = ""

    def write(self, text: str) -> int:
        self._buffer += str(text)
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            if line:
                self._write_line(line)
        return len(text)

    def flush(self) -> None:
        if self._buffer:
            self._write_line(self._buffer)
            self._buffer = ""


sys.stdout = _LogWriter(log.info)  # type: ignore[assignment]
sys.stderr = _LogWriter(log.warn)  # type: ignore[assignment]

_ERRORS = {
    "invalid-input": types.ToolError_InvalidInput,
    "failed": types.ToolError_Failed,
    "denied": types.ToolError_Denied,
}


class Tools(exports.Tools):
    """The ``tools`` interface over the SDK's registry."""

    def list(self) -> List[types.ToolDescriptor]:
        return [
            types.ToolDescriptor(
                name=d["name"],
                description=d["description"],
                input_schema=d["input_schema"],
                output_schema=d["output_schema"],
            )
            for d in airlock_sdk.descriptors()
        ]

    def call(self, name: str, arguments: str, ctx: types.CallContext) -> str:
        context = airlock_sdk.Context(
            call_id=ctx.call_id, trace_id=ctx.trace_id, principal=ctx.principal
        )
        try:
            return airlock_sdk.call(name, arguments, context)
        except airlock_sdk.ToolError as e:
            raise Err(_ERRORS.get(e.kind, types.ToolError_Failed)(airlock_sdk._bounded(e.message)))
        except BaseException as e:  # never a trap with a traceback
            raise Err(types.ToolError_Failed(airlock_sdk._unexpected(e)))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
