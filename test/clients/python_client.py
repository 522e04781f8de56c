"""The Python MCP SDK's own client (`mcp` 2.3.0), driven as a Python user would, against the relay.

Used by test/e2e/python-client.test.ts. It connects, lists the tools, checks the agent's status, runs `echo`, and
writes then reads a file, and prints what it saw as one JSON object on stdout. The bearer token comes from the
MCP_BEARER_TOKEN environment variable and goes only into the Authorization header: never into the URL, the command
line (where `ps` shows it) or the output.

    MCP_BEARER_TOKEN=... python python_client.py URL --transport streamable-http --mode auto \
        --file /root/x.txt --content 'some text' --echo 'some words'

--mode auto is the SDK's default (probe `server/discover`, fall back to `initialize` on a 2025-era server);
--mode legacy forces the `initialize` handshake; --transport sse is the legacy HTTP+SSE client for /sse.
"""

import argparse
import asyncio
import json
import os
import shlex
import sys
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the Python MCP SDK client against a relay and print what it saw as JSON.")
    parser.add_argument("url", help="the relay's /mcp (streamable-http) or /sse (sse) URL, without any token in it")
    parser.add_argument("--transport", choices=["streamable-http", "sse"], required=True)
    parser.add_argument("--mode", choices=["auto", "legacy"], required=True, help="the SDK's version negotiation mode")
    parser.add_argument("--file", required=True, help="a path inside the agent's allowed roots for the write/read round trip")
    parser.add_argument("--content", required=True, help="what to write to --file (and expect back)")
    parser.add_argument("--echo", required=True, help="words for run_shell_command to echo")
    return parser.parse_args()


def bearer_headers() -> dict[str, str]:
    token = os.environ.get("MCP_BEARER_TOKEN")
    if not token:
        sys.exit("python_client: set MCP_BEARER_TOKEN to the relay's token (it is sent only as an Authorization header)")
    return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def connected(args: argparse.Namespace, headers: dict[str, str]):
    if args.transport == "sse":
        async with Client(sse_client(args.url, headers=headers), mode=args.mode) as client:
            yield client
        return
    # Streamable HTTP takes headers only through an HTTP client of the caller's (the SDK's documented way), which the
    # caller closes; the timeouts are the SDK's own defaults (30 s, 300 s to read a stream).
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0)) as http:
        async with Client(streamable_http_client(args.url, http_client=http), mode=args.mode) as client:
            yield client


async def call(client: Client, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(name, arguments)
    text = next((block.text for block in result.content if block.type == "text"), "")
    return {"is_error": bool(result.is_error), "structured": result.structured_content, "text": text}


async def session_report(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    # One call after another, in this order: the file is read only after it was written.
    tools = await client.list_tools()
    status = await call(client, "check_agent_status", {})
    shell = await call(client, "run_shell_command", {"command": f"echo {shlex.quote(args.echo)}"})
    written = await call(client, "write_file", {"path": args.file, "content": args.content})
    read = await call(client, "read_file", {"path": args.file})
    return {
        "protocol_version": client.protocol_version,
        # Which opening the SDK settled on: `server/discover` (2026-07-28 and later) or the `initialize` handshake.
        "opened_with": "discover" if client.session.discover_result is not None else "initialize",
        "server_name": client.server_info.name if client.server_info else None,
        "tools": [tool.name for tool in tools.tools],
        "status": status,
        "shell": shell,
        "write": written,
        "read": read,
    }


async def main() -> None:
    args = parse_args()
    async with connected(args, bearer_headers()) as client:
        report = await session_report(client, args)
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    asyncio.run(main())
