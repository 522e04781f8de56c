// OAuth 2.1 against a real relay: the SDK's own OAuth client end to end (register, consent, token, tool call,
// refresh) over both transports, the v1 client (1.32.2, as 2025 clients run) and the v2 one, which registers as the
// fallback when it has no metadata document (those are in cimd.test.ts), and each bad input of the flow getting
// the right OAuth error and no token.

import { beforeAll, describe, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs";
import { Client as ModernClient, StreamableHTTPClientTransport as ModernTransport, UnauthorizedError as ModernUnauthorizedError } from "@modelcontextprotocol/client";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { connectClient, startAgent } from "../helpers/processes.ts";
import { useStack } from "../helpers/stack.ts";
import { answerConsent, approve, openConsent, TestOAuthProvider } from "../helpers/oauth.ts";
import { textsOf } from "../helpers/browser.ts";
import { eventsOf } from "../helpers/audit.ts";
import { call } from "../helpers/tools.ts";

const OWNER_PASSWORD = "correct horse battery staple";
const REDIRECT = "http://127.0.0.1:1/callback";

const stack = useStack({ relay: { env: { OWNER_PASSWORD } }, agent: { machine: "oauth-box" } });

function transportFor(kind: "streamable-http" | "sse", provider: TestOAuthProvider) {
  return kind === "streamable-http"
    ? new StreamableHTTPClientTransport(new URL("/mcp", stack.relay.url), { authProvider: provider })
    : new SSEClientTransport(new URL("/sse", stack.relay.url), { authProvider: provider });
}

/** The SDK client's whole flow: a first connect that needs authorization, the owner's consent, then a client. */
async function oauthClient(kind: "streamable-http" | "sse", provider = new TestOAuthProvider()): Promise<{ client: Client; provider: TestOAuthProvider }> {
  const first = transportFor(kind, provider);
  await expect(new Client({ name: "t", version: "1" }).connect(first)).rejects.toThrow(UnauthorizedError);
  expect(provider.authorizationUrl).toBeDefined();
  await first.finishAuth(await approve(provider.authorizationUrl!, OWNER_PASSWORD));
  const client = new Client({ name: "t", version: "1" });
  await client.connect(transportFor(kind, provider));
  return { client, provider };
}

describe.each(["streamable-http", "sse"] as const)("the SDK's OAuth client over %s", (kind) => {
  test("registers, is approved by the owner, gets tokens, calls a tool, and refreshes (rotating the refresh token)", async () => {
    const { client, provider } = await oauthClient(kind);
    const first = await call(client, "run_shell_command", { command: "echo via-oauth" });
    expect(first.data.stdout).toBe("via-oauth\n");
    const before = provider.tokens()!;
    expect(before.access_token).toStartWith("cra_");
    expect(before.refresh_token).toStartWith("crr_");
    expect(before.expires_in).toBe(3600);
    await client.close();
    // The access token stops working (as after an hour): the SDK refreshes with its refresh token and goes on.
    provider.saveTokens({ ...before, access_token: "cra_expired" });
    const again = new Client({ name: "t", version: "1" });
    await again.connect(transportFor(kind, provider));
    expect((await call(again, "check_agent_status")).data.connected).toBe(1);
    const after = provider.tokens()!;
    expect(after.access_token).not.toBe(before.access_token);
    expect(after.refresh_token).not.toBe(before.refresh_token);
    await again.close();
  });
});

test("the v2 SDK client without a metadata document registers (the fallback), checks iss, and calls a tool", async () => {
  const provider = new TestOAuthProvider("none");
  const transport = () => new ModernTransport(new URL("/mcp", stack.relay.url), { authProvider: provider });
  const first = transport();
  await expect(new ModernClient({ name: "t", version: "1" }).connect(first)).rejects.toThrow(ModernUnauthorizedError);
  const consent = await openConsent(provider.authorizationUrl!);
  const answer = await answerConsent(stack.relay.url, consent, { secret: OWNER_PASSWORD });
  await first.finishAuth(new URL(answer.headers.get("location")!).searchParams); // refused without the right iss
  const client = new ModernClient({ name: "t", version: "1" });
  await client.connect(transport());
  expect(provider.clientInformation()!.client_id).not.toContain(":"); // a registered id, not a URL
  const result = (await client.callTool({ name: "run_shell_command", arguments: { command: "echo v2-registered" } })) as any;
  expect(result.structuredContent.stdout).toBe("v2-registered\n");
  await client.close();
});

test("a public client (token_endpoint_auth_method none, PKCE only) completes the flow too", async () => {
  const { client } = await oauthClient("streamable-http", new TestOAuthProvider("none"));
  expect((await call(client, "check_agent_status")).data.connected).toBe(1);
  await client.close();
});

// --- the flow by hand, to feed it bad inputs ---

function pkce() {
  const verifier = randomBytes(32).toString("base64url");
  return { verifier, challenge: createHash("sha256").update(verifier).digest("base64url") };
}

async function register(metadata: Record<string, unknown> = {}): Promise<{ client_id: string; client_secret: string }> {
  const response = await fetch(new URL("/register", stack.relay.url), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ client_name: "Raw client", redirect_uris: [REDIRECT], token_endpoint_auth_method: "client_secret_post", ...metadata }),
  });
  expect(response.status).toBe(201);
  return (await response.json()) as never;
}

function authorizeUrl(clientId: string, params: Record<string, string | null> = {}): URL {
  const url = new URL("/authorize", stack.relay.url);
  const { challenge } = pkce();
  const all: Record<string, string | null> = {
    response_type: "code",
    client_id: clientId,
    redirect_uri: REDIRECT,
    code_challenge: challenge,
    code_challenge_method: "S256",
    state: "s-123",
    resource: new URL("/mcp", stack.relay.url).toString(),
    ...params,
  };
  for (const [key, value] of Object.entries(all)) if (value !== null) url.searchParams.set(key, value);
  return url;
}

function token(params: Record<string, string>): Promise<Response> {
  return fetch(new URL("/token", stack.relay.url), {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams(params),
  });
}

/** A registered client with a code in hand, ready to be redeemed (or misused). */
async function codeInHand(resource = new URL("/mcp", stack.relay.url).toString()) {
  const client = await register();
  const { verifier, challenge } = pkce();
  const code = await approve(authorizeUrl(client.client_id, { code_challenge: challenge, resource }), OWNER_PASSWORD);
  const redeem = (extra: Record<string, string> = {}) =>
    token({ grant_type: "authorization_code", code, redirect_uri: REDIRECT, code_verifier: verifier, client_id: client.client_id, client_secret: client.client_secret, ...extra });
  return { client, code, verifier, redeem };
}

const errorOf = async (response: Response) => ((await response.json()) as { error: string }).error;

/** An MCP initialize with a bearer token: the status tells whether the token is accepted. */
async function initializeWith(tokenValue: string, path = "/mcp"): Promise<Response> {
  return fetch(new URL(path, stack.relay.url), {
    method: path === "/mcp" ? "POST" : "GET",
    headers: { Authorization: `Bearer ${tokenValue}`, "Content-Type": "application/json", Accept: "application/json, text/event-stream" },
    body:
      path === "/mcp"
        ? JSON.stringify({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "raw", version: "1" } } })
        : undefined,
  });
}

describe("discovery", () => {
  test("a 401 on /mcp and /sse points to the protected-resource metadata, which names this server", async () => {
    for (const path of ["/mcp", "/sse"]) {
      const response = await fetch(new URL(path, stack.relay.url), { method: path === "/mcp" ? "POST" : "GET" });
      expect(response.status).toBe(401);
      const challenge = response.headers.get("www-authenticate")!;
      expect(challenge).not.toContain("error="); // no token is not an invalid token
      const metadataUrl = /resource_metadata="([^"]+)"/.exec(challenge)![1]!;
      expect(metadataUrl).toBe(new URL(`/.well-known/oauth-protected-resource${path}`, stack.relay.url).toString());
      const metadata = (await (await fetch(metadataUrl)).json()) as any;
      expect(metadata).toMatchObject({ resource: new URL(path, stack.relay.url).toString(), authorization_servers: [stack.relay.url.origin] });
    }
  });

  test("the authorization server metadata requires PKCE S256 and names every endpoint", async () => {
    const metadata = (await (await fetch(new URL("/.well-known/oauth-authorization-server", stack.relay.url))).json()) as any;
    expect(metadata).toMatchObject({
      issuer: stack.relay.url.origin,
      authorization_endpoint: `${stack.relay.url.origin}/authorize`,
      token_endpoint: `${stack.relay.url.origin}/token`,
      registration_endpoint: `${stack.relay.url.origin}/register`,
      revocation_endpoint: `${stack.relay.url.origin}/revoke`,
      code_challenge_methods_supported: ["S256"],
      grant_types_supported: ["authorization_code", "refresh_token"],
    });
  });
});

describe("bad inputs get the right error and no token", () => {
  test("a redirect URI that was not registered is refused on a page, never redirected to", async () => {
    const client = await register();
    for (const redirect of ["https://evil.example/callback", `${REDIRECT}/extra`, "http://127.0.0.1:1/callback?x=1"]) {
      const response = await fetch(authorizeUrl(client.client_id, { redirect_uri: redirect }), { redirect: "manual" });
      expect(response.status).toBe(400);
      expect(response.headers.get("location")).toBeNull();
      expect(await response.text()).toContain("Wrong redirect address");
    }
  });

  test("registration takes application_type web or native (2026-07-28 clients send it) and refuses anything else", async () => {
    for (const type of ["web", "native"]) expect((await register({ application_type: type }) as any).application_type).toBe(type);
    const response = await fetch(new URL("/register", stack.relay.url), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ redirect_uris: [REDIRECT], application_type: "desktop" }),
    });
    expect(response.status).toBe(400);
    expect(await response.json()).toEqual({ error: "invalid_client_metadata", error_description: 'application_type must be web or native, not "desktop".' });
  });

  test("registration refuses a non-https redirect URI to another host", async () => {
    const response = await fetch(new URL("/register", stack.relay.url), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ redirect_uris: ["http://evil.example/callback"] }),
    });
    expect(response.status).toBe(400);
    expect(await errorOf(response)).toBe("invalid_client_metadata");
  });

  test("a bad authorization request is explained on the relay's page, never redirected: no open redirect to a self-registered URI", async () => {
    // Anyone can register any https redirect URI, so an exact match proves nothing: before the owner answers, the
    // relay sends no browser anywhere (it used to forward response_type=token straight to the registered URI).
    const evil = "https://evil.example/landing";
    const client = await register({ redirect_uris: [evil] });
    const cases: [Record<string, string | null>, string][] = [
      [{ response_type: "token" }, 'only response_type=code (the authorization code flow with PKCE), not "token"'],
      [{ response_type: null }, "not none"],
      [{ code_challenge: null, code_challenge_method: null }, "PKCE is required"],
      [{ code_challenge_method: "plain" }, "PKCE is required"],
      [{ scope: "admin" }, 'The only scope is "mcp", not "admin"'],
      [{ resource: "https://other.example/mcp" }, 'The resource "https://other.example/mcp" is not this relay'],
    ];
    for (const [params, explanation] of cases) {
      const response = await fetch(authorizeUrl(client.client_id, { redirect_uri: evil, ...params }), { redirect: "manual" });
      expect(response.status).toBe(400);
      expect(response.headers.get("location")).toBeNull();
      const page = await response.text();
      expect(textsOf(page, "h1")).toEqual(["This request cannot be approved"]);
      expect(textsOf(page, "p.error")[0]).toContain(explanation);
      expect(page).not.toContain("evil.example");
    }
  });

  test("what the request carried is quoted, escaped and cut short on the page", async () => {
    const client = await register();
    const response = await fetch(authorizeUrl(client.client_id, { response_type: `<script>x</script>${"y".repeat(500)}` }), { redirect: "manual" });
    const page = await response.text();
    expect(page).not.toContain("<script>");
    expect(textsOf(page, "p.error")[0]).toContain(`not "<script>x</script>${"y".repeat(82)}"`); // 100 characters
    expect(page).not.toContain("y".repeat(83));
  });

  test("a wrong code_verifier is invalid_grant", async () => {
    const { redeem } = await codeInHand();
    const response = await redeem({ code_verifier: pkce().verifier });
    expect(response.status).toBe(400);
    expect(await errorOf(response)).toBe("invalid_grant");
  });

  test("a code used twice is invalid_grant, and the tokens it gave are revoked", async () => {
    const { redeem } = await codeInHand();
    const first = (await (await redeem()).json()) as any;
    expect((await initializeWith(first.access_token)).status).toBe(200);
    const second = await redeem();
    expect(await errorOf(second)).toBe("invalid_grant");
    expect((await initializeWith(first.access_token)).status).toBe(401);
  });

  test("an unknown client at the token endpoint gets 401 invalid_client (so Claude registers again)", async () => {
    const response = await token({ grant_type: "authorization_code", code: "crc_x", client_id: "nobody", client_secret: "x", redirect_uri: REDIRECT, code_verifier: pkce().verifier });
    expect(response.status).toBe(401);
    expect(await errorOf(response)).toBe("invalid_client");
  });

  test("a refresh token used after rotation is invalid_grant, revokes the family, and is logged and audited", async () => {
    const { client, redeem } = await codeInHand();
    const tokens = (await (await redeem()).json()) as any;
    const refresh = (params: Record<string, string>) => token({ grant_type: "refresh_token", client_id: client.client_id, client_secret: client.client_secret, ...params });
    const rotated = (await (await refresh({ refresh_token: tokens.refresh_token })).json()) as any;
    expect(rotated.refresh_token).not.toBe(tokens.refresh_token);
    expect((await initializeWith(rotated.access_token)).status).toBe(200);
    const reused = await refresh({ refresh_token: tokens.refresh_token });
    expect(await errorOf(reused)).toBe("invalid_grant");
    expect((await initializeWith(rotated.access_token)).status).toBe(401);
    expect(await errorOf(await refresh({ refresh_token: rotated.refresh_token }))).toBe("invalid_grant");
    const logged = await stack.relay.stderr.waitFor(new RegExp(`oauth refresh token used twice; its grant is revoked client_id="${client.client_id}"`));
    expect(logged).toContain('name="Raw client"');
    const replays = eventsOf(stack.relay.databasePath).filter((e) => e.kind === "oauth_token_replayed" && e.detail.detail.startsWith(client.client_id));
    expect(replays.map((e) => e.detail.detail)).toEqual([`${client.client_id} (Raw client): refresh token used twice; its grant is revoked`]);
  });

  test("a code redeemed twice is logged and audited as a replay", async () => {
    const { client, redeem } = await codeInHand();
    await redeem();
    expect(await errorOf(await redeem())).toBe("invalid_grant");
    const replays = eventsOf(stack.relay.databasePath).filter((e) => e.kind === "oauth_token_replayed" && e.detail.detail.startsWith(client.client_id));
    expect(replays.map((e) => e.detail.detail)).toEqual([`${client.client_id} (Raw client): authorization code used twice; its grant is revoked`]);
  });

  test("a token issued for /sse is refused on /mcp, saying so", async () => {
    const { redeem } = await codeInHand(new URL("/sse", stack.relay.url).toString());
    const tokens = (await (await redeem()).json()) as any;
    const refused = await initializeWith(tokens.access_token, "/mcp");
    expect(refused.status).toBe(401);
    expect(refused.headers.get("www-authenticate")).toContain('error="invalid_token"');
    expect(((await refused.json()) as any).error.message).toBe(
      "This is an OAuth access token for /sse, not /mcp: connect to /sse with it, or authorize again for /mcp.",
    );
    const sse = await initializeWith(tokens.access_token, "/sse");
    expect(sse.status).toBe(200);
    await sse.body?.cancel();
  });

  test("an OAuth access token is not an agent token (and the refusal says so), and an agent token is not a client token", async () => {
    const { redeem } = await codeInHand();
    const tokens = (await (await redeem()).json()) as any;
    const upgrade = await fetch(new URL("/ws/agent", stack.relay.url), {
      headers: { Upgrade: "websocket", Connection: "Upgrade", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", Authorization: `Bearer ${tokens.access_token}` },
    });
    expect(upgrade.status).toBe(401);
    expect(((await upgrade.json()) as any).error.message).toBe(
      "This is an OAuth access token for /mcp, an MCP client's credential. An agent connects with an agent token: AGENT_TOKEN, or one made with agent-token create.",
    );
    const wrongAgent = await startAgent(stack.relay, { machine: "impostor", token: tokens.access_token, waitConnected: false });
    await wrongAgent.stderr.waitFor(/could not register with the relay/);
    await wrongAgent.stop();
    const agentToken = Bun.spawnSync([process.execPath, "run", `${import.meta.dir}/../../server.ts`, "agent-token", "create", "token-kind-check"], {
      env: { ...process.env, DATABASE_PATH: stack.relay.databasePath },
    }).stdout.toString();
    const machineToken = /crm_[A-Za-z0-9_-]+/.exec(agentToken)![0];
    expect((await initializeWith(machineToken)).status).toBe(401);
    expect((await initializeWith(stack.relay.token)).status).toBe(200);
  });

  test("a refresh token sent as a bearer token is refused, saying where it belongs", async () => {
    const { redeem } = await codeInHand();
    const tokens = (await (await redeem()).json()) as any;
    const refused = await initializeWith(tokens.refresh_token);
    expect(refused.status).toBe(401);
    expect(((await refused.json()) as any).error.message).toBe(
      "This is an OAuth refresh token: exchange it at /token (grant_type=refresh_token) for an access token, and send that.",
    );
  });

  test("?access_token= in the URL is refused even when it is valid", async () => {
    const { redeem } = await codeInHand();
    const tokens = (await (await redeem()).json()) as any;
    const response = await fetch(new URL(`/mcp?access_token=${tokens.access_token}`, stack.relay.url), {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json, text/event-stream" },
      body: "{}",
    });
    expect(response.status).toBe(401);
  });

  test("a wrong owner secret is refused and the page asks again; deny sends access_denied", async () => {
    const client = await register();
    const consent = await openConsent(authorizeUrl(client.client_id));
    const wrong = await answerConsent(stack.relay.url, consent, { secret: "guess" });
    expect(wrong.status).toBe(401);
    expect(await wrong.text()).toContain("Wrong owner secret");
    const again = await openConsent(authorizeUrl(client.client_id));
    const denied = await answerConsent(stack.relay.url, again, { decision: "deny" });
    const answer = new URL(denied.headers.get("location")!).searchParams;
    expect(answer.get("error")).toBe("access_denied");
    expect(answer.get("iss")).toBe(stack.relay.url.origin); // RFC 9207: on errors too
  });

  test("the consent form without its cookie (a cross-site post) is refused", async () => {
    const client = await register();
    const consent = await openConsent(authorizeUrl(client.client_id));
    const forged = await answerConsent(stack.relay.url, { ...consent, cookie: "code-remote-consent=forged" }, { secret: OWNER_PASSWORD });
    expect(forged.status).toBe(403);
    expect(forged.headers.get("location")).toBeNull();
  });

  test("the consent page cannot be framed, loads nothing from elsewhere, and names no machine", async () => {
    const client = await register();
    const { response, html } = await openConsent(authorizeUrl(client.client_id));
    expect(response.headers.get("x-frame-options")).toBe("DENY");
    expect(response.headers.get("content-security-policy")).toContain("frame-ancestors 'none'");
    expect(response.headers.get("content-security-policy")).toContain("default-src 'none'");
    expect(html).toContain("Raw client");
    expect(textsOf(html, "dd.address")).toEqual([REDIRECT]);
    expect(html).not.toContain("oauth-box"); // whoever opens the page has not proved anything yet
    expect(html).not.toMatch(/<script|src=|href="http/);
  });
});

describe("the consent page shows where the answer really goes", () => {
  const REDIRECTS = [
    "https://сlaude.ai/api/mcp/auth_callback", // a Cyrillic "с"
    "https://claude.ai@evil.example/callback",
    "https://claude.ai/api/mcp/auth_callback",
    "https://api.eu.claude.ai/cb",
    "https://login.example.co.uk/cb",
    "https://claude-ai.github.io/cb",
    "http://localhost:33418/oauth/callback",
  ];
  let clientId: string;
  beforeAll(async () => {
    clientId = (await register({ redirect_uris: REDIRECTS })).client_id;
  });

  /** The consent page for `redirect`: the address as shown, its bold part, its warnings. */
  async function consentFor(redirect: string) {
    const { html } = await openConsent(authorizeUrl(clientId, { redirect_uri: redirect }));
    return { html, address: textsOf(html, "dd.address")[0], bold: textsOf(html, "dd.address strong"), warnings: textsOf(html, "p.warning.danger") };
  }

  test("a host with a look-alike letter is shown as the browser reaches it (punycode), with a plain warning", async () => {
    const { html, address, bold, warnings } = await consentFor(REDIRECTS[0]!);
    expect(address).toBe("https://xn--laude-0ye.ai/api/mcp/auth_callback");
    expect(bold).toEqual(["xn--laude-0ye.ai"]);
    expect(html).not.toContain("сlaude"); // never the letters as typed
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain("letters outside plain a-z");
    expect(warnings[0]).toContain("The browser will really go to xn--laude-0ye.ai.");
  });

  test("a user name before an '@' is not shown as the destination, and is warned about", async () => {
    const { address, bold, warnings } = await consentFor(REDIRECTS[1]!);
    expect(address).toBe("https://evil.example/callback");
    expect(bold).toEqual(["evil.example"]);
    expect(warnings).toEqual(['Misleading address: it starts with "claude.ai@", which is not where it goes. The answer goes to evil.example.']);
  });

  test("the registrable domain is what stands out, under a country's second level and on shared hosting too", async () => {
    const cases: [string, string][] = [
      ["https://claude.ai/api/mcp/auth_callback", "claude.ai"],
      ["https://api.eu.claude.ai/cb", "claude.ai"],
      ["https://login.example.co.uk/cb", "example.co.uk"],
      ["https://claude-ai.github.io/cb", "claude-ai.github.io"],
      ["http://localhost:33418/oauth/callback", "localhost"],
    ];
    for (const [redirect, domain] of cases) {
      const { bold, warnings } = await consentFor(redirect);
      expect(bold).toEqual([domain]);
      expect(warnings).toEqual([]);
    }
  });
});

test("no token, code or secret ever reaches the relay's output or its database", async () => {
  const { client, provider } = await oauthClient("streamable-http");
  await call(client, "check_agent_status");
  await client.close();
  const secrets = [provider.tokens()!.access_token, provider.tokens()!.refresh_token!, (provider.clientInformation() as any).client_secret, OWNER_PASSWORD, stack.relay.token];
  const output = stack.relay.stderr.text + stack.relay.stdout.text + stack.agent.stderr.text;
  const database = Buffer.concat([stack.relay.databasePath, `${stack.relay.databasePath}-wal`].filter(fs.existsSync).map((f) => fs.readFileSync(f)));
  for (const secret of secrets) {
    expect(output).not.toContain(secret);
    expect(database.includes(secret)).toBe(false);
  }
});

test("the static bearer token keeps working beside OAuth", async () => {
  await using client = await connectClient(stack.relay, "streamable-http");
  expect((await call(client, "check_agent_status")).data.connected).toBe(1);
});
