// The relay's approvals API as the owner uses it in tests: what waits (GET /approvals with the owner's token), and
// waiting for the approval of one call.

import { eventually, type Relay } from "./processes.ts";

/** The fields of a waiting approval the tests look at (the API gives more). */
export interface WaitingApproval {
  id: string;
  machine: string;
  tool: string;
  command?: string;
  working_dir?: string;
  path?: string;
  diff?: string;
  stdin?: string;
  rule: string;
  url: string;
  passkey?: { rp_id: string; credential_ids: string[]; statements: Record<"once" | "300" | "3600" | "28800", string> };
}

/** The approvals waiting on `relay`, as its owner lists them. */
export async function waitingApprovals(relay: Pick<Relay, "url" | "token">): Promise<WaitingApproval[]> {
  const response = await fetch(new URL("/approvals", relay.url), { headers: { Authorization: `Bearer ${relay.token}` } });
  if (response.status !== 200) throw new Error(`GET /approvals answered ${response.status}: ${await response.text()}`);
  return ((await response.json()) as { approvals: WaitingApproval[] }).approvals;
}

/** Waits (10 s at most) for the approval `matches` picks: a call's command, or a change's path. */
export async function approvalFor(relay: Pick<Relay, "url" | "token">, matches: { command: string } | { path: string }): Promise<WaitingApproval> {
  const picks = (a: WaitingApproval) => ("command" in matches ? a.command === matches.command : a.path === matches.path);
  let found: WaitingApproval | undefined;
  await eventually(async () => (found = (await waitingApprovals(relay)).find(picks)) !== undefined, 10_000, `the approval of ${JSON.stringify(matches)}`);
  return found!;
}

/** The owner approves `id` with their token, adding `extra` to the decision (for_seconds, a passkey's assertion). */
export function approveAsOwner(relay: Pick<Relay, "url" | "token">, id: string, extra: Record<string, unknown> = {}): Promise<Response> {
  return fetch(new URL(`/approvals/${id}`, relay.url), {
    method: "POST",
    headers: { Authorization: `Bearer ${relay.token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ decision: "approve", ...extra }),
  });
}
