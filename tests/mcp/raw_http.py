"""Bad input over raw HTTP (http.client, no MCP SDK) against `airlock serve
--http`: each case prints one JSON line with the status and body, then a
valid request shows the server still serves. Run by host/cli/tests/mcp.rs.

    raw_http.py HOST:PORT   (caller token in AIRLOCK_TEST_TOKEN)
"""

import http.client
import json
import os
import sys

address = sys.argv[1]
token = os.environ["AIRLOCK_TEST_TOKEN"]
ACCEPT = "application/json, text/event-stream"


def post(body, headers=None, auth=True, session=None):
    h = {"Content-Type": "application/json", "Accept": ACCEPT, "MCP-Protocol-Version": "2025-11-25"}
    if auth:
        h["Authorization"] = "Bearer " + token
    if session:
        h["Mcp-Session-Id"] = session
    h.update(headers or {})
    conn = http.client.HTTPConnection(address, timeout=60)
    conn.request("POST", "/mcp", body=body, headers=h)
    response = conn.getresponse()
    data = response.read().decode("utf-8", "replace")
    result = {"status": response.status, "headers": {k.lower(): v for k, v in response.getheaders()}, "body": data}
    conn.close()
    return result


def jsonrpc(body):
    """The JSON-RPC message in a JSON or SSE response body."""
    for line in body.splitlines():
        if line.startswith("data:") and line[5:].strip():
            return json.loads(line[5:])
    try:
        return json.loads(body)
    except ValueError:
        return None


def emit(case, result):
    print(json.dumps({"case": case, "status": result["status"], "headers": result["headers"],
                      "message": jsonrpc(result["body"]), "body": result["body"][:500]}), flush=True)


init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}})
opened = post(init)
emit("initialize", opened)
session = opened["headers"].get("mcp-session-id")
post(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}), session=session)

emit("malformed_json", post("{not json", session=session))
emit("unknown_method", post(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/frobnicate"}), session=session))
emit("unknown_tool", post(json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                                      "params": {"name": "nope__nothing", "arguments": {}}}), session=session))
emit("no_approve_method", post(json.dumps({"jsonrpc": "2.0", "id": 4, "method": "approvals/approve",
                                           "params": {"id": "apr-x"}}), session=session))
emit("oversized", post(json.dumps({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
    "name": "text__stats", "arguments": {"text": "x" * (3 * 1024 * 1024)}}}), session=session))
emit("missing_token", post(init, auth=False))
emit("invalid_token", post(init, auth=False, headers={"Authorization": "Bearer wrong"}))
emit("wrong_origin", post(init, headers={"Origin": "https://evil.example"}))
emit("loopback_origin", post(init, headers={"Origin": "http://localhost:3000"}))
emit("wrong_host", post(init, headers={"Host": "evil.example:7410"}))
emit("still_serving", post(json.dumps({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {
    "name": "text__slugify", "arguments": {"text": "Still Here"}}}), session=session))
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
emit("traceparent", post(json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
    "name": "text__slugify", "arguments": {"text": "Traced"}, "_meta": {"traceparent": TRACEPARENT}}}),
    session=session))
emit("bad_traceparent", post(json.dumps({"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {
    "name": "text__slugify", "arguments": {"text": "Traced"}, "_meta": {"traceparent": "00-nope"}}}),
    session=session))
