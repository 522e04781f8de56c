// The owner's control over OAuth grants, against real relays: `oauth-clients list` shows each approved application
// (name, redirect hosts, when approved and last used), `oauth-clients revoke` kills its tokens at once and ends its
// open MCP sessions on both transports, and changing the owner secret revokes every grant made under the old one.
// (The dashboard's list and revoke button are in dashboard-browser.test.ts.)

import { describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { eventsOf, relayCommand } from "../helpers/audit.ts";
import { obtainGrant, refreshGrant } from "../helpers/oauth.ts";
import { freePort, newToken, startRelay } from "../helpers/processes.ts";
import { useStack } from "../helpers/stack.ts";

const OWNER_PASSWORD = "owner passphrase for grants";
const PROTOCOL_VERSION = "2025-11-25";

/** `bun run server.ts oauth-clients …` on a relay's database, as the owner would run it. */
const oauthClientsCli = (databasePath: string, ...args: string[]) => relayCommand(databasePath, "oauth-clients", ...args);

const mcpHeaders = (token: string, extra: Record<string, string> = {}) => ({
  Authorization: `Bearer ${token}`,
  "Content-Type": "application/json",
  Accept: "application/json, text/event-stream",
  ...extra,
});

/** The status of an MCP initialize with `token`: 200 when the relay accepts it. */
async function initializeStatus(origin: URL, token: string): Promise<number> {
  const response = await fetch(new URL("/mcp", origin), {
    method: "POST",
    headers: mcpHeaders(token),
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: PROTOCOL_VERSION, capabilities: {}, clientInfo: { name: "t", version: "1" } } }),
  });
  await response.body?.cancel();
  return response.status;
}

/** A Streamable HTTP session opened by hand, with its standalone event stream asked for. (The relay sends a stream's
 *  headers with its first event, so a stream is a pending Response until something is sent or it ends.) */
async function openStreamableSession(origin: URL, token: string) {
  const init = await fetch(new URL("/mcp", origin), {
    method: "POST",
    headers: mcpHeaders(token),
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: PROTOCOL_VERSION, capabilities: {}, clientInfo: { name: "t", version: "1" } } }),
  });
  await init.text();
  const session = { "Mcp-Session-Id": init.headers.get("mcp-session-id")!, "MCP-Protocol-Version": PROTOCOL_VERSION };
  const post = (body: unknown) => fetch(new URL("/mcp", origin), { method: "POST", headers: mcpHeaders(token, session), body: JSON.stringify(body) });
  expect((await post({ jsonrpc: "2.0", method: "notifications/initialized" })).status).toBe(202);
  const stream = fetch(new URL("/mcp", origin), { headers: { ...mcpHeaders(token, session), Accept: "text/event-stream" } });
  return { post, stream };
}

/** Whether the stream `pending` answers with ends (the server closed it) within `ms`. */
async function endsWithin(pending: Promise<Response>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  const timeout = () => Bun.sleep(Math.max(0, deadline - Date.now())).then(() => "timeout" as const);
  const response = await Promise.race([pending, timeout()]);
  if (response === "timeout") return false;
  expect(response.status).toBe(200);
  const reader = response.body!.getReader();
  for (;;) {
    const next = await Promise.race([reader.read(), timeout()]);
    if (next === "timeout") {
      void reader.cancel();
      return false;
    }
    if (next.done) return true;
  }
}

/** How many MCP sessions the relay holds, as /health tells the owner. */
async function sessionCount(origin: URL, ownerToken: string): Promise<number> {
  const health = await fetch(new URL("/health", origin), { headers: { Authorization: `Bearer ${ownerToken}` } });
  return ((await health.json()) as { sessions: number }).sessions;
}

describe("the owner lists and revokes OAuth clients from the command line", () => {
  const stack = useStack({ relay: { env: { OWNER_PASSWORD } }, agent: { machine: "grants-box" } });

  test("the list names each approved application, where its answers go, when approved and last used", async () => {
    const grant = await obtainGrant(stack.relay.url, OWNER_PASSWORD, { name: "Listed app", redirectUri: "https://api.listed.example/oauth/callback" });
    expect(await initializeStatus(stack.relay.url, grant.access)).toBe(200);
    const listed = oauthClientsCli(stack.relay.databasePath, "list");
    expect(listed.code).toBe(0);
    const line = listed.stdout.split("\n").find((l) => l.startsWith(grant.clientId))!;
    expect(line).toContain("Listed app");
    expect(line).toContain("api.listed.example");
    expect(line).not.toContain("/oauth/callback"); // hosts, not whole addresses
    expect(line).toMatch(/\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d/); // approved, last used
    expect(listed.stdout.split("\n")[0]).toMatch(/^CLIENT ID +NAME +REDIRECT HOSTS +APPROVED \(UTC\) +LAST USED \(UTC\)$/);
    expect(oauthClientsCli(stack.relay.databasePath).stdout).toBe(listed.stdout); // list is the default
  });

  test("revoking one kills its tokens at once and ends its open sessions on both transports; the others keep theirs", async () => {
    const viaMcp = await obtainGrant(stack.relay.url, OWNER_PASSWORD, { name: "Doomed on mcp" });
    const viaSse = await obtainGrant(stack.relay.url, OWNER_PASSWORD, { name: "Doomed on sse", resource: "/sse" });
    const bystander = await obtainGrant(stack.relay.url, OWNER_PASSWORD, { name: "Bystander" });
    const sessionsBefore = await sessionCount(stack.relay.url, stack.relay.token);

    const doomed = await openStreamableSession(stack.relay.url, viaMcp.access);
    const longCall = doomed.post({ jsonrpc: "2.0", id: 7, method: "tools/call", params: { name: "run_shell_command", arguments: { command: "sleep 25" } } });
    const sseStream = fetch(new URL("/sse", stack.relay.url), { headers: { Authorization: `Bearer ${viaSse.access}`, Accept: "text/event-stream" } });
    const kept = await openStreamableSession(stack.relay.url, bystander.access);
    expect(await sessionCount(stack.relay.url, stack.relay.token)).toBe(sessionsBefore + 3);

    const revoked = oauthClientsCli(stack.relay.databasePath, "revoke", viaMcp.clientId);
    expect(revoked.code).toBe(0);
    expect(revoked.stdout).toContain("Doomed on mcp");
    expect(await initializeStatus(stack.relay.url, viaMcp.access)).toBe(401); // at once: every request reads the database
    expect(await (await refreshGrant(stack.relay.url, viaMcp)).json()).toMatchObject({ error: "invalid_client" });
    expect(await endsWithin(doomed.stream, 3_000)).toBe(true);
    expect(await endsWithin(longCall, 3_000)).toBe(true); // the call in flight ends with its session

    expect(oauthClientsCli(stack.relay.databasePath, "revoke", viaSse.clientId).code).toBe(0);
    expect(await endsWithin(sseStream, 3_000)).toBe(true);

    expect(await endsWithin(kept.stream, 1_500)).toBe(false); // the bystander's session is untouched
    expect(await initializeStatus(stack.relay.url, bystander.access)).toBe(200);
    expect(await sessionCount(stack.relay.url, stack.relay.token)).toBe(sessionsBefore + 2); // its old one and the new one
    const listed = oauthClientsCli(stack.relay.databasePath, "list").stdout;
    expect(listed).toContain(bystander.clientId);
    expect(listed).not.toContain(viaMcp.clientId);
    expect(listed).not.toContain(viaSse.clientId);
    const events = eventsOf(stack.relay.databasePath).filter((e) => e.kind === "oauth_client_revoked");
    expect(events.map((e) => e.detail.detail)).toEqual([
      `${viaSse.clientId} (Doomed on sse) from the command line`,
      `${viaMcp.clientId} (Doomed on mcp) from the command line`,
    ]);
  });

  test("a wrong or missing client id is refused with a clear error and changes nothing", () => {
    const before = oauthClientsCli(stack.relay.databasePath, "list").stdout;
    const unknown = oauthClientsCli(stack.relay.databasePath, "revoke", "no-such-client");
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain("No OAuth client 'no-such-client'. See: oauth-clients list");
    const missing = oauthClientsCli(stack.relay.databasePath, "revoke");
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain("usage: bun run server.ts oauth-clients [list] | revoke CLIENT_ID");
    expect(oauthClientsCli(stack.relay.databasePath, "list").stdout).toBe(before);
    const help = oauthClientsCli(stack.relay.databasePath, "--help");
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("oauth-clients revoke CLIENT_ID");
  });

  test("a name made of terminal escapes and bidi controls is printed harmless", async () => {
    const grant = await obtainGrant(stack.relay.url, OWNER_PASSWORD, { name: "\u001b[2J\u001b[31mEvil\u202eppa" });
    const line = oauthClientsCli(stack.relay.databasePath, "list").stdout.split("\n").find((l) => l.startsWith(grant.clientId))!;
    expect(line).not.toMatch(/[\u0000-\u001f\u007f\u202a-\u202e\u2066-\u2069]/);
    expect(line).toContain("?[2J?[31mEvil?ppa");
  });
});

describe("changing the owner secret revokes every grant made under the old one", () => {
  test("after a restart with a new OWNER_PASSWORD the old refresh and access tokens are refused; with the same one they work", async () => {
    const port = freePort();
    const databasePath = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "cr-db-")), "audit.db");
    const token = newToken();
    const start = (password: string) => startRelay({ port, databasePath, token, env: { OWNER_PASSWORD: password } });

    let relay = await start(OWNER_PASSWORD);
    const grant = await obtainGrant(relay.url, OWNER_PASSWORD, { name: "Survives a restart" });
    const doomed = await obtainGrant(relay.url, OWNER_PASSWORD, { name: "Approved under the old secret" });
    await relay.stop();

    relay = await start(OWNER_PASSWORD); // the same secret: nothing is revoked
    const refreshed = await refreshGrant(relay.url, grant);
    expect(refreshed.status).toBe(200);
    // A second relay started by mistake on the same database and port, with another secret, cannot listen and
    // revokes nothing of the running relay's.
    await expect(start("a secret typed by mistake")).rejects.toThrow(/already in use/);
    expect(await initializeStatus(relay.url, doomed.access)).toBe(200);
    await relay.stop();

    relay = await start("a brand new owner passphrase");
    try {
      expect(await initializeStatus(relay.url, doomed.access)).toBe(401);
      const afterChange = await refreshGrant(relay.url, doomed);
      expect(afterChange.status).toBe(400);
      expect(await afterChange.json()).toMatchObject({ error: "invalid_grant" });
      await relay.stderr.waitFor(/the owner secret changed: revoked 2 OAuth grants of 2 clients/);
      const event = eventsOf(databasePath).find((e) => e.kind === "oauth_grants_revoked");
      expect(event?.detail.detail).toBe("the owner secret changed: revoked 2 OAuth grants of 2 clients; approve their applications again");
      expect(oauthClientsCli(databasePath, "list").stdout).toContain("No approved OAuth clients.");
      // The fingerprint kept with each grant opens nothing: neither secret, nor a plain hash of one, is in the database.
      const bytes = Buffer.concat([databasePath, `${databasePath}-wal`].filter(fs.existsSync).map((f) => fs.readFileSync(f)));
      for (const secret of [OWNER_PASSWORD, "a brand new owner passphrase"]) {
        expect(bytes.includes(secret)).toBe(false);
        expect(bytes.includes(createHash("sha256").update(secret).digest("hex"))).toBe(false);
      }
    } finally {
      await relay.stop();
    }
  });
});
