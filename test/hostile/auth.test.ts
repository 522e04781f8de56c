// Hostile input against authentication (research/security.md §4.5, "Auth"), on a real relay whose client token,
// shared agent token, per-machine agent tokens and OAuth tokens are all different: wrong, expired and revoked
// tokens, tokens of one kind where another is expected, tokens in URLs (refused, and written nowhere), unusual
// spellings of the header, a thousand failures from one address (which must not lock out right credentials from
// it), guesses spread over an IPv6 /64 or over many addresses, and connections that never finish their upgrade.
// The relay believes X-Forwarded-For from loopback (TRUST_PROXY=1; loopback is a trusted proxy by default), so each
// test fails from its own address and the throttling of one does not spill into the next.

import { beforeAll, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { createHash } from "node:crypto";
import { eventsOf, relayCommand } from "../helpers/audit.ts";
import { hello } from "./frames.ts";
import { answerConsent, newAuthorizationUrl, openConsent } from "../helpers/oauth.ts";
import { newToken, startAgent, startRelay } from "../helpers/processes.ts";
import { useStack } from "../helpers/stack.ts";
import { bearer, INITIALIZE, MCP_HEADERS, oauthGrant, openSession, post, rawSocket, request, toolAnswer, whereLeaked, type Grant } from "./raw.ts";

const AGENT_TOKEN = newToken();
const stack = useStack({ relay: { env: { AGENT_TOKEN, TRUST_PROXY: "1" } }, agent: { machine: "guarded", token: AGENT_TOKEN } });
let grant: Grant;
let machineToken: string;
const wsUrl = (query = "") => `ws://127.0.0.1:${stack.relay.port}/ws/agent${query}`;

/** A fresh loopback source address per call (the relay trusts one proxy hop), so failures never add up across tests. */
let addresses = 0;
const fromNewAddress = () => ({ "X-Forwarded-For": `127.0.${Math.floor(addresses / 250) + 1}.${(addresses++ % 250) + 1}` });

/** Runs `bun run server.ts agent-token …` on the relay's database, as the owner would. */
function agentTokenCli(...args: string[]): string {
  const result = relayCommand(stack.relay.databasePath, "agent-token", ...args);
  if (result.code !== 0) throw new Error(result.stderr);
  return result.stdout;
}

beforeAll(async () => {
  grant = await oauthGrant(stack.relay, stack.relay.token);
  machineToken = /crm_\S+/.exec(agentTokenCli("create", "laptop"))![0];
});

const initialize = (headers: Record<string, string>, pathAndQuery = "/mcp") => post(stack.relay, pathAndQuery, INITIALIZE, { ...fromNewAddress(), ...headers });

/** What a WebSocket upgrade to /ws/agent is answered with, as an HTTP status (101 when it is accepted). */
async function upgradeStatus(headers: Record<string, string>, query = ""): Promise<number> {
  const response = await fetch(new URL(`/ws/agent${query}`, stack.relay.url), {
    headers: { Upgrade: "websocket", Connection: "Upgrade", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", ...fromNewAddress(), ...headers },
  });
  await response.body?.cancel();
  return response.status;
}

describe("wrong tokens", () => {
  test("no token gets 401 with an OAuth challenge, does not count as a failure, and writes no audit row", async () => {
    const address = fromNewAddress();
    for (let i = 0; i < 15; i++) {
      const reply = await post(stack.relay, "/mcp", INITIALIZE, address);
      expect(reply.status).toBe(401);
      expect(reply.error!.message).toContain("Missing credentials");
      expect(reply.headers.get("www-authenticate")).toContain("resource_metadata=");
    }
    // Anyone can send these at no cost, so they must not grow the audit log.
    const noTokenRows = eventsOf(stack.relay.databasePath).filter((e) => e.kind === "auth_refused" && e.detail.detail.endsWith("no token"));
    expect(noTokenRows).toEqual([]);
    expect((await post(stack.relay, "/mcp", INITIALIZE, { ...address, ...bearer(stack.relay.token) })).status).toBe(200);
  });

  test("wrong tokens of the same and of other lengths get the very same 401", async () => {
    const answers = new Set<string>();
    for (const wrong of [newToken(), stack.relay.token.slice(0, -1) + (stack.relay.token.endsWith("0") ? "1" : "0"), "x", "y".repeat(63), "z".repeat(65), "w".repeat(4096)]) {
      const reply = await initialize(bearer(wrong));
      expect(reply.status).toBe(401);
      expect(reply.headers.get("www-authenticate")).toContain('error="invalid_token"');
      answers.add(reply.text);
    }
    expect([...answers]).toEqual([JSON.stringify({ jsonrpc: "2.0", error: { code: -32001, message: "Invalid or expired token." }, id: null })]);
  });

  test("an expired OAuth access token gets 401, while the client's refresh token still gets it a new one", async () => {
    const own = await oauthGrant(stack.relay, stack.relay.token);
    expect((await initialize(bearer(own.access))).status).toBe(200);
    const db = new Database(stack.relay.databasePath);
    db.run("PRAGMA busy_timeout = 5000");
    db.query("UPDATE oauth_tokens SET expires_at = ? WHERE token_hash = ?").run(Date.now() - 1, createHash("sha256").update(own.access).digest("hex"));
    db.close();
    const expired = await initialize(bearer(own.access));
    expect(expired.status).toBe(401);
    expect(expired.headers.get("www-authenticate")).toContain('error="invalid_token"');
    const refreshed = await fetch(new URL("/token", stack.relay.url), {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded", ...fromNewAddress() },
      body: new URLSearchParams({ grant_type: "refresh_token", refresh_token: own.refresh, client_id: own.clientId, client_secret: own.clientSecret }),
    });
    expect(refreshed.status).toBe(200);
    const fresh = ((await refreshed.json()) as { access_token: string }).access_token;
    expect((await initialize(bearer(fresh))).status).toBe(200);
  });

  test("a revoked OAuth access token gets 401 at once, and its open session is refused too", async () => {
    const own = await oauthGrant(stack.relay, stack.relay.token);
    const session = await openSession(stack.relay, own.access);
    const revoked = await fetch(new URL("/revoke", stack.relay.url), {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded", ...fromNewAddress() },
      body: new URLSearchParams({ token: own.access, client_id: own.clientId, client_secret: own.clientSecret }),
    });
    expect(revoked.status).toBe(200);
    expect((await initialize(bearer(own.access))).status).toBe(401);
    const inSession = await session.post({ jsonrpc: "2.0", id: 2, method: "ping" }, fromNewAddress());
    expect(inSession.status).toBe(401);
  });

  test("the shared agent token cannot take a machine name that has its own token", async () => {
    const impostor = rawSocket(wsUrl(), bearer(AGENT_TOKEN));
    expect(await impostor.opened).toBe(true);
    impostor.send(JSON.stringify(hello("laptop")));
    expect(await impostor.closed).toEqual({ code: 4003, reason: "machine 'laptop' has its own agent token; connect with that one" });
    const refusal = eventsOf(stack.relay.databasePath, "--machine", "laptop").find((e) => e.kind === "auth_refused");
    expect(refusal?.detail.detail).toBe("shared agent token used as 'laptop', which has its own token");
  });

  test("a revoked per-machine agent token disconnects its agent (4003) and is refused at the next upgrade", async () => {
    const token = /crm_\S+/.exec(agentTokenCli("create", "doomed"))![0];
    await using doomed = await startAgent(stack.relay, { machine: "doomed", token });
    agentTokenCli("revoke", "doomed");
    await stack.relay.stderr.waitFor(/agent token revoked; disconnecting machine="doomed"/);
    await doomed.stderr.waitFor(/could not register with the relay/, 15_000);
    expect(await upgradeStatus(bearer(token))).toBe(401);
  });
});

describe("a credential of one kind in the place of another", () => {
  const onMcp: [string, () => string][] = [
    ["the shared agent token", () => AGENT_TOKEN],
    ["a per-machine agent token", () => machineToken],
    ["an OAuth refresh token", () => grant.refresh],
    ["an OAuth client secret", () => grant.clientSecret],
  ];
  for (const [what, token] of onMcp) {
    test(`${what} on /mcp gets 401`, async () => {
      expect((await initialize(bearer(token()))).status).toBe(401);
      expect((await request(stack.relay, "/sse", { headers: { ...bearer(token()), ...fromNewAddress() } })).status).toBe(401);
    });
  }

  const onAgentSocket: [string, () => string][] = [
    ["the client token (AUTH_TOKEN)", () => stack.relay.token],
    ["an OAuth access token", () => grant.access],
    ["an OAuth refresh token", () => grant.refresh],
  ];
  for (const [what, token] of onAgentSocket) {
    test(`${what} on /ws/agent gets 401 before the upgrade`, async () => {
      expect(await upgradeStatus(bearer(token()))).toBe(401);
    });
  }

  test("the right credentials in their own places are accepted (the cases above fail for the right reason)", async () => {
    expect((await initialize(bearer(stack.relay.token))).status).toBe(200);
    expect((await initialize(bearer(grant.access))).status).toBe(200);
    expect(await upgradeStatus(bearer(AGENT_TOKEN))).toBe(101);
    expect(await upgradeStatus(bearer(machineToken))).toBe(101);
  });
});

describe("tokens in URLs", () => {
  const params = ["token", "access_token", "auth", "api_key", "apikey", "key", "bearer", "auth_token", "ACCESS_TOKEN"];

  test("a token in any credential-like query parameter is refused on every route, even with the right header", async () => {
    for (const param of params) {
      const query = `?${param}=${stack.relay.token}`;
      const mcp = await initialize(bearer(stack.relay.token), `/mcp${query}`);
      expect([mcp.status, mcp.error?.message]).toEqual([401, "Tokens in URLs are refused (URLs end up in logs). Send the header Authorization: Bearer <token>."]);
      expect((await request(stack.relay, `/sse${query}`, { headers: { ...bearer(stack.relay.token), ...fromNewAddress() } })).status).toBe(401);
      expect((await post(stack.relay, `/messages?sessionId=x&${param}=${stack.relay.token}`, "{}", { ...bearer(stack.relay.token), ...fromNewAddress() })).status).toBe(401);
      expect(await upgradeStatus(bearer(AGENT_TOKEN), `?${param}=${AGENT_TOKEN}`)).toBe(401);
    }
  });

  test("the refused tokens appear in no response, no log line and no database file", async () => {
    const answers = [
      await initialize({}, `/mcp?access_token=${grant.access}`),
      await request(stack.relay, `/sse?token=${stack.relay.token}`, { headers: fromNewAddress() }),
    ];
    for (const answer of answers) {
      const headers = JSON.stringify([...answer.headers]);
      for (const secret of [stack.relay.token, grant.access]) {
        expect(answer.text).not.toContain(secret);
        expect(headers).not.toContain(secret);
      }
    }
    const socket = rawSocket(wsUrl(`?token=${AGENT_TOKEN}`), fromNewAddress());
    expect(await socket.opened).toBe(false);
    await stack.relay.stderr.waitFor(/authentication refused path="\/ws\/agent".*reason="token in URL"/);
    for (const secret of [stack.relay.token, AGENT_TOKEN, grant.access, grant.refresh, machineToken]) expect(whereLeaked(secret, stack.relay, [stack.agent])).toEqual([]);
  });
});

describe("the Authorization header, spelled in unusual ways", () => {
  const accepted: [string, (t: string) => string][] = [
    ["lowercase 'bearer'", (t) => `bearer ${t}`],
    ["uppercase 'BEARER'", (t) => `BEARER ${t}`],
    ["two spaces after the scheme", (t) => `Bearer  ${t}`],
    ["a trailing space", (t) => `Bearer ${t} `],
  ];
  for (const [what, header] of accepted) {
    test(`${what} is accepted (the scheme is case-insensitive and 1*SP may separate it: RFC 9110 §11.4)`, async () => {
      expect((await initialize({ Authorization: header(stack.relay.token) })).status).toBe(200);
    });
  }

  const refused: [string, (t: string) => string][] = [
    ["a tab instead of a space", (t) => `Bearer\t${t}`],
    ["a second word after the token", (t) => `Bearer ${t} extra`],
    ["no scheme", (t) => t],
    ["the Basic scheme", (t) => `Basic ${btoa(`owner:${t}`)}`],
    ["a comma-separated second credential", (t) => `Bearer ${newToken()}, Bearer ${t}`],
  ];
  for (const [what, header] of refused) {
    test(`${what} gets 401`, async () => {
      const reply = await initialize({ Authorization: header(stack.relay.token) });
      expect(reply.status).toBe(401);
      expect(reply.text).not.toContain(stack.relay.token);
    });
  }
});

test("1000 failures from one address: 401 for the first eleven, then 429 with Retry-After; right credentials from it are still served", async () => {
  const address = fromNewAddress();
  const statuses: number[] = [];
  let retryAfter = 0;
  for (let i = 0; i < 1000; i++) {
    const response = await fetch(new URL("/mcp", stack.relay.url), { method: "POST", headers: { ...MCP_HEADERS, ...address, ...bearer(newToken()) }, body: "{}" });
    statuses.push(response.status);
    if (response.status === 429) retryAfter = Math.max(retryAfter, Number(response.headers.get("retry-after")));
    await response.body?.cancel();
  }
  expect(statuses.slice(0, 11)).toEqual(Array(11).fill(401));
  expect(statuses[11]).toBe(429);
  // Each wait ends with one more counted failure, which doubles the next wait: only a handful more 401s.
  const unauthorized = statuses.filter((s) => s === 401).length;
  expect(unauthorized).toBeLessThanOrEqual(11 + Math.ceil(Math.log2(60)));
  expect(statuses.filter((s) => s === 429).length).toBe(1000 - unauthorized);
  expect(retryAfter).toBeGreaterThanOrEqual(1);
  // Only the failures wait, and every wrong token gets the same answer, so the wait tells nothing about a token. Right
  // credentials from the same address are served: one misconfigured client there must not lock the owner out.
  const waits = new Set<string>();
  for (const wrong of [newToken(), "x", stack.relay.token.slice(0, -1)]) {
    const reply = await initialize({ ...address, ...bearer(wrong) });
    expect(reply.status).toBe(429);
    waits.add(reply.error!.message.replace(/\d+ s\./, "N s."));
  }
  expect([...waits]).toEqual(["Too many failed attempts from this address; try again in N s."]);
  expect((await initialize({ ...address, ...bearer(stack.relay.token) })).status).toBe(200);
  expect((await initialize({ ...address, ...bearer(grant.access) })).status).toBe(200);
  expect(await upgradeStatus({ ...address, ...bearer(AGENT_TOKEN) })).toBe(101);
  expect(await upgradeStatus({ ...address, ...bearer(machineToken) })).toBe(101);
  expect(await upgradeStatus({ ...address, ...bearer(newToken()) })).toBe(429);
  expect((await initialize(address)).status).toBe(401); // no token is how an OAuth client starts: its challenge, no wait
  expect((await initialize({ ...address, ...bearer(newToken()) })).status).toBe(429); // the successes cleared nothing
  expect((await initialize(bearer(stack.relay.token))).status).toBe(200); // another address is not affected
  const session = await openSession(stack.relay);
  expect(toolAnswer(await session.callTool("run_shell_command", { command: "echo served" })).data.stdout).toBe("served\n");
});

test("an IPv6 /64 counts as one address: twelve wrong tokens from twelve of its addresses meet the wait", async () => {
  const statuses: number[] = [];
  for (let i = 1; i <= 12; i++) statuses.push((await initialize({ "X-Forwarded-For": `2001:db8:64:1::${i.toString(16)}`, ...bearer(newToken()) })).status);
  expect(statuses.slice(0, 11)).toEqual(Array(11).fill(401));
  expect(statuses[11]).toBe(429);
  expect((await initialize({ "X-Forwarded-For": "2001:db8:64:2::1", ...bearer(newToken()) })).status).toBe(401); // the next /64 is another
});

test("a token holder's successful logins do not buy more guesses at the owner secret", async () => {
  const address = fromNewAddress();
  const guess = async (secret: string) => {
    const response = await fetch(new URL("/login", stack.relay.url), {
      method: "POST",
      redirect: "manual",
      headers: { "Content-Type": "application/x-www-form-urlencoded", ...address },
      body: new URLSearchParams({ owner_secret: secret }),
    });
    await response.body?.cancel();
    return response.status;
  };
  const statuses: number[] = [];
  for (let round = 0; round < 2; round++) {
    for (let i = 0; i < 6; i++) statuses.push(await guess(`guess ${round}-${i}`));
    expect(await upgradeStatus({ ...address, ...bearer(machineToken) })).toBe(101); // a success from the same address
    expect((await initialize({ ...address, ...bearer(stack.relay.token) })).status).toBe(200);
  }
  // Twelve wrong guesses: the eleventh starts the wait, the twelfth meets it, despite the successes in between.
  expect(statuses.slice(0, 11)).toEqual(Array(11).fill(401));
  expect(statuses[11]).toBe(429);
  expect(await guess(stack.relay.token)).toBe(429); // the right secret waits too
});

// Found by review: the limits were per exact address only, so 300 guesses from 30 addresses met none, and each
// guess wrote its own audit row. Its own relay: the global limit it trips would hold for the other tests too.
test("300 wrong owner secrets from 30 addresses meet a global limit; the owner, from an address that has not failed, still gets in", async () => {
  await using relay = await startRelay({ env: { TRUST_PROXY: "1" } });
  const from = (address: string) => ({ "X-Forwarded-For": address });
  const login = async (address: string, secret: string) => {
    const response = await fetch(new URL("/login", relay.url), {
      method: "POST",
      redirect: "manual",
      headers: { "Content-Type": "application/x-www-form-urlencoded", ...from(address) },
      body: new URLSearchParams({ owner_secret: secret }),
    });
    await response.body?.cancel();
    return response.status;
  };
  const statuses: number[][] = [];
  for (let a = 1; a <= 30; a++) {
    const row: number[] = [];
    for (let i = 0; i < 10; i++) row.push(await login(`127.8.0.${a}`, `guess ${a}-${i}`));
    statuses.push(row);
  }
  // The first three addresses use their ten free failures each: thirty in all, the global limit. From then on an
  // address that has failed waits, and each new one gets a single try.
  expect(statuses.slice(0, 3).flat()).toEqual(Array(30).fill(401));
  for (const row of statuses.slice(3)) expect(row).toEqual([401, ...Array(9).fill(429)]);

  expect(await login("127.8.1.1", relay.token)).toBe(303); // the owner signs in to the dashboard
  const consent = await openConsent(await newAuthorizationUrl(relay.url, "http://127.0.0.1:1/callback"), from("127.8.1.2"));
  expect((await answerConsent(relay.url, consent, { secret: relay.token, headers: from("127.8.1.2") })).status).toBe(302); // and approves a client
  expect(await login("127.8.0.30", relay.token)).toBe(429); // an address that failed waits, right secret or not

  // Each address's first failure has a row of its own; the rest are counted, and the counts written when it stops.
  await relay.stop();
  const events = eventsOf(relay.databasePath);
  expect(events.filter((e) => e.kind === "auth_refused")).toHaveLength(30);
  const repeated = events.filter((e) => e.kind === "auth_refused_repeated");
  expect(repeated.map((e) => e.detail.address).sort()).toEqual(["127.8.0.1", "127.8.0.2", "127.8.0.3"]);
  for (const row of repeated) expect(row.detail.detail).toMatch(/^\/login: wrong owner secret: 9 more in the last \d+ min$/);
  expect(relay.stderr.text.match(/authentication refused, repeatedly/g)).toHaveLength(3);
});

test("failures from 250 addresses write at most 200 rows of their own; the rest are counted in one row", async () => {
  await using relay = await startRelay({ env: { TRUST_PROXY: "1" } });
  for (let a = 0; a < 250; a++) {
    const reply = await post(relay, "/mcp", INITIALIZE, { "X-Forwarded-For": `127.9.${a >> 8}.${a & 255}`, ...bearer(newToken()) });
    expect(reply.status).toBe(401);
  }
  await relay.stop();
  const events = eventsOf(relay.databasePath);
  expect(events.filter((e) => e.kind === "auth_refused")).toHaveLength(200);
  const counted = events.filter((e) => e.kind === "auth_refused_repeated");
  expect(counted.map((e) => e.detail.detail)).toEqual([expect.stringMatching(/^\/mcp: wrong or expired token: 50 more from 50 addresses not recorded one by one in the last \d+ min$/)]);
});

describe("floods of OAuth requests cannot lock the owner out", () => {
  const REDIRECT = "http://127.0.0.1:1/callback";
  /** The owner's answer (the right secret), posted from `address`. */
  const answerFrom = (consent: { requestId: string; cookie: string }, address: Record<string, string>) =>
    answerConsent(stack.relay.url, consent, { secret: stack.relay.token, headers: address });

  test("1,100 pending consent pages from 110 addresses: the owner's page still opens and approves", async () => {
    const url = await newAuthorizationUrl(stack.relay.url, REDIRECT);
    for (let batch = 0; batch < 110; batch++) {
      const address = fromNewAddress();
      const statuses = await Promise.all(Array.from({ length: 10 }, () => openConsent(url, address).then((c) => c.response.status)));
      expect(statuses).toEqual(Array(10).fill(200));
    }
    const owner = fromNewAddress();
    const consent = await openConsent(url, owner);
    expect(consent.response.status).toBe(200);
    const approved = await answerFrom(consent, owner);
    expect(approved.status).toBe(302);
    expect(new URL(approved.headers.get("location")!).searchParams.get("code")).toStartWith("crc_");
  });

  test("one address keeps its last ten pending consents: the eleventh drops its first", async () => {
    const url = await newAuthorizationUrl(stack.relay.url, REDIRECT);
    const address = fromNewAddress();
    const consents = [];
    for (let i = 0; i < 11; i++) consents.push(await openConsent(url, address));
    expect((await answerFrom(consents[0]!, address)).status).toBe(400); // expired: dropped to make room
    expect((await answerFrom(consents[10]!, address)).status).toBe(302);
  });
});

test(
  "upgrades that never finish, and agents that never say hello, are dropped; other agents and clients are served meanwhile",
  async () => {
    const opened = Date.now();
    /** A raw TCP connection that sends the start of an upgrade request and then stalls (or trickles a header every 2 s). */
    const stalled = (trickle: boolean) =>
      new Promise<number>(async (resolve) => {
        let timer: ReturnType<typeof setInterval> | undefined;
        const socket = await Bun.connect({
          hostname: "127.0.0.1",
          port: stack.relay.port,
          socket: { data() {}, close: () => (clearInterval(timer), resolve(Date.now() - opened)) },
        });
        socket.write(`GET /ws/agent HTTP/1.1\r\nHost: 127.0.0.1:${stack.relay.port}\r\nUpgrade: websocket\r\nAuthorization: Bearer ${AGENT_TOKEN}\r\n`);
        if (trickle) timer = setInterval(() => socket.write(`X-Slow-${Date.now()}: a\r\n`), 2_000);
        setTimeout(() => (clearInterval(timer), socket.end()), 50_000); // bounded even if the relay never closes it
      });
    const slow = [...Array.from({ length: 20 }, () => stalled(false)), ...Array.from({ length: 20 }, () => stalled(true))];
    const silent = Array.from({ length: 5 }, () => rawSocket(wsUrl(), bearer(AGENT_TOKEN)));
    for (const s of silent) expect(await s.opened).toBe(true);

    await using late = await startAgent(stack.relay, { machine: "late", token: AGENT_TOKEN });
    const session = await openSession(stack.relay);
    const status = toolAnswer(await session.callTool("check_agent_status", { machine: "late" }));
    expect(status.data.machines[0].pid).toBe(late.proc.pid);

    for (const s of silent) expect(await s.closed).toEqual({ code: 4000, reason: "no hello" });
    const closedAfterMs = await Promise.all(slow);
    // Bun drops a request whose headers are not complete within about 10 s; the idle timeout would be 30 s.
    expect(Math.max(...closedAfterMs)).toBeLessThan(40_000);
    expect(stack.relay.proc.exitCode).toBeNull();
  },
  60_000,
);
