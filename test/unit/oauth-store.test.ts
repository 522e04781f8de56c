// The OAuth client table stays bounded without locking real clients out: when it is full, the oldest client that
// registered long enough ago and never got a token makes room (credentials.ts, OAuthStore.dropOldestUnused).

import { expect, test } from "bun:test";
import { OAuthStore } from "../../relay/credentials.ts";
import { openDatabase } from "../../relay/storage.ts";

const metadata = { redirect_uris: ["http://127.0.0.1:1/callback"], token_endpoint_auth_method: "none" } as never;

test("the oldest unused client registered before the cut-off is dropped; clients with tokens and recent ones stay", () => {
  const store = new OAuthStore(openDatabase(":memory:"));
  const [old, used, recent] = [store.register(metadata, false), store.register(metadata, false), store.register(metadata, false)];
  const setAge = (clientId: string, createdAt: number) => store.db.query("UPDATE oauth_clients SET created_at = ? WHERE client_id = ?").run(createdAt, clientId);
  setAge(used.client_id, 100); // the oldest of all, but it got tokens
  setAge(old.client_id, 200);
  setAge(recent.client_id, 5_000);
  store.issue({ client_id: used.client_id, scopes: ["mcp"], resource: "http://127.0.0.1/mcp" });

  expect(store.dropOldestUnused(1_000)).toBe(true);
  expect(store.client(old.client_id)).toBeUndefined();
  expect(store.client(used.client_id)).toBeDefined();
  expect(store.dropOldestUnused(1_000)).toBe(false); // the recent one is still within its grace
  expect(store.client(recent.client_id)).toBeDefined();
  expect(store.clientCount()).toBe(2);
});
