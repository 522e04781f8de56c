// What the scenarios drive: a real relay and a real agent on loopback (started by the test helpers, exactly as
// the end-to-end tests start them), MCP client sessions over Streamable HTTP, and the files they read. Also the
// one way the bench calls a tool, which fails loudly on an error result so that an error is never timed as
// if it were an answer.

import * as fs from "node:fs";
import * as path from "node:path";
import type { Client } from "@modelcontextprotocol/sdk/client/index.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { connectClient, startAgent, startRelay, tempDir, type Agent, type Relay } from "../test/helpers/processes.ts";
import { SMALL_FILE_BYTES } from "./settings.ts";

/** No single benchmark call should come near this; it only turns a hang into an error. */
const TOOL_TIMEOUT_MS = 60_000;

/** A tool call that must succeed: returns its structuredContent, throws with the error text otherwise. */
export async function callOk(client: Client, name: string, args: Record<string, unknown>): Promise<Record<string, unknown>> {
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
  agent: Agent;
  /** The session most scenarios use. */
  client: Client;
  /** The agent's allowed root (a fresh temp directory) and the 1 KiB file in it. */
  root: string;
  smallFile: string;
  /** More sessions on the same relay, opened on first use and closed with the rig. */
  sessions(count: number): Promise<Client[]>;
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
  const client = await connectClient(relay, "streamable-http");
  const extra: (Client & AsyncDisposable)[] = [];
  return {
    relay,
    agent,
    client,
    root: dir.path,
    smallFile: writeSmallFile(dir.path),
    async sessions(count) {
      while (extra.length < count) extra.push(await connectClient(relay, "streamable-http"));
      return extra.slice(0, count);
    },
    async [Symbol.asyncDispose]() {
      await Promise.all([client, ...extra].map((c) => c.close()));
      await agent[Symbol.asyncDispose]();
      await relay[Symbol.asyncDispose]();
      data[Symbol.dispose]();
      dir[Symbol.dispose]();
    },
  };
}
