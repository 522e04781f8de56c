// The peer of scenario 8: what people run today to expose files to a remote MCP client, the official
// @modelcontextprotocol/server-filesystem behind supergateway (stdio → Streamable HTTP), both on node as `npx`
// would run them. Installed apart in bench/peers/ by `bun run bench:peers`; when it is missing, the scenarios
// that need it are skipped with that reason, and everything else still runs.

import * as fs from "node:fs";
import * as path from "node:path";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { freePort, spawnProgram } from "../test/helpers/processes.ts";
import { processTreeCpuClock, waitUntil, type CpuClock } from "./harness.ts";

const PEERS_BIN = path.join(import.meta.dir, "peers", "node_modules", ".bin");
/** node plus supergateway's startup; the filesystem server itself starts with the first session. */
const PEER_START_TIMEOUT_MS = 20_000;

export interface Peer extends AsyncDisposable {
  /** A new MCP session with the gateway (supergateway --stateful gives each its own filesystem server). */
  connect(): Promise<Client>;
  /** Which versions on which runtime, for the record. */
  description: string;
  /** The CPU time so far of its whole process tree (the gateway, and each session's shell and server), in ms. */
  cpu: CpuClock;
}

/** Why the peer cannot run here, or undefined when it can. */
export function peerUnavailable(): string | undefined {
  if (!fs.existsSync(path.join(PEERS_BIN, "supergateway"))) return "peers not installed: run `bun run bench:peers` first";
  if (!Bun.which("node")) return "node is not on PATH (the peer runs on node, as npx would run it)";
  return undefined;
}

const installedVersion = (name: string): string =>
  JSON.parse(fs.readFileSync(path.join(PEERS_BIN, "..", name, "package.json"), "utf8")).version;

function describePeer(node: string): string {
  const nodeVersion = Bun.spawnSync([node, "--version"]).stdout.toString().trim();
  return `supergateway ${installedVersion("supergateway")} (--stateful) + @modelcontextprotocol/server-filesystem ${installedVersion("@modelcontextprotocol/server-filesystem")}, on node ${nodeVersion}`;
}

/** Starts supergateway on a free loopback port, serving the filesystem server confined to `root`. */
export async function startPeer(root: string): Promise<Peer> {
  const node = Bun.which("node")!;
  const port = freePort();
  // supergateway runs this line through a shell for each session.
  const stdio = `'${node}' '${path.join(PEERS_BIN, "mcp-server-filesystem")}' '${root}'`;
  const gateway = spawnProgram([
    node,
    path.join(PEERS_BIN, "supergateway"),
    ...["--stdio", stdio, "--outputTransport", "streamableHttp", "--stateful", "--port", String(port)],
    // Its info level logs every message, which would slow the peer down for nothing.
    ...["--logLevel", "none"],
  ]);
  const url = new URL(`http://127.0.0.1:${port}/mcp`);
  const listening = () => fetch(url, { method: "GET" }).then(() => true, () => false);
  await waitUntil(listening, PEER_START_TIMEOUT_MS, "supergateway");
  const clients: Client[] = [];
  return {
    description: describePeer(node),
    cpu: processTreeCpuClock(gateway.proc.pid),
    async connect() {
      const client = new Client({ name: "code-remote-bench", version: "1.0.0" });
      await client.connect(new StreamableHTTPClientTransport(url));
      clients.push(client);
      return client;
    },
    async [Symbol.asyncDispose]() {
      await Promise.all(clients.map((c) => c.close()));
      await gateway[Symbol.asyncDispose]();
    },
  };
}
