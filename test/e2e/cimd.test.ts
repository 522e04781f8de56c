// OAuth clients identified by a Client ID Metadata Document, against a real relay: documents published over https
// by a site of the test's own (its CA trusted through CIMD_TEST_CA_FILE, the test-only setting). The v2 SDK client
// with a clientMetadataUrl registers nothing, the consent page names the document's client_name and its host, and
// its tokens drive the tools; a private_key_jwt client (as ChatGPT's document asks) authenticates with signed
// assertions, and forged, expired, wrong-audience and replayed ones are refused and audited; documents that are not
// what they should be (on a private address, too large, too slow, redirected, naming another client_id, not listing
// the redirect URI, ...) are refused on the relay's page with a reason; fetched documents are cached within bounds.

import { afterAll, describe, expect, test } from "bun:test";
import { createHash, generateKeyPairSync, randomBytes, type KeyObject } from "node:crypto";
import { Client, createPrivateKeyJwtAuth, StreamableHTTPClientTransport, UnauthorizedError } from "@modelcontextprotocol/client";
import { eventsOf, relayCommand } from "../helpers/audit.ts";
import { textsOf } from "../helpers/browser.ts";
import { startDocumentSite } from "../helpers/cimd.ts";
import { answerConsent, approve, openConsent, TestOAuthProvider, type TestClientIdentity } from "../helpers/oauth.ts";
import { startRelay } from "../helpers/processes.ts";
import { useStack } from "../helpers/stack.ts";
import { MAX_CACHED } from "../../relay/cimd.ts";

const OWNER_PASSWORD = "owner passphrase for documents";
const REDIRECT = "http://127.0.0.1:1/callback";
const JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

const site = startDocumentSite();
afterAll(() => site[Symbol.asyncDispose]());
const stack = useStack({ relay: { env: { OWNER_PASSWORD, CIMD_TEST_CA_FILE: site.caFile } }, agent: { machine: "cimd-box" } });

/** What a metadata document of a public client (claude.ai's, Claude Code's) says, and its variations. */
const publicClient = (fields: Record<string, unknown> = {}) => ({
  client_name: "Claude Code (test)",
  redirect_uris: [REDIRECT],
  grant_types: ["authorization_code", "refresh_token"],
  response_types: ["code"],
  token_endpoint_auth_method: "none",
  ...fields,
});

/** A key pair for private_key_jwt: the private key as PKCS#8 PEM (what the SDK's signer takes), the public one as JWK. */
function rsaKeys(kid = "k1"): { privatePem: string; publicJwk: Record<string, unknown>; key: KeyObject } {
  const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  return { privatePem: privateKey.export({ type: "pkcs8", format: "pem" }).toString(), publicJwk: { ...publicKey.export({ format: "jwk" }), kid, use: "sig", alg: "RS256" }, key: privateKey };
}

/** An authorization request for `clientId` with a fresh PKCE pair. */
function authorizeUrl(clientId: string, params: Record<string, string> = {}): { url: URL; verifier: string } {
  const verifier = randomBytes(32).toString("base64url");
  const url = new URL("/authorize", stack.relay.url);
  const all = {
    response_type: "code",
    client_id: clientId,
    redirect_uri: REDIRECT,
    code_challenge: createHash("sha256").update(verifier).digest("base64url"),
    code_challenge_method: "S256",
    state: "s-1",
    resource: new URL("/mcp", stack.relay.url).toString(),
    ...params,
  };
  for (const [key, value] of Object.entries(all)) url.searchParams.set(key, value);
  return { url, verifier };
}

const token = (params: Record<string, string> | URLSearchParams) =>
  fetch(new URL("/token", stack.relay.url), { method: "POST", headers: { "Content-Type": "application/x-www-form-urlencoded" }, body: new URLSearchParams(params) });

const describeError = async (response: Response) => (await response.json()) as { error: string; error_description: string };

/** A client_assertion for `clientId` signed with `privatePem`, as the SDK's private_key_jwt helper makes it. */
async function assertion(clientId: string, privatePem: string, options: { audience?: string; lifetimeSeconds?: number } = {}): Promise<Record<string, string>> {
  const params = new URLSearchParams();
  const sign = createPrivateKeyJwtAuth({ issuer: clientId, subject: clientId, privateKey: privatePem, alg: "RS256", audience: options.audience ?? stack.relay.url.origin, lifetimeSeconds: options.lifetimeSeconds });
  await sign(new Headers(), params, new URL("/token", stack.relay.url), undefined);
  return Object.fromEntries(params);
}

/** The v2 SDK's client through the whole flow: the first connect needs authorization, the owner approves on the
 *  consent page (whose HTML is returned), finishAuth checks the answer (its iss too), and a second client connects. */
async function connectWithDocument(identity: TestClientIdentity): Promise<{ client: Client; consentHtml: string; provider: TestOAuthProvider; answer: URL }> {
  const provider = new TestOAuthProvider(identity);
  const transport = () => new StreamableHTTPClientTransport(new URL("/mcp", stack.relay.url), { authProvider: provider });
  const first = transport();
  await expect(new Client({ name: "t", version: "1" }).connect(first)).rejects.toThrow(UnauthorizedError);
  const consent = await openConsent(provider.authorizationUrl!);
  const answered = await answerConsent(stack.relay.url, consent, { secret: OWNER_PASSWORD });
  const answer = new URL(answered.headers.get("location")!);
  await first.finishAuth(answer.searchParams);
  const client = new Client({ name: "t", version: "1" });
  await client.connect(transport());
  return { client, consentHtml: consent.html, provider, answer };
}

/** `bun run server.ts oauth-clients …` on the relay's database, as the owner would run it. */
const oauthClientsCli = (...args: string[]) => relayCommand(stack.relay.databasePath, "oauth-clients", ...args);

test("the authorization server metadata advertises metadata documents, private_key_jwt and iss", async () => {
  const metadata = (await (await fetch(new URL("/.well-known/oauth-authorization-server", stack.relay.url))).json()) as any;
  expect(metadata.client_id_metadata_document_supported).toBe(true);
  expect(metadata.authorization_response_iss_parameter_supported).toBe(true);
  // claude.ai uses its document only when "none" is offered beside it; ChatGPT's document asks for private_key_jwt
  expect(metadata.token_endpoint_auth_methods_supported).toEqual(expect.arrayContaining(["none", "private_key_jwt", "client_secret_basic"]));
  expect(metadata.token_endpoint_auth_signing_alg_values_supported).toEqual(["RS256", "PS256", "ES256", "EdDSA"]);
  expect(metadata.registration_endpoint).toBe(`${stack.relay.url.origin}/register`); // registration stays, as the fallback
});

describe("a public client identified by its metadata document (as claude.ai and Claude Code)", () => {
  test("registers nothing, is named on the consent page by its document and host, its tokens drive the tools, and the owner lists and revokes it", async () => {
    const clientId = site.publish("/claude/client.json", publicClient());
    const { client, consentHtml, provider, answer } = await connectWithDocument({ authMethod: "none", clientMetadataUrl: clientId });

    expect(new URL(provider.authorizationUrl!).searchParams.get("client_id")).toBe(clientId);
    expect(textsOf(consentHtml, "h1")).toEqual(["Allow Claude Code (test) to use Code Remote?"]);
    expect(textsOf(consentHtml, ".publisher")).toEqual([new URL(clientId).host]);
    expect(textsOf(consentHtml, ".publisher strong")).toEqual(["localhost"]);
    expect(textsOf(consentHtml, ".warning.danger")[0]).toContain("The answer stays on this computer"); // a localhost redirect: anyone here could use the name
    expect(answer.searchParams.get("iss")).toBe(stack.relay.url.origin); // RFC 9207

    const result = (await client.callTool({ name: "run_shell_command", arguments: { command: "echo via-document" } })) as any;
    expect(result.structuredContent.stdout).toBe("via-document\n");
    await client.close();

    const events = eventsOf(stack.relay.databasePath);
    expect(events.filter((e) => e.kind === "oauth_client_registered")).toEqual([]);
    expect(events.some((e) => e.kind === "oauth_consent_approved" && e.detail.detail === clientId)).toBe(true);

    const listed = oauthClientsCli("list");
    expect(listed.stdout).toContain(clientId);
    expect(listed.stdout).toContain("Claude Code (test)");
    expect(oauthClientsCli("revoke", clientId).code).toBe(0);
    const refreshed = await token({ grant_type: "refresh_token", refresh_token: provider.tokens()!.refresh_token!, client_id: clientId });
    expect((await describeError(refreshed)).error).toBe("invalid_grant");
    expect(oauthClientsCli("list").stdout).not.toContain(clientId);
  });

  test("the dashboard's Applications lists it by its document's name and revokes it: its tokens stop working", async () => {
    const clientId = site.publish("/dashboard/client.json", publicClient({ client_name: "Dashboard doc client" }));
    const { url, verifier } = authorizeUrl(clientId);
    const code = await approve(url, OWNER_PASSWORD);
    const tokens = (await (await token({ grant_type: "authorization_code", code, redirect_uri: REDIRECT, code_verifier: verifier, client_id: clientId })).json()) as { access_token: string };
    const login = await fetch(new URL("/login", stack.relay.url), { method: "POST", body: new URLSearchParams({ owner_secret: OWNER_PASSWORD }), redirect: "manual" });
    const cookie = { Cookie: login.headers.get("set-cookie")!.split(";")[0]! };
    const home = await (await fetch(new URL("/", stack.relay.url), { headers: cookie })).text();
    expect(textsOf(home, "ul.clients strong")).toContain("Dashboard doc client");
    const confirm = await (await fetch(new URL(`/confirm?${new URLSearchParams({ action: "revoke-client", client_id: clientId })}`, stack.relay.url), { headers: cookie })).text();
    const csrf = /name="csrf" value="([^"]+)"/.exec(confirm)![1]!;
    const revoked = await fetch(new URL("/actions", stack.relay.url), { method: "POST", headers: cookie, body: new URLSearchParams({ csrf, action: "revoke-client", client_id: clientId }), redirect: "manual" });
    expect(revoked.status).toBe(303);
    const refused = await fetch(new URL("/mcp", stack.relay.url), { method: "POST", headers: { Authorization: `Bearer ${tokens.access_token}`, "Content-Type": "application/json" }, body: "{}" });
    expect(refused.status).toBe(401);
  });

  test("what a document lists for other servers (a custom-scheme redirect URI, other grant types) is left aside, not refused", async () => {
    const clientId = site.publish("/multi/client.json", publicClient({ redirect_uris: ["cursor://anysphere.cursor-mcp/oauth/callback", REDIRECT], grant_types: ["authorization_code", "refresh_token", "client_credentials"] }));
    expect((await fetch(authorizeUrl(clientId).url)).status).toBe(200);
    const custom = await fetch(authorizeUrl(clientId, { redirect_uri: "cursor://anysphere.cursor-mcp/oauth/callback" }).url);
    expect(custom.status).toBe(400);
    expect(await custom.text()).toContain("Wrong redirect address");
  });

  test("a document that asks for none may not send a credential at /token", async () => {
    const clientId = site.publish("/public/strict.json", publicClient());
    const { url, verifier } = authorizeUrl(clientId);
    const code = await approve(url, OWNER_PASSWORD);
    const withSecret = await token({ grant_type: "authorization_code", code, redirect_uri: REDIRECT, code_verifier: verifier, client_id: clientId, client_secret: "crs_made_up" });
    expect(withSecret.status).toBe(401);
    expect((await describeError(withSecret)).error_description).toContain("says token_endpoint_auth_method none: send no client credential");
    const plain = await token({ grant_type: "authorization_code", code, redirect_uri: REDIRECT, code_verifier: verifier, client_id: clientId });
    expect(plain.status).toBe(200);
  });
});

describe("a private_key_jwt client identified by its metadata document (as ChatGPT)", () => {
  const keys = rsaKeys();
  const stranger = rsaKeys();
  const documentOf = (route: string, fields: Record<string, unknown> = {}) =>
    site.publish(route, publicClient({ client_name: "ChatGPT (test)", token_endpoint_auth_method: "private_key_jwt", jwks_uri: `${site.origin}/chatgpt/jwks.json`, ...fields }));
  site.serve("/chatgpt/jwks.json", () => Response.json({ keys: [keys.publicJwk] }));

  test("the SDK client signs its token requests and its tokens drive the tools", async () => {
    const clientId = documentOf("/chatgpt/client.json");
    const sign = createPrivateKeyJwtAuth({ issuer: clientId, subject: clientId, privateKey: keys.privatePem, alg: "RS256" });
    const { client } = await connectWithDocument({ clientMetadataUrl: clientId, addClientAuthentication: sign });
    const result = (await client.callTool({ name: "check_agent_status", arguments: {} })) as any;
    expect(result.structuredContent.connected).toBe(1);
    await client.close();
  });

  test("forged, expired, long-lived, wrong-audience and missing assertions are refused and audited; a replayed one too", async () => {
    const clientId = documentOf("/chatgpt/refusals.json");
    const { url, verifier } = authorizeUrl(clientId);
    const code = await approve(url, OWNER_PASSWORD);
    const redeem = (auth: Record<string, string>) => token({ grant_type: "authorization_code", code, redirect_uri: REDIRECT, code_verifier: verifier, client_id: clientId, ...auth });
    const refusals: [string, Record<string, string>, string][] = [
      ["forged", await assertion(clientId, stranger.privatePem), "signature does not verify with any key the client publishes"],
      ["expired", await assertion(clientId, keys.privatePem, { lifetimeSeconds: -120 }), "has expired"],
      ["long-lived", await assertion(clientId, keys.privatePem, { lifetimeSeconds: 3600 }), "valid for too long"],
      ["wrong audience", await assertion(clientId, keys.privatePem, { audience: "https://elsewhere.example/token" }), "aud must be this server"],
      ["missing", {}, "asks for private_key_jwt: send a client_assertion"],
      ["wrong type", { ...(await assertion(clientId, keys.privatePem)), client_assertion_type: "urn:example:other" }, `client_assertion_type ${JWT_BEARER}`],
    ];
    for (const [, auth, message] of refusals) {
      const refused = await redeem(auth);
      expect(refused.status).toBe(401);
      const body = await describeError(refused);
      expect(body.error).toBe("invalid_client");
      expect(body.error_description).toContain(message);
    }

    const good = await assertion(clientId, keys.privatePem);
    const redeemed = await redeem(good); // the code survived every refusal: authentication comes first
    expect(redeemed.status).toBe(200);
    const { refresh_token } = (await redeemed.json()) as { refresh_token: string };
    const replayed = await token({ grant_type: "refresh_token", refresh_token, ...good });
    expect(replayed.status).toBe(401);
    expect((await describeError(replayed)).error_description).toContain("already used");
    const fresh = await token({ grant_type: "refresh_token", refresh_token, ...(await assertion(clientId, keys.privatePem)) });
    expect(fresh.status).toBe(200); // no client_id in the form: the assertion's iss names the client

    const refused = eventsOf(stack.relay.databasePath).filter((e) => e.kind === "auth_refused").map((e) => e.detail.detail);
    for (const reason of ["bad signature", "expired", "lives too long", "wrong audience", "replayed"]) expect(refused).toContain(`/token: client assertion refused: ${reason}`);
    expect(refused).toContain("/token: no client assertion");
  });

  test("keys inline in the document (jwks) work too, and a jwks_uri on a private address is refused", async () => {
    const inline = site.publish("/inline/client.json", publicClient({ client_name: "Inline keys", token_endpoint_auth_method: "private_key_jwt", jwks: { keys: [keys.publicJwk] } }));
    const first = authorizeUrl(inline);
    const code = await approve(first.url, OWNER_PASSWORD);
    const ok = await token({ grant_type: "authorization_code", code, redirect_uri: REDIRECT, code_verifier: first.verifier, ...(await assertion(inline, keys.privatePem)) });
    expect(ok.status).toBe(200);

    const hidden = documentOf("/chatgpt/private-jwks.json", { jwks_uri: "https://10.1.2.3/jwks.json" });
    const second = authorizeUrl(hidden);
    const code2 = await approve(second.url, OWNER_PASSWORD);
    const refused = await token({ grant_type: "authorization_code", code: code2, redirect_uri: REDIRECT, code_verifier: second.verifier, ...(await assertion(hidden, keys.privatePem)) });
    expect(refused.status).toBe(401);
    expect((await describeError(refused)).error_description).toContain("10.1.2.3, which is not a public internet address");
  });

  test("a key rotated at the jwks_uri is taken at once, though the old set is cached", async () => {
    const rotated = rsaKeys("k2");
    let served = keys.publicJwk;
    site.serve("/rotating/jwks.json", () => Response.json({ keys: [served] }, { headers: { "Cache-Control": "max-age=3600" } }));
    const clientId = documentOf("/rotating/client.json", { jwks_uri: `${site.origin}/rotating/jwks.json` });
    for (const signer of [keys, rotated]) {
      const { url, verifier } = authorizeUrl(clientId);
      const code = await approve(url, OWNER_PASSWORD);
      const redeemed = await token({ grant_type: "authorization_code", code, redirect_uri: REDIRECT, code_verifier: verifier, ...(await assertion(clientId, signer.privatePem)) });
      expect(redeemed.status).toBe(200);
      served = rotated.publicJwk;
    }
    expect(site.hits("/rotating/jwks.json")).toBe(2);
  });

  test("registration does not take private_key_jwt: only a metadata document names keys", async () => {
    const registration = await fetch(new URL("/register", stack.relay.url), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ client_name: "Registered", redirect_uris: [REDIRECT], token_endpoint_auth_method: "private_key_jwt", jwks: { keys: [keys.publicJwk] } }),
    });
    expect(registration.status).toBe(400); // registration keeps secrets or none
    expect((await describeError(registration)).error_description).toContain("token_endpoint_auth_method must be client_secret_basic, client_secret_post or none");
  });
});

describe("documents that are not what they should be are refused on the relay's page, saying why, never redirected to", () => {
  const big = "x".repeat(70 * 1024);
  const streamed = (chunks: number) =>
    new Response(
      new ReadableStream({
        pull(controller) {
          if (chunks-- > 0) controller.enqueue(new TextEncoder().encode(`${" ".repeat(16 * 1024)}`));
          else controller.close();
        },
      }),
      { headers: { "Content-Type": "application/json" } },
    );
  const cases: [string, () => string, string][] = [
    ["naming another client_id", () => site.serve("/bad/other-id.json", () => Response.json({ ...publicClient(), client_id: `${site.origin}/somebody-else.json` })), "names another client_id"],
    ["not listing the redirect URI", () => site.publish("/bad/redirects.json", publicClient({ redirect_uris: ["https://app.example/callback"] })), "not one its metadata document at"],
    ["larger than 64 KiB, as declared", () => site.publish("/bad/large.json", publicClient({ padding: big })), "larger than 64 KiB"],
    ["larger than 64 KiB, streamed without a length", () => site.serve("/bad/streamed.json", () => streamed(5)), "larger than 64 KiB"],
    ["redirected", () => site.serve("/bad/redirect.json", () => Response.redirect(`${site.origin}/claude/client.json`, 302)), "answered with a redirect (HTTP 302)"],
    ["not JSON", () => site.serve("/bad/html.json", () => new Response("<html></html>", { headers: { "Content-Type": "text/html" } })), "is not JSON"],
    ["malformed JSON", () => site.serve("/bad/broken.json", () => new Response("{", { headers: { "Content-Type": "application/json" } })), "is not valid JSON"],
    ["without a client_name", () => site.publish("/bad/nameless.json", publicClient({ client_name: undefined })), "has no client_name"],
    ["holding a secret", () => site.publish("/bad/secret.json", publicClient({ client_secret: "s3cret" })), "holds a client_secret"],
    ["asking for a secret", () => site.publish("/bad/basic.json", publicClient({ token_endpoint_auth_method: "client_secret_basic" })), "token_endpoint_auth_method must be private_key_jwt or none"],
    ["private_key_jwt without keys", () => site.publish("/bad/keyless.json", publicClient({ token_endpoint_auth_method: "private_key_jwt" })), "public keys: jwks or jwks_uri"],
    ["with only a redirect URI in plain http elsewhere", () => site.publish("/bad/http-redirect.json", publicClient({ redirect_uris: ["http://app.example/cb"] })), "lists no redirect URI this relay answers to"],
    ["without the authorization_code grant", () => site.publish("/bad/grants.json", publicClient({ grant_types: ["client_credentials"] })), "lists no grant type (authorization_code)"],
    ["missing (404)", () => `${site.origin}/bad/missing.json`, "answered HTTP 404"],
    ["on plain http", () => `http://localhost:${new URL(site.origin).port}/claude/client.json`, "it must be an https URL"],
    ["without a path", () => `${site.origin}/`, "it must have a path"],
    ["with dot segments", () => `${site.origin}/bad/%2e%2e/claude/client.json`, "must not have . or .. segments"],
    ["on a private address", () => "https://10.20.30.40/client.json", "10.20.30.40, which is not a public internet address"],
    ["on the cloud metadata address", () => "https://169.254.169.254/latest/client.json", "169.254.169.254, which is not a public internet address"],
    ["on a shared (CGNAT) address", () => "https://100.64.1.2/client.json", "100.64.1.2, which is not a public internet address"],
    ["on a unique-local IPv6 address", () => "https://[fd00::1]/client.json", "fd00::1, which is not a public internet address"],
    ["on an IPv4-mapped private address", () => "https://[::ffff:192.168.1.1]/client.json", "which is not a public internet address"],
  ];

  test.each(cases)("a document %s", async (_, publish, reason) => {
    const clientId = publish();
    const response = await fetch(authorizeUrl(clientId).url, { redirect: "manual" });
    expect(response.status).toBe(400);
    expect(response.headers.get("location")).toBeNull();
    expect(await response.text()).toContain(reason);
  });

  test("a document that takes longer than 5 s is refused, whether its headers or its body are slow", async () => {
    const lateHeaders = site.serve("/bad/slow.json", async () => {
      await Bun.sleep(6_000);
      return Response.json(publicClient());
    });
    const trickle = site.serve("/bad/trickle.json", () => {
      const body = JSON.stringify({ client_id: `${site.origin}/bad/trickle.json`, ...publicClient() });
      let sent = 0;
      const stream = new ReadableStream({
        async pull(controller) {
          await Bun.sleep(500); // a byte every half second: the document would take minutes
          if (sent < body.length) controller.enqueue(new TextEncoder().encode(body[sent++]));
          else controller.close();
        },
      });
      return new Response(stream, { headers: { "Content-Type": "application/json" } });
    });
    const started = Date.now();
    const responses = await Promise.all([lateHeaders, trickle].map((clientId) => fetch(authorizeUrl(clientId).url)));
    for (const response of responses) {
      expect(response.status).toBe(400);
      expect(await response.text()).toContain("did not arrive within 5 s");
    }
    expect(Date.now() - started).toBeLessThan(5_900);
  });

  test("without the test-only setting, a document on loopback is refused before any connection", async () => {
    await using relay = await startRelay({ env: { OWNER_PASSWORD } });
    const clientId = site.publish("/loopback/client.json", publicClient());
    const url = new URL(authorizeUrl(clientId).url.search, new URL("/authorize", relay.url));
    const response = await fetch(url);
    expect(response.status).toBe(400);
    expect(await response.text()).toContain("localhost resolves to 127.0.0.1, which is not a public internet address");
    expect(site.hits("/loopback/client.json")).toBe(0);
  });
});

describe("fetched documents are cached as their Cache-Control says, within bounds", () => {
  const open = async (clientId: string) => (await fetch(authorizeUrl(clientId).url)).status;

  test("once by default, every time with no-store, again once max-age has passed", async () => {
    const plain = site.publish("/cache/plain.json", publicClient());
    const noStore = site.publish("/cache/no-store.json", publicClient(), { "Cache-Control": "no-store" });
    const brief = site.publish("/cache/brief.json", publicClient(), { "Cache-Control": "max-age=1" });
    for (const clientId of [plain, plain, noStore, noStore, brief, brief]) expect(await open(clientId)).toBe(200);
    expect([site.hits("/cache/plain.json"), site.hits("/cache/no-store.json"), site.hits("/cache/brief.json")]).toEqual([1, 2, 1]);
    await Bun.sleep(1_100);
    expect(await open(brief)).toBe(200);
    expect(site.hits("/cache/brief.json")).toBe(2);
  });

  test(`at most ${MAX_CACHED} documents are kept: the least recently used goes first`, async () => {
    const routes = Array.from({ length: MAX_CACHED + 1 }, (_, i) => `/cache/many-${i}.json`);
    for (const route of routes) expect(await open(site.publish(route, publicClient()))).toBe(200);
    expect(await open(`${site.origin}${routes.at(-1)}`)).toBe(200);
    expect(site.hits(routes.at(-1)!)).toBe(1); // still cached
    expect(await open(`${site.origin}${routes[0]}`)).toBe(200);
    expect(site.hits(routes[0]!)).toBe(2); // pushed out by the newer ones, fetched again
  });
});
