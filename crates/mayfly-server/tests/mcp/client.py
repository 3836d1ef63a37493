"""An MCP client for the broker's tests, on the official Python SDK (PyPI `mcp`).

Run with the python of a venv holding mcp 1.x (the 2025-11-25 `initialize` handshake) or mcp 2.x
(protocol 2026-07-28, adopted directly, no handshake):

    python client.py URL TOKEN CALLS_JSON

CALLS_JSON is a list of [tool, arguments]. Prints one JSON object: the protocol version
negotiated, the tools listed, and each call's result as the SDK parsed it (camelCase keys), or
{"jsonrpcError": {code, message, data}} for a call the server answered with an error. A refused
connection prints {"error": ...} and exits 1. With MAYFLY_MCP_ELICIT=url in the environment the
client declares URL-mode elicitation (it has a callback, never called by a stateless server).
"""

import asyncio
import json
import sys

import mcp


import os


def dump(result):
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


async def call(client, name, args):
    from mcp.shared import exceptions

    # McpError in mcp 1.x, MCPError in 2.x; both carry the JSON-RPC error as `.error`.
    error_type = getattr(exceptions, "McpError", None) or exceptions.MCPError
    try:
        return dump(await client.call_tool(name, args))
    except error_type as error:
        return {"jsonrpcError": dump(error.error)}


async def elicit(context, params):
    raise RuntimeError("the test client never answers an elicitation itself")


def callbacks():
    return {"elicitation_callback": elicit} if os.environ.get("MAYFLY_MCP_ELICIT") == "url" else {}


async def run_v1(url, headers, calls):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async with streamablehttp_client(url, headers=headers) as (read, write, _):
        async with ClientSession(read, write, **callbacks()) as session:
            init = await session.initialize()
            tools = await session.list_tools()
            results = [await call(session, name, args) for name, args in calls]
            return init.protocolVersion, [t.name for t in tools.tools], results


async def run_v2(url, headers, calls):
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode="2026-07-28", cache=None, **callbacks()) as client:
            tools = await client.list_tools()
            results = [await call(client, name, args) for name, args in calls]
            return client.protocol_version, [t.name for t in tools.tools], results


async def main():
    url, token, calls = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    major = int(mcp.__version__.split(".")[0]) if hasattr(mcp, "__version__") else None
    if major is None:
        from importlib.metadata import version

        major = int(version("mcp").split(".")[0])
    run = run_v1 if major < 2 else run_v2
    try:
        protocol, tools, results = await run(url, headers, calls)
    except BaseException as error:  # noqa: BLE001 - the test reads what failed
        while isinstance(error, BaseExceptionGroup) and error.exceptions:
            error = error.exceptions[0]
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
        sys.exit(1)
    print(json.dumps({"protocol": protocol, "tools": tools, "results": results}))


asyncio.run(main())
