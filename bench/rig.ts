// What the scenarios drive: a real relay and a real agent on loopback (started by the test helpers, exactly as
// the end-to-end tests start them), MCP clients on /mcp over both paths the relay serves, and the files they
// read. Also the one way the bench calls a tool, which fails loudly on an error result so that an error is never
// timed as if it were an answer.

import * as fs from "node:fs";
import * as path from "node:path";
import { ListToolsResultSchema, type CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { connectClient, connectModernClient, startAgent, startRelay, tempDir, type Agent, type McpClient, type Relay } from "../test/helpers/processes.ts";
import { cpuClock, type CpuClock } from "./harness.ts";
import type { McpPath } from "./results.ts";
import { SMALL_FILE_BYTES } from "./settings.ts";

/** No single benchmark call should come near this; it only turns a hang into an error. */
const TOOL_TIMEOUT_MS = 60_000;

/** What the scenarios ask of an MCP client, on either path (results.ts: McpPath). */
export interface BenchClient extends Pick<McpClient, "callTool"> {
  path: McpPath;
  /** A request the relay answers itself, with no hop to an agent: `ping` in a session; `server/discover` on
   *  2026-07-28, which has no ping. */
  noHop(): Promise<unknown>;
  /** tools/list as the relay answers it, every time (the v2 client's response cache is bypassed), result checked. */
  listTools(): Promise<{ tools: unknown[] }>;
  close(): Promise<void>;
}

/** A client on `path` with the relay's bearer token. */
export async function connectBenchClient(relay: Relay, path: McpPath): Promise<BenchClient> {
  if (path === "session") {
    const client = await connectClient(relay, "streamable-http");
    return {
      path,
      callTool: client.callTool.bind(client),
      noHop: () => client.ping(),
      // Not client.listTools(), which also compiles a validator for every tool's output schema (ajv, some tens of
      // milliseconds of the bench's own CPU per list): the request and the result's check are what a list costs.
      listTools: () => client.request({ method: "tools/list", params: {} }, ListToolsResultSchema),
      close: () => client.close(),
    };
  }
  const client = await connectModernClient(relay, { headers: { Authorization: `Bearer ${relay.token}` } });
  return {
    path,
    callTool: client.callTool,
    noHop: () => client.sdk.discover(),
    listTools: () => client.sdk.listTools(undefined, { cacheMode: "bypass" }),
    close: () => client.close(),
  };
}

/** A tool call that must succeed: returns its structuredContent, throws with the error text otherwise. */
export async function callOk(client: Pick<McpClient, "callTool">, name: string, args: Record<string, unknown>): Promise<Record<string, unknown>> {
  const result = (await client.callTool({ name, arguments: args }, undefined, { timeout: TOOL_TIMEOUT_MS })) as CallToolResult;
  if (result.isError) {
    const first = result.content?.[0];
    throw new Error(`${name} failed: ${first?.type === "text" ? first.text : JSON.stringify(result)}`);
  }
  return (result.structuredContent ?? {}) as Record<string, unknown>;
}

/** 1 KiB of text: 16 lines of 63 characters and a newline. */
export function writeSmallFile(dir: string): string {
  const file = path.join(dir, "small-1KiB.txt");
  const line = `${"0123456789abcdef".repeat(4).slice(0, 63)}\n`;
  fs.writeFileSync(file, line.repeat(SMALL_FILE_BYTES / line.length));
  return file;
}

export interface Rig extends AsyncDisposable {
  relay: Relay;
  /** The relay's CPU time so far (every thread), in milliseconds. */
  relayCpu: CpuClock;
  agent: Agent;
  /** The agent's CPU time so far (every thread), in milliseconds. */
  agentCpu: CpuClock;
  /** The 2025 session that the scenarios not about the MCP path use (4, 5 and 7). */
  client: BenchClient;
  /** The main client on `path`: `client` on the session path; on 2026-07-28 one opened on first use. */
  clientOn(path: McpPath): Promise<BenchClient>;
  /** The agent's allowed root (a fresh temp directory) and the 1 KiB file in it. */
  root: string;
  smallFile: string;
  /** `count` clients on `path` besides `client` (sessions, on the session path), opened on first use and closed
   *  with the rig. */
  clients(path: McpPath, count: number): Promise<BenchClient[]>;
}

/** The bench drives thousands of calls a minute with one token: lift the relay's per-client limits, which exist to
 *  stop a runaway model, so they are not what gets measured. */
export const UNLIMITED_CLIENT = { CLIENT_CALLS_PER_MINUTE: "0", CLIENT_MAX_CALLS_IN_FLIGHT: "10000" };

/** Starts a relay, one agent whose only root is a fresh temp directory, and one client session. */
export async function startRig(): Promise<Rig> {
  const dir = tempDir("cr-bench-");
  const data = tempDir("cr-bench-db-");
  const relay = await startRelay({ databasePath: path.join(data.path, "audit.db"), env: UNLIMITED_CLIENT });
  const agent = await startAgent(relay, { roots: [dir.path] });
  const client = await connectBenchClient(relay, "session");
  let modern: Promise<BenchClient> | undefined;
  const extra: Record<McpPath, BenchClient[]> = { session: [], "2026": [] };
  return {
    relay,
    relayCpu: cpuClock(relay.proc.pid),
    agent,
    agentCpu: cpuClock(agent.proc.pid),
    client,
    clientOn: (path) => (path === "session" ? Promise.resolve(client) : (modern ??= connectBenchClient(relay, path))),
    root: dir.path,
    smallFile: writeSmallFile(dir.path),
    async clients(path, count) {
      while (extra[path].length < count) extra[path].push(await connectBenchClient(relay, path));
      return extra[path].slice(0, count);
    },
    async [Symbol.asyncDispose]() {
      const opened = [client, ...(modern ? [await modern] : []), ...extra.session, ...extra["2026"]];
      await Promise.all(opened.map((c) => c.close()));
      await agent[Symbol.asyncDispose]();
      await relay[Symbol.asyncDispose]();
      data[Symbol.dispose]();
      dir[Symbol.dispose]();
    },
  };
}
