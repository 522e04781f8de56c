// What scenarios 12 and 13 drive: a relay of their own, started as the tests start it, with one agent that dials it
// through one emulated link and clients that reach it through another (bench/delay-link.ts, LINK_ONE_WAY_MS each
// way on each), so every call crosses two 40 ms round trips as it would between a laptop, a hosted relay and an
// assistant's connector. The relay runs with its defaults (RECONNECT_GRACE_S among them) but the per-client limits.

import * as path from "node:path";
import { startAgent, startRelay, tempDir, type Agent, type Relay } from "../test/helpers/processes.ts";
import { DelayLink } from "./delay-link.ts";
import type { McpPath } from "./results.ts";
import { connectBenchClient, UNLIMITED_CLIENT, writeSmallFile, type BenchClient } from "./rig.ts";
import { LINK_ONE_WAY_MS } from "./settings.ts";

export interface LinkedRig extends AsyncDisposable {
  relay: Relay;
  agent: Agent;
  /** Between the relay and the agent: the one scenario 13 cuts. */
  agentLink: DelayLink;
  /** Between the clients and the relay. */
  clientLink: DelayLink;
  /** The agent's allowed root (a fresh temp directory) and the 1 KiB file in it. */
  root: string;
  smallFile: string;
  /** The client on `path`, through the client link, opened on first use and closed with the rig. */
  clientOn(path: McpPath): Promise<BenchClient>;
}

export async function startLinkedRig(): Promise<LinkedRig> {
  await using stack = new AsyncDisposableStack(); // undone if a step fails; moved to the rig once all are up
  const dir = stack.use(tempDir("cr-bench-links-"));
  const data = stack.use(tempDir("cr-bench-links-db-"));
  const relay = stack.use(await startRelay({ databasePath: path.join(data.path, "audit.db"), env: UNLIMITED_CLIENT }));
  const link = () => DelayLink.start({ target: { port: relay.port }, oneWayMs: LINK_ONE_WAY_MS });
  const agentLink = stack.use(await link());
  const clientLink = stack.use(await link());
  const agent = stack.use(await startAgent(relay, { roots: [dir.path], env: { RELAY_URL: `ws://127.0.0.1:${agentLink.port}/ws/agent` } }));
  // 127.0.0.1:<link port> is a loopback Host, which the relay serves MCP under without PUBLIC_URL.
  const throughLink = { ...relay, url: new URL(`http://127.0.0.1:${clientLink.port}/`) };
  const clients = new Map<McpPath, Promise<BenchClient>>();
  stack.defer(async () => {
    for (const opened of await Promise.allSettled(clients.values())) if (opened.status === "fulfilled") await opened.value.close();
  });
  const owned = stack.move();
  return {
    relay,
    agent,
    agentLink,
    clientLink,
    root: dir.path,
    smallFile: writeSmallFile(dir.path),
    clientOn(path) {
      if (!clients.has(path)) clients.set(path, connectBenchClient(throughLink, path));
      return clients.get(path)!;
    },
    [Symbol.asyncDispose]: () => owned.disposeAsync(),
  };
}
