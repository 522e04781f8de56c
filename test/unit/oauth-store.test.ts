// The OAuth store's bookkeeping (credentials.ts, OAuthStore) on a real in-memory SQLite database: registrations the
// owner never approved expire and give way to new ones (the busiest source first), a grant keeps only a fingerprint
// of the owner secret, and a new secret revokes what the old one approved. The flows around it run against real
// relays in test/e2e/oauth*.test.ts and test/hostile/oauth-flood.test.ts.

import { describe, expect, test } from "bun:test";
import { OAuthStore, printableName } from "../../relay/credentials.ts";
import { openDatabase } from "../../relay/storage.ts";

const metadata = { redirect_uris: ["http://127.0.0.1:1/callback"], token_endpoint_auth_method: "none" } as never;
const SECRET = "owner secret one";

function newStore(secret = SECRET) {
  const store = new OAuthStore(openDatabase(":memory:"));
  store.adoptOwnerSecret(secret);
  return store;
}

const setAge = (store: OAuthStore, clientId: string, createdAt: number) =>
  store.db.query("UPDATE oauth_clients SET created_at = ? WHERE client_id = ?").run(createdAt, clientId);
const approve = (store: OAuthStore, clientId: string) => store.approve({ client_id: clientId, scopes: ["mcp"], resource: "http://127.0.0.1/mcp" });

describe("registrations the owner never approved", () => {
  test("expire after the cut-off, unless approved or their approval is under way", () => {
    const store = newStore();
    const [old, approved, underWay, recent] = [1, 2, 3, 4].map(() => store.register(metadata, false, "192.0.2.1"));
    for (const client of [old, approved, underWay]) setAge(store, client!.client_id, 100);
    setAge(store, recent!.client_id, 5_000);
    approve(store, approved!.client_id);

    expect(store.dropUnapproved(1_000, new Set([underWay!.client_id]))).toBe(1);
    expect(store.client(old!.client_id)).toBeUndefined();
    for (const kept of [approved, underWay, recent]) expect(store.client(kept!.client_id)).toBeDefined();
  });

  test("a full table gives way at the busiest source, oldest first; approved clients never", () => {
    const store = newStore();
    const quiet = store.register(metadata, false, "192.0.2.1");
    const flood = [1, 2, 3].map(() => store.register(metadata, false, "2001:db8::/64"));
    const approvedFromFlood = store.register(metadata, false, "2001:db8::/64");
    approve(store, approvedFromFlood.client_id);
    flood.forEach((client, i) => setAge(store, client.client_id, 200 + i));
    setAge(store, quiet.client_id, 100); // the oldest of all, but from a quiet source

    expect(store.dropUnapprovedOfBusiestSource()).toBe(true);
    expect(store.client(flood[0]!.client_id)).toBeUndefined();
    expect(store.client(quiet.client_id)).toBeDefined();
    for (let i = 0; i < 3; i++) expect(store.dropUnapprovedOfBusiestSource()).toBe(true); // the flood's two, then the quiet one
    expect(store.dropUnapprovedOfBusiestSource()).toBe(false); // only the approved one is left
    expect(store.client(approvedFromFlood.client_id)).toBeDefined();
  });
});

describe("grants and the owner secret", () => {
  test("the same secret keeps grants; a new one revokes every grant made under the old one", () => {
    const store = newStore();
    const a = store.register(metadata, false, "192.0.2.1");
    const b = store.register(metadata, false, "192.0.2.2");
    const granted = [approve(store, a.client_id), approve(store, a.client_id), approve(store, b.client_id)];
    expect(store.adoptOwnerSecret(SECRET)).toEqual({ grants: 0, clients: 0 });
    expect(store.accessGrant(granted[0]!.tokens.access_token)).toBeDefined();

    expect(store.adoptOwnerSecret("owner secret two")).toEqual({ grants: 3, clients: 2 });
    for (const { tokens } of granted) {
      expect(store.accessGrant(tokens.access_token)).toBeUndefined();
      expect(store.spendRefresh(tokens.refresh_token, a.client_id)).toBeUndefined();
    }
    expect(store.approvedClients()).toEqual([]);
    expect(store.hasGrant(a.client_id)).toBe(false);
  });

  test("tokens issued before grants were recorded (an older relay's) are revoked too: nobody can say who approved them", () => {
    const store = newStore();
    const client = store.register(metadata, false, "192.0.2.1");
    const legacy = store.issue({ client_id: client.client_id, scopes: ["mcp"], resource: "http://127.0.0.1/mcp" }, "a-family-with-no-grant");
    expect(store.adoptOwnerSecret(SECRET)).toEqual({ grants: 1, clients: 1 });
    expect(store.accessGrant(legacy.access_token)).toBeUndefined();
  });

  test("the database keeps a salted fingerprint of the secret, never the secret", () => {
    const store = newStore();
    approve(store, store.register(metadata, false, "192.0.2.1").client_id);
    const { owner_key } = store.db.query("SELECT owner_key FROM oauth_grants").get() as { owner_key: string };
    expect(owner_key).not.toContain(SECRET);
    const other = newStore(); // another database: another salt, another fingerprint of the same secret
    approve(other, other.register(metadata, false, "192.0.2.1").client_id);
    expect((other.db.query("SELECT owner_key FROM oauth_grants").get() as { owner_key: string }).owner_key).not.toBe(owner_key);
  });

  test("an approval unused for as long as a refresh token lives lapses", () => {
    const store = newStore();
    const client = store.register(metadata, false, "192.0.2.1");
    approve(store, client.client_id);
    store.dropExpired(Date.now() + 29 * 24 * 3600 * 1000);
    expect(store.hasGrant(client.client_id)).toBe(true);
    store.dropExpired(Date.now() + 31 * 24 * 3600 * 1000);
    expect(store.hasGrant(client.client_id)).toBe(false);
    expect(store.approvedClients()).toEqual([]);
  });

  test("forgetting a client takes its grants and tokens along", () => {
    const store = newStore();
    const client = store.register(metadata, false, "192.0.2.1");
    const { tokens } = approve(store, client.client_id);
    expect(store.approvedClients().map((c) => c.client_id)).toEqual([client.client_id]);
    expect(store.forgetClient(client.client_id)?.client_id).toBe(client.client_id);
    expect(store.accessGrant(tokens.access_token)).toBeUndefined();
    expect(store.approvedClients()).toEqual([]);
    expect(store.forgetClient(client.client_id)).toBeUndefined();
  });
});

test("names someone else chose are printed harmless: no control or bidi characters, and not too long", () => {
  expect(printableName("\u001b[31mred\u202eevil\u0000")).toBe("?[31mred?evil?");
  expect(printableName("x".repeat(200), 10)).toBe(`${"x".repeat(9)}…`);
  expect(printableName("")).toBeUndefined();
  expect(printableName(42)).toBeUndefined();
});
