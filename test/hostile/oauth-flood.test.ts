// Floods of the OAuth endpoints anyone may call without credentials (registration and consent pages), against a
// real relay: they must not block onboarding. A fresh client still registers, the owner's open consent page (and
// the client it belongs to) outlives a flood from fewer than a thousand sources, one IPv6 /64 counts as one source,
// and registrations nobody approves (as clients that register again on every failed health check leave behind) are
// gone within minutes. The relay believes X-Forwarded-For (TRUST_PROXY=1), so each source is its own address.

import { expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { answerConsent, obtainGrant, openConsent } from "../helpers/oauth.ts";
import { useStack } from "../helpers/stack.ts";

const OWNER_PASSWORD = "owner passphrase against floods";
const REDIRECT = "http://127.0.0.1:1/callback";
const stack = useStack({ relay: { env: { OWNER_PASSWORD, TRUST_PROXY: "1" } }, agent: false });

const from = (address: string) => ({ "X-Forwarded-For": address });

/** POST /register from `address`: the status, and the client id when it registered. */
async function register(address: string, name = "Flood"): Promise<{ status: number; clientId?: string; retryAfter: string | null }> {
  const response = await fetch(new URL("/register", stack.relay.url), {
    method: "POST",
    headers: { "Content-Type": "application/json", ...from(address) },
    body: JSON.stringify({ client_name: name, redirect_uris: [REDIRECT], token_endpoint_auth_method: "none" }),
  });
  const body = (await response.json()) as { client_id?: string };
  return { status: response.status, clientId: body.client_id, retryAfter: response.headers.get("retry-after") };
}

/** An authorization URL for `clientId` (a fixed PKCE challenge: these codes are never redeemed here). */
function authorizeUrl(clientId: string): URL {
  const url = new URL("/authorize", stack.relay.url);
  const params = { response_type: "code", client_id: clientId, redirect_uri: REDIRECT, code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", code_challenge_method: "S256" };
  for (const [key, value] of Object.entries(params)) url.searchParams.set(key, value);
  return url;
}

/** `count` requests from each of `sources` addresses, each address's requests at once. */
async function flood<T>(sources: number, count: number, address: (i: number) => string, send: (address: string) => Promise<T>): Promise<T[]> {
  const results: T[] = [];
  for (let i = 0; i < sources; i++) results.push(...(await Promise.all(Array.from({ length: count }, () => send(address(i))))));
  return results;
}

/** Runs `sql` on the relay's database beside the running relay, as an operator with sqlite3 would. */
function onDatabase<T>(sql: string, ...params: (string | number)[]): T {
  const db = new Database(stack.relay.databasePath);
  try {
    db.run("PRAGMA busy_timeout = 5000");
    return db.query(sql).all(...params) as T;
  } finally {
    db.close();
  }
}

test("the owner's open consent survives 1,000 registrations from 50 addresses and 1,100 consent pages from 110; a fresh client still registers", async () => {
  const owner = from("10.9.9.9");
  const ownersClient = (await register("10.9.9.9", "The owner's client")).clientId!;
  const consent = await openConsent(authorizeUrl(ownersClient), owner);
  expect(consent.response.status).toBe(200);

  const registrations = await flood(50, 20, (i) => `10.1.0.${i + 1}`, (address) => register(address));
  expect(registrations.every((r) => r.status === 201)).toBe(true);
  const floodClient = registrations.at(-1)!.clientId!; // the flood's newest: its oldest gave way to the owner's
  const pages = await flood(110, 10, (i) => `10.2.${Math.floor(i / 100)}.${(i % 100) + 1}`, (address) => openConsent(authorizeUrl(floodClient), from(address)));
  expect(pages.every((p) => p.response.status === 200)).toBe(true);

  const fresh = await register("10.3.0.1", "A newcomer");
  expect(fresh.status).toBe(201); // the table is full of the flood's clients: the busiest source gave one up
  expect((await openConsent(authorizeUrl(fresh.clientId!), from("10.3.0.1"))).response.status).toBe(200);

  const approved = await answerConsent(stack.relay.url, consent, { secret: OWNER_PASSWORD, headers: owner });
  expect(approved.status).toBe(302);
  expect(new URL(approved.headers.get("location")!).searchParams.get("code")).toStartWith("crc_");
  const [clients] = onDatabase<{ n: number }[]>("SELECT count(*) AS n FROM oauth_clients");
  expect(clients!.n).toBeLessThanOrEqual(1_000);
});

test("after a flood of wrong client credentials at /token, its failures wait but a right refresh from the same address is served", async () => {
  const grant = await obtainGrant(stack.relay.url, OWNER_PASSWORD, { name: "Refreshes behind a noisy proxy" });
  const token = (body: Record<string, string>) =>
    fetch(new URL("/token", stack.relay.url), { method: "POST", headers: { "Content-Type": "application/x-www-form-urlencoded", ...from("10.5.0.1") }, body: new URLSearchParams(body) });
  const statuses: number[] = [];
  for (let i = 0; i < 12; i++) statuses.push((await token({ grant_type: "refresh_token", refresh_token: "crr_guess", client_id: `nobody-${i}` })).status);
  expect(statuses).toEqual([...Array(11).fill(401), 429]);
  const refreshed = await token({ grant_type: "refresh_token", refresh_token: grant.refresh, client_id: grant.clientId });
  expect(refreshed.status).toBe(200);
  expect(((await refreshed.json()) as { access_token: string }).access_token).toStartWith("cra_");
});

test("one IPv6 /64 is one source: its addresses share one allowance of registrations", async () => {
  const results = [];
  for (let i = 1; i <= 31; i++) results.push(await register(`2001:db8:77:1::${i.toString(16)}`));
  expect(results.slice(0, 30).every((r) => r.status === 201)).toBe(true);
  expect(results[30]!.status).toBe(429);
  expect(Number(results[30]!.retryAfter)).toBeGreaterThan(0);
  expect((await register("2001:db8:77:2::1")).status).toBe(201); // the next /64 is someone else
});

test("registrations nobody approves, as after each failed health check, are gone within minutes; one being approved stays", async () => {
  const address = "10.4.0.1";
  const leftBehind: string[] = [];
  for (let i = 0; i < 5; i++) {
    // What a client without credentials does on every health check: a 401, then a registration of its own.
    const check = await fetch(new URL("/mcp", stack.relay.url), { method: "POST", headers: { "Content-Type": "application/json", ...from(address) }, body: "{}" });
    expect(check.status).toBe(401);
    leftBehind.push((await register(address, "Health checker")).clientId!);
  }
  const beingApproved = leftBehind.pop()!;
  expect((await openConsent(authorizeUrl(beingApproved), from(address))).response.status).toBe(200);

  // Eleven minutes pass for these registrations (the relay reads the time they registered from its database).
  const ids = [...leftBehind, beingApproved];
  onDatabase(`UPDATE oauth_clients SET created_at = created_at - 660 WHERE client_id IN (${ids.map(() => "?").join(",")})`, ...ids);
  expect((await register("10.4.0.2", "Someone else")).status).toBe(201); // registering sweeps first (so does a timer every minute)

  const remaining = onDatabase<{ client_id: string }[]>(`SELECT client_id FROM oauth_clients WHERE client_id IN (${ids.map(() => "?").join(",")})`, ...ids);
  expect(remaining.map((r) => r.client_id)).toEqual([beingApproved]);
  const gone = await fetch(authorizeUrl(leftBehind[0]!), { headers: from(address) });
  expect(gone.status).toBe(400);
  expect(await gone.text()).toContain("never approved and expired");
});
