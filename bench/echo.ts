// Starts the bare-SDK echo server of scenario 10 (bench/echo/server.ts) on loopback, and opens sessions with it
// the way scenario 10 opens them with the relay: the v1 SDK client over Streamable HTTP.

import * as fs from "node:fs";
import * as path from "node:path";
import type { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { connectClient, ROOT, spawnProgram } from "../test/helpers/processes.ts";
import { cpuClock, type CpuClock } from "./harness.ts";

const SERVER = path.join(import.meta.dir, "echo", "server.ts");
const START_TIMEOUT_MS = 10_000;

export interface EchoServer extends AsyncDisposable {
  /** A new MCP session with it. */
  connect(): Promise<Client>;
  /** Its CPU time so far (every thread), in milliseconds. */
  cpu: CpuClock;
  description: string;
}

export async function startEcho(): Promise<EchoServer> {
  const child = spawnProgram([process.execPath, "run", SERVER]);
  const line = await child.stdout.waitFor(/^listening \d+$/, START_TIMEOUT_MS);
  // connectClient sends the token as a bearer; the echo server ignores it.
  const server = { url: new URL(`http://127.0.0.1:${line.split(" ")[1]}`), token: "unused" };
  const clients: Client[] = [];
  return {
    async connect() {
      const client = await connectClient(server, "streamable-http");
      clients.push(client);
      return client;
    },
    cpu: cpuClock(child.proc.pid),
    description: `bench/echo/server.ts: @modelcontextprotocol/server ${sdkVersion()} Streamable HTTP sessions in Bun.serve, one tool (echo)`,
    async [Symbol.asyncDispose]() {
      await Promise.all(clients.map((c) => c.close()));
      await child[Symbol.asyncDispose]();
    },
  };
}

/** The version installed (its package.json is not among the package's exports, so it is read from disk). */
function sdkVersion(): string {
  const manifest = path.join(ROOT, "node_modules", "@modelcontextprotocol", "server", "package.json");
  return (JSON.parse(fs.readFileSync(manifest, "utf8")) as { version: string }).version;
}
