// mcp-remote (0.15.1, from the npm registry), the stdio<->remote proxy Claude Desktop users put in front of a remote
// server, a client nobody here wrote, against a real relay and agent with no static token: it discovers the relay's
// OAuth metadata, registers itself (or names its metadata document), and opens the authorization URL in a browser.
// The browser is a script that records the URL; the test plays the owner (opens the consent page, types the owner
// secret, approves) and follows the redirect to mcp-remote's loopback callback. Then it speaks JSON-RPC over
// mcp-remote's stdio as a desktop client would, over Streamable HTTP (/mcp) and the legacy SSE transport (/sse);
// later runs find the stored tokens (or refresh them) and ask nobody again, and none of them reach the relay's log.

import { afterAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { TOOLS } from "../../protocol.ts";
import { answerConsent, openConsent } from "../helpers/oauth.ts";
import { startDocumentSite } from "../helpers/cimd.ts";
import { eventually, freePort, NEUTRAL_CWD, OutputLog, tempDir } from "../helpers/processes.ts";
import { useStack } from "../helpers/stack.ts";

const MCP_REMOTE = "mcp-remote@0.15.1";
const OWNER_PASSWORD = "mcp-remote owner's passphrase";

// The https site of the test's own that publishes mcp-remote's metadata document (its CA trusted by the relay).
const site = startDocumentSite();
afterAll(() => site[Symbol.asyncDispose]());
const stack = useStack({ relay: { env: { OWNER_PASSWORD, CIMD_TEST_CA_FILE: site.caFile } }, agent: { machine: "mcp-remote-box" } });

/** Where mcp-remote keeps its registrations and tokens (instead of ~/.mcp-auth), and the recording browser. */
const home = tempDir("cr-mcp-remote-");
afterAll(() => home[Symbol.dispose]());

/** A "browser" that appends each URL it is asked to open to a file, and opens nothing. On Linux the `open` package
 *  runs xdg-open, which with no display runs $BROWSER; on macOS it runs `open` from PATH, so the script is also put
 *  first on PATH under that name: no test opens a real browser on a developer's machine. */
function recordingBrowser(dir: string): { env: Record<string, string>; opened: () => string[] } {
  const record = path.join(dir, "opened.txt");
  const bin = path.join(dir, "bin");
  fs.mkdirSync(bin, { recursive: true });
  const command = path.join(bin, "open");
  fs.writeFileSync(command, `#!/bin/sh\nprintf '%s\\n' "$1" >> '${record}'\n`, { mode: 0o755 });
  return {
    env: { BROWSER: command, PATH: `${bin}:${process.env.PATH ?? "/usr/bin:/bin"}` },
    opened: () => (fs.existsSync(record) ? fs.readFileSync(record, "utf8").split("\n").filter(Boolean) : []),
  };
}

interface JsonRpcAnswer {
  id: number;
  result?: any;
  error?: { code: number; message: string };
}

/** A running mcp-remote: its stdio as a desktop client uses it (one JSON-RPC message a line), its stderr, and the
 *  browser it opened. Disposing closes its stdin (how a desktop client ends it), then stops its process group. */
interface McpRemote extends AsyncDisposable {
  stderr: OutputLog;
  opened: () => string[];
  request(method: string, params?: unknown, timeoutMs?: number): Promise<JsonRpcAnswer>;
  notify(method: string, params?: unknown): void;
}

function startMcpRemote(url: URL, args: string[], configDir: string): McpRemote {
  const browser = recordingBrowser(configDir);
  const proc = Bun.spawn(["npx", "-y", MCP_REMOTE, url.href, ...args], {
    cwd: NEUTRAL_CWD,
    env: {
      HOME: process.env.HOME ?? os.homedir(), // npx's cache; mcp-remote's own files go to MCP_REMOTE_CONFIG_DIR
      NO_COLOR: "1",
      MCP_REMOTE_CONFIG_DIR: configDir,
      ...browser.env,
    },
    stdin: "pipe",
    stdout: "pipe",
    stderr: "pipe",
    detached: true, // its own process group: npx, the shell npm runs and node all stop together
  });
  const stdout = new OutputLog(proc.stdout);
  const stderr = new OutputLog(proc.stderr);
  let nextId = 1;
  const send = (message: object) => {
    proc.stdin.write(JSON.stringify({ jsonrpc: "2.0", ...message }) + "\n");
    proc.stdin.flush();
  };
  const exitedWithin = (ms: number) => Promise.race([proc.exited.then(() => true), Bun.sleep(ms).then(() => false)]);
  const signalGroup = (signal: NodeJS.Signals) => {
    try {
      process.kill(-proc.pid, signal);
    } catch {} // the group is gone already
  };
  return {
    stderr,
    opened: browser.opened,
    async request(method, params, timeoutMs = 15_000) {
      const id = nextId++;
      const from = stdout.lines.length;
      send({ id, method, ...(params === undefined ? {} : { params }) });
      // Its answer, on a line of its own; what the relay sends the client unasked carries a method, not this id.
      const line = await stdout.waitFor(new RegExp(`^\\{(?!.*"method").*"id":${id}[,}]`), timeoutMs, from).catch((e: Error) => {
        throw new Error(`${method}: ${e.message}\nmcp-remote's stderr:\n${stderr.text}`);
      });
      return JSON.parse(line) as JsonRpcAnswer;
    },
    notify(method, params) {
      send({ method, ...(params === undefined ? {} : { params }) });
    },
    async [Symbol.asyncDispose]() {
      try {
        proc.stdin.end();
      } catch {}
      if (await exitedWithin(3_000)) return signalGroup("SIGKILL"); // anything the proxy left behind
      signalGroup("SIGTERM");
      if (!(await exitedWithin(3_000))) signalGroup("SIGKILL");
      await exitedWithin(3_000);
    },
  };
}

/** The owner at the browser: opens the consent page at `authorizationUrl`, types the owner secret, approves, and the
 *  browser follows the relay's redirect to mcp-remote's loopback callback. Returns the consent page, the callback
 *  URL and the status of mcp-remote's page there. */
async function ownerApproves(authorizationUrl: string): Promise<{ consentHtml: string; callback: URL; callbackStatus: number }> {
  const consent = await openConsent(authorizationUrl);
  expect(consent.response.status).toBe(200);
  const answer = await answerConsent(stack.relay.url, consent, { secret: OWNER_PASSWORD });
  const location = answer.headers.get("location");
  if (answer.status !== 302 || !location) throw new Error(`consent was not accepted (${answer.status}): ${await answer.text()}`);
  const callback = new URL(location);
  const page = await fetch(callback, { redirect: "manual", signal: AbortSignal.timeout(15_000) });
  await page.body?.cancel();
  return { consentHtml: consent.html, callback, callbackStatus: page.status };
}

/** Waits (bounded) until the recording browser has been asked to open a URL; returns the first one. */
async function browserOpened(remote: McpRemote, timeoutMs: number): Promise<string> {
  await eventually(() => remote.opened().length > 0, timeoutMs, "a browser opened by mcp-remote").catch((e: Error) => {
    throw new Error(`${e.message}; its stderr:\n${remote.stderr.text}`);
  });
  return remote.opened()[0]!;
}

const INITIALIZE = { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "claude-desktop-like", version: "1.0.0" } };

/** What a desktop client does first over stdio: initialize, initialized, tools/list; returns the tools' names. */
async function handshake(remote: McpRemote, timeoutMs: number): Promise<string[]> {
  const init = await remote.request("initialize", INITIALIZE, timeoutMs);
  expect(init.error).toBeUndefined();
  remote.notify("notifications/initialized");
  const listed = await remote.request("tools/list", {});
  expect(listed.error).toBeUndefined();
  return listed.result.tools.map((t: { name: string }) => t.name);
}

/** The tokens mcp-remote stored under its config dir (tokens.json files of every server it knows). */
function storedTokens(configDir: string): { access_token: string; refresh_token?: string }[] {
  const files = fs.readdirSync(configDir, { recursive: true, encoding: "utf8" }).filter((f) => f.endsWith("tokens.json"));
  return files.map((f) => JSON.parse(fs.readFileSync(path.join(configDir, f), "utf8")));
}

/** Every secret the relay handed out in this file (authorization codes, access and refresh tokens), for the check
 *  at the end that none of them reached the relay's log. */
const handedOut = new Set<string>();
function rememberTokens(configDir: string): void {
  for (const stored of storedTokens(configDir)) {
    handedOut.add(stored.access_token);
    if (stored.refresh_token) handedOut.add(stored.refresh_token);
  }
}

/** The first run's sign-in: mcp-remote meets the relay's 401, opens the browser on the relay's authorization page,
 *  and the owner approves. Returns the authorization URL it opened and the consent page the owner saw. */
async function signIn(remote: McpRemote, route: "/mcp" | "/sse"): Promise<{ authorization: URL; consentHtml: string }> {
  // The first run of the file may fetch mcp-remote from the npm registry before it gets that far.
  const opened = await browserOpened(remote, 90_000);
  const authorization = new URL(opened);
  expect(authorization.origin).toBe(stack.relay.url.origin);
  expect(authorization.pathname).toBe("/authorize");
  expect(authorization.searchParams.get("code_challenge_method")).toBe("S256");
  expect(authorization.searchParams.get("resource")).toBe(new URL(route, stack.relay.url).href);
  expect(remote.stderr.text).toContain(opened); // it prints the URL too, for users whose browser did not open

  const owner = await ownerApproves(opened);
  expect(owner.callback.pathname).toBe("/oauth/callback");
  expect(owner.callback.searchParams.get("iss")).toBe(stack.relay.url.origin); // RFC 9207
  expect(owner.callbackStatus).toBe(200);
  handedOut.add(owner.callback.searchParams.get("code")!);
  return { authorization, consentHtml: owner.consentHtml };
}

/** What the desktop client does once connected: initialize, the tool list, and a command that reaches the agent. */
async function useTools(remote: McpRemote, remoteTransport: string, word: string): Promise<void> {
  expect(await handshake(remote, 30_000)).toEqual(Object.keys(TOOLS));
  expect(remote.stderr.text).toContain(`Connected to remote server using ${remoteTransport}`);
  const called = await remote.request("tools/call", { name: "run_shell_command", arguments: { command: `echo ${word}` } }, 30_000);
  expect(called.error).toBeUndefined();
  expect(called.result.isError).toBeFalsy();
  expect(called.result.structuredContent).toMatchObject({ stdout: `${word}\n`, exit_code: 0, machine: stack.agent.machine });
}

/** The relay's log lines printed from `mark` on: registrations and approvals show there. */
const relayLinesSince = (mark: number) => stack.relay.stderr.lines.slice(mark).join("\n");
const CONSENT_LINES = /oauth client (registered|approved)/;

describe.each([
  ["http-first", "/mcp", "StreamableHTTPClientTransport"],
  ["sse-only", "/sse", "SSEClientTransport"],
] as const)("mcp-remote --transport %s against %s", (transport, route, remoteTransport) => {
  const configDir = path.join(home.path, transport);
  const run = () => startMcpRemote(new URL(route, stack.relay.url), ["--transport", transport], configDir);

  test("registers (DCR), opens the browser on the consent page; once the owner approves, lists every tool and runs a command on the agent", async () => {
    fs.mkdirSync(configDir, { recursive: true });
    const mark = stack.relay.stderr.lines.length;
    await using remote = run();
    await signIn(remote, route);
    expect(relayLinesSince(mark)).toMatch(/oauth client registered .*name="MCP CLI Proxy"/);
    expect(relayLinesSince(mark)).toContain("oauth client approved");
    await useTools(remote, remoteTransport, `via-mcp-remote-${transport}`);
    expect(remote.opened()).toHaveLength(1);
    rememberTokens(configDir);
  }, 150_000); // the first run may fetch mcp-remote from the npm registry

  test("a second run reuses the stored tokens: no browser, no consent, no new registration", async () => {
    const mark = stack.relay.stderr.lines.length;
    const stored = storedTokens(configDir);
    fs.rmSync(path.join(configDir, "opened.txt"), { force: true });
    await using remote = run();
    await useTools(remote, remoteTransport, "again");
    expect(storedTokens(configDir)).toEqual(stored); // the same tokens, used as they were
    expect(remote.opened()).toEqual([]);
    expect(remote.stderr.text).not.toContain("Please authorize");
    expect(relayLinesSince(mark)).not.toMatch(CONSENT_LINES);
  }, 60_000);

  test("an hour later (its access token expired) it refreshes with the refresh token, rotating both, without the browser", async () => {
    const [file] = fs.readdirSync(configDir, { recursive: true, encoding: "utf8" }).filter((f) => f.endsWith("tokens.json"));
    const before = JSON.parse(fs.readFileSync(path.join(configDir, file!), "utf8"));
    // As if the hour had passed: the stored expiry is behind us, and the access token no longer works anyway.
    fs.writeFileSync(path.join(configDir, file!), JSON.stringify({ ...before, access_token: "cra_expired", expires_at: Date.now() - 60_000 }));
    fs.rmSync(path.join(configDir, "opened.txt"), { force: true });
    const mark = stack.relay.stderr.lines.length;
    await using remote = run();
    await useTools(remote, remoteTransport, "refreshed");
    const after = storedTokens(configDir)[0]!;
    expect(after.access_token).toStartWith("cra_");
    expect(after.access_token).not.toBe(before.access_token);
    expect(after.refresh_token).not.toBe(before.refresh_token);
    expect(remote.opened()).toEqual([]);
    expect(relayLinesSince(mark)).not.toMatch(CONSENT_LINES);
    rememberTokens(configDir);
  }, 60_000);
});

test("--protocol auto: probes with server/discover and bridges a 2025 desktop client to 2026-07-28, with the stored tokens", async () => {
  const configDir = path.join(home.path, "http-first"); // the tokens the http-first run stored: the same server URL
  fs.rmSync(path.join(configDir, "opened.txt"), { force: true });
  await using remote = startMcpRemote(new URL("/mcp", stack.relay.url), ["--protocol", "auto"], configDir);
  await useTools(remote, "StreamableHTTPClientTransport", "via-modern-bridge");
  expect(remote.stderr.text).toContain("Remote server speaks MCP 2026-07-28");
  expect(remote.opened()).toEqual([]);
  rememberTokens(configDir);
}, 60_000);

test("--client-metadata-url: identified by its metadata document, it registers nothing, and the consent page names the document's client", async () => {
  const callbackPort = freePort(); // the document lists its redirect URI, so the port is fixed (mcp-remote's strict mode)
  const documentUrl = site.publish("/mcp-remote/client.json", {
    client_name: "mcp-remote (metadata document)",
    redirect_uris: [`http://localhost:${callbackPort}/oauth/callback`],
    grant_types: ["authorization_code", "refresh_token"],
    response_types: ["code"],
    token_endpoint_auth_method: "none",
  });
  const configDir = path.join(home.path, "cimd");
  fs.mkdirSync(configDir, { recursive: true });
  const mark = stack.relay.stderr.lines.length;
  await using remote = startMcpRemote(new URL("/mcp", stack.relay.url), [String(callbackPort), "--client-metadata-url", documentUrl], configDir);
  const { authorization, consentHtml } = await signIn(remote, "/mcp");
  expect(authorization.searchParams.get("client_id")).toBe(documentUrl);
  expect(consentHtml).toContain("mcp-remote (metadata document)");
  expect(consentHtml).toContain("localhost");
  expect(site.hits("/mcp-remote/client.json")).toBeGreaterThan(0);
  await useTools(remote, "StreamableHTTPClientTransport", "via-metadata-document");
  expect(relayLinesSince(mark)).not.toContain("oauth client registered");
  rememberTokens(configDir);
}, 60_000);

test("the relay's log shows none of the codes and tokens it handed mcp-remote, nor the owner secret", () => {
  expect(handedOut.size).toBeGreaterThanOrEqual(10); // 3 codes; 2 token pairs per transport, 1 for the document
  const log = `${stack.relay.stdout.text}\n${stack.relay.stderr.text}`;
  for (const secret of handedOut) expect(log).not.toContain(secret);
  expect(log).not.toContain(OWNER_PASSWORD);
});
