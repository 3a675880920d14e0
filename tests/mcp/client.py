"""Drive `airlock serve` with the official Python MCP SDK (an independent
client implementation). Run by host/cli/tests/mcp.rs.

    client.py SCENARIO TRANSPORT TARGET [MODE]

TRANSPORT is `stdio` (TARGET: a JSON list, the server command line) or
`http` (TARGET: the /mcp URL; the token is in AIRLOCK_TEST_TOKEN). MODE is
the SDK's connect mode: `auto` (newest protocol both sides speak) or
`legacy` (the initialize handshake). Prints one JSON object per line on
stdout; the Rust test asserts on them.
"""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client


def emit(**fields):
    print(json.dumps(fields), flush=True)


def client_for(transport, target, mode, token=None, **kwargs):
    if transport == "stdio":
        command = json.loads(target)
        params = StdioServerParameters(command=command[0], args=command[1:], env=dict(os.environ))
        return Client(params, mode=mode, **kwargs)
    headers = {"Authorization": "Bearer " + (token or os.environ["AIRLOCK_TEST_TOKEN"])}
    http = httpx2.AsyncClient(headers=headers, timeout=60)
    return Client(streamable_http_client(target, http_client=http), mode=mode, **kwargs)


def result_json(result):
    meta = getattr(result, "meta", None) or {}
    return {
        "is_error": bool(result.is_error),
        "text": "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text"),
        "structured": result.structured_content,
        "meta": meta,
    }


CALLS = [
    ("text__stats", {"text": "one two three\nfour"}),
    ("text__slugify", {"text": "Hello, MCP World!"}),
    ("text__regex-extract", {"pattern": "\\d+", "text": "a1 b22 c333"}),
    ("text__case", {"text": "hello world", "to": "upper"}),
    ("json__query", {"document": {"a": [10, {"b": "x"}]}, "pointer": "/a/1/b"}),
    ("json__keys", {"document": {"b": 1, "a": 2}}),
    ("json__format", {"document": {"b": 1, "a": 2}, "sort_keys": True}),
    ("json__merge-patch", {"target": {"a": 1}, "patch": {"a": None, "b": 2}}),
    ("files__list", {"recursive": True}),
    ("files__read", {"path": "guides/limits.md", "max_bytes": 8}),
    ("files__search", {"query": "limit"}),
    ("notes__add", {"title": "mcp", "body": "from the python client"}),
    ("notes__get", {"title": "mcp"}),
    ("notes__list", {}),
    ("notes__archive", {}),
    ("notes__delete", {"title": "mcp"}),
    ("fetch__get", {"url": "https://example.com/"}),
]


async def session(transport, target, mode):
    async with client_for(transport, target, mode) as client:
        emit(event="connected", protocol=client.protocol_version)
        tools = await client.list_tools()
        emit(event="tools", tools=[t.model_dump(by_alias=True, exclude_none=True, mode="json") for t in tools.tools])
        for name, args in CALLS:
            result = await client.call_tool(name, args)
            emit(event="call", tool=name, **result_json(result))
            if name == "notes__archive" and not result.is_error:
                ref = json.loads(result.content[0].text)["ref"]
                archived = await client.call_tool("notes__read-archive", {"ref": ref})
                emit(event="call", tool="notes__read-archive", **result_json(archived))
        for label, name, args in [
            ("schema_invalid", "json__query", {"document": 1, "pointer": 5, "bogus": True}),
            ("tool_error", "text__regex-extract", {"pattern": "(", "text": "x"}),
            ("refused", "misbehave__now", {}),
            ("deadline", "misbehave__spin", {}),
            ("memory", "misbehave__grow", {"mb": 512}),
        ]:
            result = await client.call_tool(name, args)
            emit(event="call", tool=name, label=label, **result_json(result))
        try:
            await client.call_tool("nope__nothing", {})
            emit(event="unknown_tool", error=None)
        except Exception as error:  # the SDK raises MCPError for a JSON-RPC error
            emit(event="unknown_tool", error=getattr(error, "code", None), message=str(error))
        after = await client.call_tool("text__slugify", {"text": "Still Serving"})
        emit(event="call", tool="text__slugify", label="after", **result_json(after))


async def cancel(transport, target, mode):
    async with client_for(transport, target, mode) as client:
        with anyio.move_on_after(1.5) as scope:
            await client.call_tool("misbehave__spin", {})
        emit(event="cancelled", cancelled=scope.cancelled_caught)
        # max_concurrency = 1 and a one-minute deadline: this runs only if
        # the spinning guest was stopped.
        result = await client.call_tool("misbehave__echo", {"after": "cancel"})
        emit(event="call", tool="misbehave__echo", **result_json(result))


async def slow_call(transport, target, mode):
    # `spin` runs to its deadline; the test stops the server meanwhile.
    async with client_for(transport, target, mode) as client:
        emit(event="calling")
        try:
            result = await client.call_tool("misbehave__spin", {})
            emit(event="call", tool="misbehave__spin", **result_json(result))
        except Exception as error:  # the stream cut without an answer
            emit(event="call_failed", error=repr(error))


async def list_changed(transport, target, mode):
    changed = anyio.Event()

    async def on_message(message):
        root = getattr(message, "root", message)
        if getattr(root, "method", None) == "notifications/tools/list_changed":
            changed.set()

    async with client_for(transport, target, mode, message_handler=on_message) as client:
        before = [t.name for t in (await client.list_tools()).tools]
        if client.protocol_version >= "2026-07-28":
            async with client.listen(tools_list_changed=True) as sub:
                emit(event="ready", tools=before, protocol=client.protocol_version)
                with anyio.fail_after(60):
                    async for _event in sub:
                        break
        else:
            emit(event="ready", tools=before, protocol=client.protocol_version)
            with anyio.fail_after(60):
                await changed.wait()
        after = [t.name for t in (await client.list_tools(cache_mode="refresh")).tools]
        emit(event="changed", tools=after)


async def concurrent(transport, target, mode, count=20):
    results = []

    async def one(i):
        async with client_for(transport, target, mode) as client:
            result = await client.call_tool("text__slugify", {"text": f"Client {i}"})
            results.append(result_json(result))

    async with anyio.create_task_group() as group:
        for i in range(count):
            group.start_soon(one, i)
    emit(event="concurrent", results=results)


async def approval(transport, target, mode):
    base = target.rsplit("/mcp", 1)[0]
    async with client_for(transport, target, mode) as client:
        pending = await client.call_tool("misbehave__now", {})
        emit(event="pending", **result_json(pending))
        approval_id = pending.meta["airlock/approval"]["approval_id"]
        # A caller's token cannot decide.
        emit(event="caller_decides", status=decide(base, approval_id, os.environ["AIRLOCK_TEST_TOKEN"]))
        # The approver, out of band, with their own token.
        emit(event="approver_decides", status=decide(base, approval_id, os.environ["AIRLOCK_TEST_APPROVER_TOKEN"]))
        done = await client.call_tool(
            "misbehave__now", {}, meta={"airlock/approval_id": approval_id}
        )
        emit(event="approved", **result_json(done))


async def approval_cli(transport, target, mode):
    """The approver uses `airlock approvals … --server` (AIRLOCK_TEST_AIRLOCK)
    from "another terminal" while the server holds the data directory."""
    base = target.rsplit("/mcp", 1)[0]

    def cli(*args, token):
        env = dict(os.environ, AIRLOCK_APPROVER_TOKEN=token)
        env.pop("AIRLOCK_SERVER", None)
        done = subprocess.run(
            [os.environ["AIRLOCK_TEST_AIRLOCK"], "approvals", *args, "--server", base],
            env=env, capture_output=True, text=True, timeout=120,
        )
        return {"code": done.returncode, "stdout": done.stdout, "stderr": done.stderr}

    approver = os.environ["AIRLOCK_TEST_APPROVER_TOKEN"]
    async with client_for(transport, target, mode) as client:
        pending = await client.call_tool("misbehave__now", {}, meta={"airlock/reason": "clock check"})
        approval_id = pending.meta["airlock/approval"]["approval_id"]
        emit(event="pending_id", approval_id=approval_id)
        emit(event="cli_list", **cli("list", "--json", token=approver))
        emit(event="cli_show", **cli("show", approval_id, token=approver))
        emit(event="cli_caller_token", **cli("approve", approval_id, "--reason", "mine", token=os.environ["AIRLOCK_TEST_TOKEN"]))
        emit(event="cli_unknown", **cli("approve", "apr-0000", "--reason", "x", token=approver))
        emit(event="cli_approve", **cli("approve", approval_id, "--reason", "looked at it", token=approver))
        emit(event="cli_again", **cli("reject", approval_id, "--reason", "too late", token=approver))
        done = await client.call_tool(
            "misbehave__now", {}, meta={"airlock/approval_id": approval_id}
        )
        emit(event="approved", **result_json(done))


def pending_approvals(base):
    request = urllib.request.Request(
        f"{base}/approvals",
        headers={"Authorization": "Bearer " + os.environ["AIRLOCK_TEST_APPROVER_TOKEN"]},
    )
    with urllib.request.urlopen(request) as response:
        return [a for a in json.load(response)["approvals"] if a["state"] == "pending"]


async def principal_slots(transport, target, mode):
    """agent-1 (one call slot) waits for an approver in one call, holding
    no slot: its other calls are served meanwhile. Then it spins in a call
    (holding its slot): its next call is refused at once; agent-2 is served
    meanwhile; once agent-1's spinning is cancelled, agent-1 is served
    again. Last, the approver decides and the waiting call runs."""
    base = target.rsplit("/mcp", 1)[0]
    async with client_for(transport, target, mode) as first, \
            client_for(transport, target, mode, token=os.environ["AIRLOCK_TEST_TOKEN_2"]) as second, \
            client_for(transport, target, mode) as waiter:
        def busy_result(result):
            return result.is_error and result.meta["airlock/error"]["kind"] == "principal_busy"

        waited = {}

        async def wait_for_approval():
            waited["result"] = await waiter.call_tool("misbehave__now", {})

        async with anyio.create_task_group() as waiting:
            waiting.start_soon(wait_for_approval)
            with anyio.fail_after(60):
                while not pending_approvals(base):
                    await anyio.sleep(0.05)
            served = await first.call_tool("misbehave__echo", {"n": 0})
            emit(event="served_while_waiting", **result_json(served))

            async def hold():
                # Spins until its timeout, again and again: holds the slot
                # (a concurrent echo may have it at first).
                while True:
                    await first.call_tool("misbehave__spin", {})

            async with anyio.create_task_group() as group:
                group.start_soon(hold)
                busy = None
                with anyio.fail_after(60):
                    while busy is None:
                        await anyio.sleep(0.1)
                        result = await first.call_tool("misbehave__echo", {"n": 1})
                        if busy_result(result):
                            busy = result
                emit(event="first_busy", **result_json(busy))
                served = await second.call_tool("misbehave__echo", {"n": 2})
                emit(event="second_served", **result_json(served))
                group.cancel_scope.cancel()
            with anyio.fail_after(60):
                while True:
                    result = await first.call_tool("misbehave__echo", {"n": 3})
                    if not busy_result(result):
                        break
                    await anyio.sleep(0.1)
            emit(event="first_served_again", **result_json(result))
            approval_id = pending_approvals(base)[0]["id"]
            emit(event="decided", status=decide(base, approval_id, os.environ["AIRLOCK_TEST_APPROVER_TOKEN"]))
        emit(event="waited", **result_json(waited["result"]))


def decide(base, approval_id, token):
    request = urllib.request.Request(
        f"{base}/approvals/{approval_id}",
        data=json.dumps({"decision": "approve", "reason": "ok"}).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


async def oauth_keys(transport, target, mode):
    """An Ed25519 signing key for a test issuer: its public JWK and the
    private key (PKCS#8 PEM), made with `cryptography`."""
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    emit(event="keys", jwk={"kty": "OKP", "crv": "Ed25519", "kid": "k1", "use": "sig", "x": x}, pem=pem)


def mint(**overrides):
    """An access token from the test issuer, signed by PyJWT (an
    independent JWT implementation)."""
    import time

    import jwt

    claims = {
        "iss": os.environ["AIRLOCK_TEST_OAUTH_ISSUER"],
        "aud": os.environ["AIRLOCK_TEST_OAUTH_RESOURCE"],
        "sub": "agent-9",
        "iat": int(time.time()),
        "exp": int(time.time()) + 300,
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, os.environ["AIRLOCK_TEST_OAUTH_PEM"], algorithm="EdDSA", headers={"kid": "k1"})


def raw_initialize(target, token=None):
    """POST initialize with `token`: (status, WWW-Authenticate)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if token:
        headers["Authorization"] = "Bearer " + token
    request = urllib.request.Request(target, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers.get("WWW-Authenticate")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("WWW-Authenticate")


async def oauth(transport, target, mode):
    base = target.rsplit("/mcp", 1)[0]
    status, challenge = raw_initialize(target)
    emit(event="no_token", status=status, challenge=challenge)
    with urllib.request.urlopen(base + "/.well-known/oauth-protected-resource/mcp", timeout=30) as response:
        emit(event="metadata", metadata=json.loads(response.read()))
    for label, token in [
        ("expired", mint(exp=1_000_000)),
        ("wrong_aud", mint(aud="https://another.example/mcp")),
        ("no_exp", mint(exp=None)),
        ("unknown_issuer", mint(iss="https://evil.example")),
    ]:
        status, challenge = raw_initialize(target, token)
        emit(event="refused", label=label, status=status, challenge=challenge)
    async with client_for(transport, target, mode, token=mint()) as client:
        tools = await client.list_tools()
        result = await client.call_tool("text__slugify", {"text": "Hello OAuth"})
        emit(event="call", tools=len(tools.tools), **result_json(result))


SCENARIOS = {
    "session": session,
    "cancel": cancel,
    "list_changed": list_changed,
    "concurrent": concurrent,
    "approval": approval,
    "approval_cli": approval_cli,
    "principal_slots": principal_slots,
    "oauth_keys": oauth_keys,
    "oauth": oauth,
    "slow_call": slow_call,
}

if __name__ == "__main__":
    scenario, transport, target = sys.argv[1:4]
    mode = sys.argv[4] if len(sys.argv) > 4 else "auto"
    anyio.run(SCENARIOS[scenario], transport, target, mode)
