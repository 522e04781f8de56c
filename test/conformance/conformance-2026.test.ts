// The MCP conformance suite 0.2.0-alpha.12 with `--requirements 2026-07-28` (the revision's frozen list of required
// scenarios, plus the not-scored Tasks extension and pending ones, which run and report all the same) against a real
// relay with a real agent connected, through the token-adding proxy (see suite.ts). Scenarios that need the suite's
// fixture tools, or a capability or extension the relay does not offer, are listed with their reasons in
// expected-failures-2026-07-28.yml. The 2025 revisions have their own run in conformance.test.ts.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as path from "node:path";
import { MODERN_PROTOCOL_VERSION } from "../hostile/raw.ts";
import { DNS_REBINDING_GUARDED, failed, outcomes, readBaseline, runSuite, startConformanceStack, warned, type Check, type ConformanceStack, type SuiteRun } from "./suite.ts";

const SUITE = "@modelcontextprotocol/conformance@0.2.0-alpha.12";
const BASELINE = path.join(import.meta.dir, `expected-failures-${MODERN_PROTOCOL_VERSION}.yml`);
/** Every scenario that needs none of the suite's fixtures. */
const MUST_PASS = [
  "tools-list",
  "server-sse-multiple-streams",
  "dns-rebinding-protection",
  "input-required-result-unsupported-methods",
  "input-required-result-validate-input",
  "http-header-validation",
];
/** Every check of these is skipped: they test the Tasks extension's notifications, which the relay does not offer. */
const ALL_SKIPPED = ["tasks-status-notifications"];

const baseline = readBaseline(BASELINE);
const wholeScenarios = baseline.filter((entry) => !entry.check).map((entry) => entry.scenario);
/** Scenarios where only some checks are expected to fail: scenario → those checks. */
const partlyFailing = Map.groupBy(
  baseline.filter((entry) => entry.check),
  (entry) => entry.scenario,
);
/** This suite version counts a WARNING (a SHOULD not met) against a scenario, as a FAILURE. */
const unmet = (checks: Check[]) => [...failed(checks), ...warned(checks)];

let stack: ConformanceStack;
afterAll(async () => {
  await stack?.[Symbol.asyncDispose]();
});

const title = `${SUITE} --requirements ${MODERN_PROTOCOL_VERSION} against the relay`;
describe(title, () => {
  let run: SuiteRun;

  beforeAll(async () => {
    stack = await startConformanceStack();
    run = await runSuite(SUITE, stack.url, path.join(stack.out, "full"), ["--requirements", MODERN_PROTOCOL_VERSION, "--expected-failures", BASELINE]);
    const clean = [...run.scenarios.values()].filter((checks) => unmet(checks).length === 0).length;
    console.log(`conformance ${MODERN_PROTOCOL_VERSION}: ${run.scenarios.size} scenarios run, ${clean} passed, ${run.scenarios.size - clean} failed or warned on some check (${run.ms} ms)`);
  }, 300_000); // the first run downloads the suite from the npm registry; later runs take about a second

  test("exits 0: every failure is in the baseline, and every baseline entry still fails", () => {
    if (run.code !== 0) console.error(run.output);
    expect(run.code).toBe(0);
  });

  test("ran every scenario the revision requires (and the not-scored ones): those that must pass and the baseline's, nothing else", () => {
    const expected = new Set([...MUST_PASS, ...ALL_SKIPPED, ...wholeScenarios, ...partlyFailing.keys()]);
    expect([...run.scenarios.keys()].sort()).toEqual([...expected].sort());
  });

  for (const scenario of MUST_PASS) {
    test(`${scenario} passes every check`, () => {
      const checks = run.scenarios.get(scenario) ?? [];
      expect(checks.length).toBeGreaterThan(0);
      expect(unmet(checks)).toEqual([]);
    });
  }

  for (const [scenario, entries] of partlyFailing) {
    test(`${scenario} fails exactly the baseline's checks, and passes the rest`, () => {
      const checks = run.scenarios.get(scenario) ?? [];
      expect(checks.filter((c) => c.status === "SUCCESS").length).toBeGreaterThan(0);
      expect(unmet(checks).map((c) => c.id).sort()).toEqual(entries.map((entry) => entry.check!).sort());
    });
  }

  for (const scenario of ALL_SKIPPED) {
    test(`${scenario} skips every check: the relay offers no Tasks extension`, () => {
      expect((run.scenarios.get(scenario) ?? []).filter((c) => c.status !== "SKIPPED")).toEqual([]);
    });
  }

  test("dns-rebinding-protection: a foreign Host and Origin are refused, the relay's own public origin gets through", () => {
    expect(outcomes(run.scenarios.get("dns-rebinding-protection") ?? [])).toEqual(DNS_REBINDING_GUARDED);
  });

  test("every baseline entry fails only for a missing fixture, capability or extension", () => {
    const expectedToFail = (scenario: string, checks: Check[]) => {
      const listed = partlyFailing.get(scenario)?.map((entry) => entry.check);
      return listed ? checks.filter((c) => listed.includes(c.id)) : checks;
    };
    for (const scenario of [...wholeScenarios, ...partlyFailing.keys()]) {
      const reasons = unmet(expectedToFail(scenario, run.scenarios.get(scenario) ?? [])).map((c) => `${scenario}: ${c.errorMessage ?? ""}`);
      expect(reasons.length).toBeGreaterThan(0);
      for (const reason of reasons) {
        expect(reason).toMatch(
          /not found|Not testable|Prerequisite failed|no task was created|fixture|-32601|capabilities\.extensions MUST be advertised|requires -32021|Expected InputRequiredResult|instead of re-requesting|data\.uri is undefined/,
        );
      }
    }
  });

  test("without the token (no proxy) the relay refuses the suite's client", async () => {
    const direct = await runSuite(SUITE, new URL("/mcp", stack.relay.url).href, path.join(stack.out, "direct"), ["--spec-version", MODERN_PROTOCOL_VERSION, "--scenario", "tools-list"]);
    expect(direct.code).not.toBe(0);
    expect(failed(direct.scenarios.get("tools-list") ?? []).map((c) => c.errorMessage).join(" ")).toMatch(/Missing credentials|401|Unauthorized/);
  });
});
