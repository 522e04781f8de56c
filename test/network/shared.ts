// What the network suites share (outage.test.ts, clients.test.ts): skipping where namespaces cannot be made, stopping
// a process within a bound, printing a figure, and reading the relay's and the agent's logs for what happened to the
// agent's link.

import { namespacesUnavailable } from "../helpers/netns.ts";
import type { Agent, Relay } from "../helpers/processes.ts";

/** Why `suite` cannot make network namespaces here (said once, as a warning, so a skipped suite is visible), or
 *  undefined when it can. */
export function skipWithoutNamespaces(suite: string): string | undefined {
  const why = namespacesUnavailable();
  if (why) console.warn(`${suite}: skipped, network namespaces cannot be made here: ${why}`);
  return why;
}

/** A process stop that cannot hang a test: SIGTERM, then SIGKILL after `graceMs`. */
export async function stopBounded(child: { stop(): Promise<number>; kill(): Promise<void> }, graceMs = 5_000): Promise<void> {
  await Promise.race([child.stop().catch(() => {}), Bun.sleep(graceMs)]);
  await child.kill().catch(() => {});
}

export const seconds = (ms: number | undefined) => (ms === undefined ? "not within the watch" : `${(ms / 1000).toFixed(2)} s`);

/** The relay's and the agent's log lines about the link since `relayFrom` and `agentFrom`, for a failure's message. */
export function linkLines(net: { relay: Relay; agent: Agent }, relayFrom: number, agentFrom: number): string {
  const pick = (lines: string[]) => lines.filter((l) => /connect|silent|replaced|sle(pt|ep)|woke|register|could not/.test(l));
  return [
    "relay:",
    ...pick(net.relay.stderr.lines.slice(relayFrom)).map((l) => `  ${l}`),
    "agent:",
    ...pick(net.agent.stderr.lines.slice(agentFrom)).map((l) => `  ${l}`),
  ].join("\n");
}

/** The log lines since `relayFrom` and `agentFrom` that say the agent's link went down or came back (the relay's
 *  "agent disconnected", "agent link silent", "agent connected"; the agent's "disconnected", "connected", "the
 *  machine slept"): none while the link held. */
export function linkChanges(net: { relay: Relay; agent: Agent }, relayFrom: number, agentFrom: number): string[] {
  return [
    ...net.relay.stderr.lines.slice(relayFrom).filter((l) => /^\S+ server \w+ agent (dis)?connected|^\S+ server \w+ agent link silent/.test(l)),
    ...net.agent.stderr.lines.slice(agentFrom).filter((l) => /^\S+ agent \w+ ((dis)?connected|the machine slept)/.test(l)),
  ];
}
