// The MCP conformance suite 0.1.16 (the 2025 revisions: initialize, sessions) against a real relay with a real agent
// connected, over Streamable HTTP, through the token-adding proxy (see suite.ts). Scenarios that need the suite's
// fixture tools are listed, each with its reason, in expected-failures.yml. The 2026-07-28 revision has its own run
// in conformance-2026.test.ts.

import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as path from "node:path";
import { DNS_REBINDING_GUARDED, failed, outcomes, readBaseline, runSuite, startConformanceStack, warned, type ConformanceStack, type SuiteRun } from "./suite.ts";

// The first run downloads the suite from the npm registry (bun x caches it); later runs take a few seconds.
setDefaultTimeout(120_000);

const SUITE = "@modelcontextprotocol/conformance@0.1.16";
const BASELINE = path.join(import.meta.dir, "expected-failures.yml");
/** Every scenario that needs none of the suite's fixtures. */
const MUST_PASS = ["server-initialize", "ping", "tools-list", "dns-rebinding-protection", "server-sse-multiple-streams"];

const baseline = readBaseline(BASELINE).map((entry) => entry.scenario);

let stack: ConformanceStack;
let run: SuiteRun;

beforeAll(async () => {
  stack = await startConformanceStack();
  run = await runSuite(SUITE, stack.url, path.join(stack.out, "full"), ["--expected-failures", BASELINE]);
  const passed = [...run.scenarios].filter(([, checks]) => failed(checks).length === 0).length;
  console.log(`conformance: ${run.scenarios.size} scenarios run, ${passed} passed, ${run.scenarios.size - passed} failed as the baseline expects (${run.ms} ms)`);
});

afterAll(async () => {
  await stack?.[Symbol.asyncDispose]();
});

describe(`${SUITE} against the relay`, () => {
  test("exits 0: every failure is in the baseline, and every baseline entry still fails", () => {
    if (run.code !== 0) console.error(run.output);
    expect(run.code).toBe(0);
  });

  test("ran every scenario of the active suite: the ones that must pass and the baseline, nothing else", () => {
    expect([...run.scenarios.keys()].sort()).toEqual([...MUST_PASS, ...baseline].sort());
  });

  for (const scenario of MUST_PASS) {
    test(`${scenario} passes every check`, () => {
      const checks = run.scenarios.get(scenario) ?? [];
      expect(checks.length).toBeGreaterThan(0);
      expect(failed(checks)).toEqual([]);
      expect(warned(checks)).toEqual([]);
    });
  }

  test("dns-rebinding-protection: a foreign Host and Origin get 403, the relay's own public origin gets through", () => {
    expect(outcomes(run.scenarios.get("dns-rebinding-protection") ?? [])).toEqual(DNS_REBINDING_GUARDED);
  });

  test("every baseline scenario fails, and only for a missing fixture or capability", () => {
    for (const scenario of baseline) {
      const reasons = failed(run.scenarios.get(scenario) ?? []).map((c) => c.errorMessage ?? "");
      expect(reasons.length).toBeGreaterThan(0);
      for (const reason of reasons) {
        expect(reason).toMatch(/not found|did not request (elicitation|sampling)|No (image|audio|resource|progress)|Missing (image|resource) content|Expected multiple content items/);
      }
    }
  });

  test("without the token (no proxy) the relay refuses the suite's client: 401 on initialize", async () => {
    const direct = await runSuite(SUITE, new URL("/mcp", stack.relay.url).toString(), path.join(stack.out, "direct"), ["--scenario", "server-initialize"]);
    expect(direct.code).not.toBe(0);
    expect(failed(direct.scenarios.get("server-initialize") ?? []).map((c) => c.errorMessage).join(" ")).toMatch(/401|Unauthorized|Missing credentials/);
  });
});
