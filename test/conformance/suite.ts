// Running the MCP conformance suite (@modelcontextprotocol/conformance, on Bun with `bun x --bun`, as it needs node
// 22) against a real relay with a real agent connected, over Streamable HTTP. The suite has no option to send a
// header, and the relay refuses every request without a bearer token, so the suite talks to the token-adding proxy
// (test/helpers/token-proxy.ts) and the relay runs behind it with PUBLIC_URL naming the proxy's origin. Shared by
// conformance.test.ts (0.1.16, the 2025 revisions) and conformance-2026.test.ts (0.2.0-alpha.12, 2026-07-28).

import * as fs from "node:fs";
import * as path from "node:path";
import { runClient } from "../helpers/outside-clients.ts";
import { newToken, startAgent, startRelay, tempDir, type Agent, type Relay } from "../helpers/processes.ts";
import { tokenProxy, type TokenProxy } from "../helpers/token-proxy.ts";

export interface Check {
  id: string;
  status: "SUCCESS" | "FAILURE" | "WARNING" | "INFO" | "SKIPPED";
  errorMessage?: string;
}

export interface SuiteRun {
  code: number | null;
  output: string;
  /** Each scenario's checks, by scenario name (without the `server-` prefix of its output folder). */
  scenarios: Map<string, Check[]>;
  ms: number;
}

export interface ConformanceStack extends AsyncDisposable {
  relay: Relay;
  agent: Agent;
  proxy: TokenProxy;
  /** The MCP endpoint as the suite sees it: through the proxy. */
  url: string;
  /** A fresh directory for the suite's results, removed on dispose. */
  out: string;
}

/** The proxy, then the relay behind it (PUBLIC_URL = the proxy's origin), then an agent. */
export async function startConformanceStack(): Promise<ConformanceStack> {
  const token = newToken();
  const proxy = tokenProxy(token);
  const out = tempDir("cr-conformance-");
  const parts = new AsyncDisposableStack();
  parts.defer(() => proxy.stop());
  parts.defer(() => out[Symbol.dispose]());
  try {
    const relay = parts.use(await startRelay({ token, env: { PUBLIC_URL: proxy.origin } }));
    const agent = parts.use(await startAgent(relay, { machine: "conformance" }));
    proxy.forwardTo(relay.url);
    const stopped = parts.move();
    return { relay, agent, proxy, url: `${proxy.origin}/mcp`, out: out.path, [Symbol.asyncDispose]: () => stopped.disposeAsync() };
  } catch (e) {
    await parts.disposeAsync();
    throw e;
  }
}

/** Runs `suite` (an npm spec with its exact version) against `url`; returns its exit code, output and each
 *  scenario's checks. The first run downloads the suite from the npm registry (bun x caches it). */
export async function runSuite(suite: string, url: string, outDir: string, extra: string[] = []): Promise<SuiteRun> {
  const run = await runClient([process.execPath, "x", "--bun", suite, "server", "--url", url, "-o", outDir, ...extra], { timeoutMs: 240_000 });
  const scenarios = new Map<string, Check[]>();
  for (const dir of fs.existsSync(outDir) ? fs.readdirSync(outDir) : []) {
    const name = /^server-(.+)-\d{4}-\d\d-\d\dT/.exec(dir)?.[1];
    if (name) scenarios.set(name, JSON.parse(fs.readFileSync(path.join(outDir, dir, "checks.json"), "utf8")) as Check[]);
  }
  const timedOut = run.timedOut ? `\n(the suite was killed after ${run.ms} ms)` : "";
  return { code: run.code, output: run.stdout + run.stderr + timedOut, scenarios, ms: run.ms };
}

/** The checks that count against a scenario. */
export const failed = (checks: Check[]) => checks.filter((c) => c.status === "FAILURE");
export const warned = (checks: Check[]) => checks.filter((c) => c.status === "WARNING");

/** The dns-rebinding-protection scenario as the relay's Host/Origin guard must leave it (the same in both suite
 *  versions): a foreign Host and Origin refused, the relay's own public origin let through. */
export const DNS_REBINDING_GUARDED = [
  ["localhost-host-rebinding-rejected", "SUCCESS"],
  ["localhost-host-valid-accepted", "SUCCESS"],
];
export const outcomes = (checks: Check[]) => checks.map((c) => [c.id, c.status]);

export interface BaselineEntry {
  scenario: string;
  /** Set when the entry expects one check of the scenario to fail (`scenario:check-id`), not the whole scenario. */
  check?: string;
}

/** The `server:` entries of an expected-failures file (`- scenario` or `- scenario:check-id`, a comment after). */
export function readBaseline(file: string): BaselineEntry[] {
  return fs
    .readFileSync(file, "utf8")
    .split("\n")
    .flatMap((line) => {
      const match = /^\s+- ([a-z0-9-]+)(?::([a-z0-9-]+))?/.exec(line);
      return match ? [{ scenario: match[1]!, check: match[2] }] : [];
    });
}
