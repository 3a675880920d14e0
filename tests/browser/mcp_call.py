"""One MCP tool call through the official Python MCP SDK, for
scripts/browser-tests: the agent's side of a call that waits for an
approver in the console.

    mcp_call.py URL TOOL ARGUMENTS_JSON META_JSON

The caller's token is in AIRLOCK_TEST_TOKEN. Prints one JSON line when
the call is sent ({"event": "sent"}) and one with its result
({"event": "result", "is_error": ..., "text": ...}).
"""

import json
import logging
import os
import sys

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


def emit(**fields):
    print(json.dumps(fields), flush=True)


async def main(url, tool, arguments, meta):
    headers = {"Authorization": "Bearer " + os.environ["AIRLOCK_TEST_TOKEN"]}
    http = httpx2.AsyncClient(headers=headers, timeout=180)
    async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
        emit(event="sent", tool=tool)
        result = await client.call_tool(tool, arguments, meta=meta)
        text = "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")
        emit(event="result", is_error=bool(result.is_error), text=text)


if __name__ == "__main__":
    # The SDK warns when the server answers a session's DELETE with 202.
    logging.basicConfig(level=logging.ERROR)
    url, tool, arguments, meta = sys.argv[1:5]
    anyio.run(main, url, tool, json.loads(arguments), json.loads(meta))
