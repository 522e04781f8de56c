// The owner's passkey, enrolled in a real browser (Debian's Chromium via playwright-core, with the DevTools protocol's
// virtual authenticator) at phone width, against a real relay and the real `code-remote-agent enroll-owner` in a
// pseudo-terminal: the page and the machine each show a fingerprint of the key, the owner compares them at the
// machine, and the key is stored there only on a yes. The relay is reached at http://localhost:PORT, and the agents
// dial ws://localhost:PORT/ws/agent: an IP address cannot be a passkey's RP ID. Screenshots go to test-output/.

import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { generateKeyPairSync, randomBytes, sign } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { Browser, CDPSession, Page } from "playwright-core";
import { identityTranscript, PROTOCOL_VERSION, VERSION } from "../../protocol.ts";
import { eventsOf } from "../helpers/audit.ts";
import { closeBrowser, HAS_CHROMIUM, launchChromium, pageWidth, PHONE, phonePage, SCREENSHOTS, submitForm } from "../helpers/browser.ts";
import { connectClient, eventually, minimalEnv, ROOT } from "../helpers/processes.ts";
import { approvalFor, approveAsOwner } from "../helpers/approvals.ts";
import { useStack } from "../helpers/stack.ts";
import { openTerminal, SCRIPT } from "../helpers/terminal.ts";

// Each enrolment runs a browser, a relay, the daemon and enroll-owner at once: more than the usual 30 s on a busy machine.
setDefaultTimeout(60_000);

const OWNER_PASSWORD = "owner passphrase for passkey tests";
const MACHINE = "passkey-box";
const AGENT = path.join(ROOT, "agent.ts");
/** A fingerprint as the page and the machine show it: 8 groups of 4 hex digits. */
const FINGERPRINT = /[0-9a-f]{4}(?: [0-9a-f]{4}){7}/;
const ENROL_URL = /http:\/\/localhost:\d+\/enroll\/[A-Za-z0-9_-]+/;

/** The agent's config directory's parent (XDG_CONFIG_HOME): owner-keys.json goes in code-remote/ under it. */
let configHome: string;
/** The agent's state directory (its identity key), shared by the daemon and the subcommands run beside it. */
let stateDir: string;
let browser: Browser;

describe.skipIf(!HAS_CHROMIUM || !SCRIPT)("the owner's passkey enrolled in Chromium at phone width (skipped without /usr/bin/chromium or script(1))", () => {
  beforeAll(() => {
    configHome = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), "cr-passkeys-")));
    stateDir = path.join(configHome, "state");
    fs.mkdirSync(path.join(configHome, "code-remote"), { recursive: true });
    fs.writeFileSync(path.join(configHome, "code-remote", "policy.toml"), 'preset = "ask-to-change"\napprovals = "passkey"\n');
  });
  afterAll(async () => {
    await closeBrowser(browser);
    fs.rmSync(configHome, { recursive: true, force: true });
  });

  // No PUBLIC_URL: the relay's pages are where the agent dialed it, http://localhost:PORT.
  const stack = useStack(() => ({
    relay: { env: { OWNER_PASSWORD } },
    agent: { machine: MACHINE, relayHost: "localhost", stateDir, env: { XDG_CONFIG_HOME: configHome } },
  }));

  beforeAll(async () => {
    browser = await launchChromium();
  });

  /** The settings the daemon runs with, for the subcommands run beside it on the same machine. */
  const agentEnv = () =>
    minimalEnv({
      RELAY_URL: `ws://localhost:${stack.relay.port}/ws/agent`,
      AGENT_TOKEN: stack.relay.token,
      MACHINE_NAME: MACHINE,
      ALLOWED_ROOTS: stack.agent.roots.join(":"),
      SHELL: "/bin/sh",
      AGENT_STATE_DIR: stateDir,
      XDG_CONFIG_HOME: configHome,
    });
  const ownerKeysList = () => {
    const listed = Bun.spawnSync([process.execPath, "run", AGENT, "owner-keys", "list"], { env: agentEnv(), cwd: os.tmpdir() });
    expect(listed.exitCode).toBe(0);
    return listed.stdout.toString();
  };

  /** A phone-sized page with a virtual authenticator (a passkey provider that verifies its user), not signed in. */
  async function ownerPhone(): Promise<{ page: Page; cdp: CDPSession }> {
    const page = await phonePage(browser);
    const cdp = await page.context().newCDPSession(page);
    await cdp.send("WebAuthn.enable");
    await cdp.send("WebAuthn.addVirtualAuthenticator", {
      options: { protocol: "ctap2", transport: "internal", hasResidentKey: true, hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true },
    });
    return { page, cdp };
  }

  /** enroll-owner in a terminal, up to the page's address it prints. */
  async function startEnrolment(label: string) {
    const terminal = openTerminal([process.execPath, "run", AGENT, "enroll-owner", "--label", label], agentEnv());
    await eventually(() => ENROL_URL.test(terminal.screen()), 15_000, "the enrolment page's address");
    return { terminal, url: ENROL_URL.exec(terminal.screen())![0] };
  }

  /** Opens the enrolment link as a phone that is not signed in: the login form first, then back to the link. */
  async function openSignedIn(page: Page, url: string): Promise<void> {
    const first = await page.goto(url);
    expect(first!.status()).toBe(401);
    await expect(page.locator('input[name="next"]').getAttribute("value")).resolves.toBe(new URL(url).pathname);
    await page.fill("#owner_secret", OWNER_PASSWORD);
    const landing = await submitForm(page, "button[type=submit]");
    expect(landing.status).toBe(200);
    expect(landing.url.href).toBe(url);
    await page.goto(url); // afresh, for reading the DOM (see submitForm)
  }

  /** Creates the passkey on the page; the fingerprint the page shows. */
  async function createPasskey(page: Page): Promise<string> {
    await page.click("#create");
    await page.locator("#fingerprint").filter({ hasText: FINGERPRINT }).waitFor();
    return (await page.locator("#fingerprint").textContent())!;
  }

  const shot = (page: Page, name: string) => page.screenshot({ path: path.join(SCREENSHOTS, name), fullPage: true });
  /** The machine's audit events, as a function of their kind. */
  const eventsNow = () => {
    const all = eventsOf(stack.relay.databasePath).filter((e) => e.machine === MACHINE);
    return (kind: string) => all.filter((e) => e.kind === kind);
  };

  test("a passkey made on the page is stored on the machine once the owner sees the same fingerprint on both", async () => {
    fs.mkdirSync(SCREENSHOTS, { recursive: true });
    const { terminal, url } = await startEnrolment("test phone");
    const { page } = await ownerPhone();
    await openSignedIn(page, url);

    const response = await page.goto(url);
    const csp = response!.headers()["content-security-policy"]!;
    expect(csp).toContain("script-src 'self';");
    expect(csp).not.toMatch(/script-src[^;]*unsafe/);
    await expect(page.locator("h1").textContent()).resolves.toBe(`Create a passkey for ${MACHINE}`);
    await expect(page.locator("dt:has-text('Label') + dd").textContent()).resolves.toBe("test phone");
    await expect(page.locator("#create").textContent()).resolves.toBe(`Create a passkey for ${MACHINE}`);
    await expect(page.locator("script:not([src])").count()).resolves.toBe(0);
    expect(await pageWidth(page)).toBeLessThanOrEqual(PHONE.width);
    await shot(page, "passkey-enrol-phone.png");

    const shown = await createPasskey(page);
    await expect(page.locator("#fingerprint-box").textContent()).resolves.toContain("Check that your machine shows the same fingerprint, then confirm there");
    // The machine shows the fingerprint of the key that reached it, and asks.
    await eventually(() => terminal.screen().includes("[y/N]"), 15_000, "the machine's question");
    const onMachine = FINGERPRINT.exec(terminal.screen())![0];
    expect(onMachine).toBe(shown);
    await expect(page.locator("#status").textContent()).resolves.toContain(`Waiting for ${MACHINE}`);
    await shot(page, "passkey-fingerprint-phone.png");

    await terminal.answer("[y/N]", "y");
    const screen = await terminal.finish((s) => s.includes('Stored "test phone"'));
    expect(screen).toContain('Stored "test phone"');
    await page.locator("#status.stored").waitFor();
    await expect(page.locator("#status").textContent()).resolves.toBe(`Stored on ${MACHINE}.`);
    expect(await pageWidth(page)).toBeLessThanOrEqual(PHONE.width);
    await shot(page, "passkey-stored-phone.png");

    const listed = ownerKeysList();
    expect(listed).toContain(shown);
    expect(listed).toContain("test phone");
    // The daemon's own link was never touched: still connected, never replaced or dropped.
    const health = await fetch(new URL("/health", stack.relay.url), { headers: { Authorization: `Bearer ${stack.relay.token}` } });
    expect(((await health.json()) as { machines: string[] }).machines).toEqual([MACHINE]);
    const events = eventsNow();
    expect(events("agent_replaced")).toEqual([]);
    expect(events("agent_disconnected")).toEqual([]);
    expect(events("owner_key_enrolment_started")).toHaveLength(1);
    expect(events("owner_key_enrolled")[0]?.detail.detail).toContain(`the page showed ${shown}`);
    // The page, opened again, says how it ended; the link makes no second passkey.
    await page.goto(url);
    await expect(page.locator("#status").textContent()).resolves.toBe(`Stored on ${MACHINE}.`);
    await expect(page.locator("#create").isHidden()).resolves.toBe(true);
    ownersPhone = page; // its virtual authenticator holds the enrolled passkey: the approval tests below use it
  });

  // --- approving with the enrolled passkey ---

  /** The owner's phone from the first test: signed in, with the passkey the machine enrolled. */
  let ownersPhone: Page;
  const approvalOf = (command: string) => approvalFor(stack.relay, { command });
  const postDecision = (id: string, extra: Record<string, unknown>) => approveAsOwner(stack.relay, id, extra);
  /** Starts a command that the machine's policy holds for approval; its result, when it comes. */
  async function held(name: string) {
    const client = await connectClient(stack.relay, "streamable-http");
    const target = path.join(stack.agent.roots[0]!, name);
    const command = `touch ${target}`;
    const result = client.callTool({ name: "run_shell_command", arguments: { command } }, undefined, { timeout: 60_000 }).finally(() => client.close()) as Promise<{ isError?: boolean; content: { text: string }[] }>;
    return { target, command, result, approval: await approvalOf(command) };
  }
  /** What a browser's authenticator answers for `statement` (its SHA-256 as the challenge), as the page posts it. */
  const signIn = (page: Page, statement: string, rpId: string, credentialIds: string[]) =>
    page.evaluate(
      async ({ statement, rpId, credentialIds }) => {
        const b64 = (bytes: ArrayBuffer) => btoa(String.fromCharCode(...new Uint8Array(bytes))).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
        const unb64 = (text: string) => Uint8Array.from(atob(text.replaceAll("-", "+").replaceAll("_", "/")), (c) => c.charCodeAt(0));
        const challenge = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(statement));
        const allowCredentials = credentialIds.map((id) => ({ type: "public-key", id: unb64(id) }));
        // The browser's WebAuthn API (the test's TypeScript has no DOM types).
        const webauthn = (navigator as unknown as { credentials: { get(options: object): Promise<any> } }).credentials;
        const credential = await webauthn.get({ publicKey: { challenge, rpId, allowCredentials, userVerification: "required" } });
        const response = credential.response;
        return {
          id: credential.id,
          rawId: b64(credential.rawId),
          type: "public-key",
          response: { clientDataJSON: b64(response.clientDataJSON), authenticatorData: b64(response.authenticatorData), signature: b64(response.signature) },
          clientExtensionResults: {},
        };
      },
      { statement, rpId, credentialIds },
    );
  const callsRefused = () =>
    (JSON.parse(Bun.spawnSync([process.execPath, "run", path.join(ROOT, "server.ts"), "audit", "--json", "--limit", "200"], { env: { ...minimalEnv(), DATABASE_PATH: stack.relay.databasePath }, cwd: os.tmpdir() }).stdout.toString()) as { calls: { outcome: string; error: string | null }[] }).calls.filter((c) => c.outcome === "refused");

  test("a call the policy holds is approved on the page with the passkey, and runs", async () => {
    const call = await held("approved-with-passkey");
    await ownersPhone.goto(`http://localhost:${stack.relay.port}/`); // the passkey's site: localhost, not 127.0.0.1
    const card = ownersPhone.locator(`#approval-${call.approval.id}`);
    await expect(card.textContent()).resolves.toContain("Approving needs your passkey");
    await shot(ownersPhone, "passkey-approval-phone.png");
    await card.locator("button", { hasText: "Approve once" }).click();
    const result = await call.result;
    expect(result.isError ?? false).toBe(false);
    expect(fs.existsSync(call.target)).toBe(true);
  });

  test("the owner's AUTH_TOKEN without a passkey, an assertion replayed from another call, and one by an unenrolled passkey run nothing; each refusal is audited", async () => {
    // An assertion the browser made for one call (signed, never sent).
    const first = await held("captured-for-one-call");
    const captured = await signIn(ownersPhone, first.approval.passkey!.statements.once, first.approval.passkey!.rp_id, first.approval.passkey!.credential_ids);
    // 1. The owner's token alone.
    await postDecision(first.approval.id, {});
    expect((await first.result).isError).toBe(true);
    expect(fs.existsSync(first.target)).toBe(false);
    // 2. That captured assertion, replayed for another call.
    const second = await held("replayed-assertion");
    await postDecision(second.approval.id, { assertion: captured });
    expect((await second.result).content[0]!.text).toContain("Not approved by the owner");
    expect(fs.existsSync(second.target)).toBe(false);
    // 3. A second authenticator, whose passkey the machine never enrolled, signing the right statement.
    const { page: stranger } = await ownerPhone();
    await stranger.goto(`http://localhost:${stack.relay.port}/`);
    const strangerId = await stranger.evaluate(async () => {
      const webauthn = (navigator as unknown as { credentials: { create(options: object): Promise<{ id: string }> } }).credentials;
      const credential = await webauthn.create({
        publicKey: {
          challenge: crypto.getRandomValues(new Uint8Array(32)),
          rp: { id: "localhost", name: "not the owner" },
          user: { id: crypto.getRandomValues(new Uint8Array(16)), name: "stranger", displayName: "stranger" },
          pubKeyCredParams: [{ type: "public-key", alg: -7 }],
          authenticatorSelection: { residentKey: "preferred", userVerification: "required" },
        },
      });
      return credential.id;
    });
    const third = await held("unenrolled-passkey");
    await postDecision(third.approval.id, { assertion: await signIn(stranger, third.approval.passkey!.statements.once, "localhost", [strangerId]) });
    expect((await third.result).content[0]!.text).toContain("a passkey that is not enrolled on this machine");
    expect(fs.existsSync(third.target)).toBe(false);
    await stranger.context().close();
    // Each refusal is a finished call in the audit log, with its reason.
    const reasons = callsRefused().map((c) => c.error ?? "");
    expect(reasons.some((r) => r.includes("carried no passkey signature"))).toBe(true);
    expect(reasons.some((r) => r.includes("another call, or an altered one"))).toBe(true);
    expect(reasons.some((r) => r.includes("not enrolled on this machine"))).toBe(true);
  });

  test("a fingerprint the owner does not confirm at the machine stores nothing, and the page says so", async () => {
    const before = ownerKeysList();
    const { terminal, url } = await startEnrolment("not mine");
    const { page } = await ownerPhone();
    await openSignedIn(page, url);
    const shown = await createPasskey(page);
    await terminal.answer("[y/N]", "n");
    const screen = await terminal.finish((s) => s.includes("Not stored"));
    expect(screen).toContain(shown);
    await page.locator("#status.error").waitFor();
    const status = (await page.locator("#status").textContent())!;
    expect(status).toStartWith("Not stored");
    expect(status).toContain("did not confirm");
    await shot(page, "passkey-refused-phone.png");
    expect(ownerKeysList()).toBe(before);
    expect(ownerKeysList()).not.toContain(shown);
    expect(eventsNow()("owner_key_refused").map((e) => e.detail.detail).join("\n")).toContain("did not confirm");
    await page.context().close();
  });

  test("an enrolment link is for the owner's session and takes one passkey; an unknown one is a page saying so", async () => {
    const { page } = await ownerPhone();
    const { terminal, url } = await startEnrolment("spare");
    await openSignedIn(page, url);
    const code = new URL(url).pathname;
    const cookie = (await page.context().cookies()).map((c) => `${c.name}=${c.value}`).join("; ");
    const csrf = (await page.locator("#enrolment").getAttribute("data-csrf"))!;
    const post = (headers: Record<string, string>, body: unknown) =>
      fetch(new URL(code, url), {
        method: "POST",
        headers: { "Content-Type": "application/json", Origin: `http://localhost:${stack.relay.port}`, ...headers },
        body: JSON.stringify(body),
      });
    // Without the session's CSRF token, or without a session, nothing is sent; nor is what is not a passkey.
    expect((await post({ Cookie: cookie }, {})).status).toBe(403);
    expect((await post({}, {})).status).toBe(401);
    expect((await post({ Cookie: cookie, "X-CSRF-Token": csrf }, { credential: { id: "x" } })).status).toBe(400);
    // The machine still waits: the real passkey goes through once; a second one is refused.
    const shown = await createPasskey(page);
    const again = await post({ Cookie: cookie, "X-CSRF-Token": csrf }, { credential: { id: "AA", rawId: "AA", type: "public-key", response: { clientDataJSON: "", attestationObject: "" }, clientExtensionResults: {} } });
    expect(again.status).toBe(409);
    await terminal.answer("[y/N]", "n");
    expect(await terminal.finish((s) => s.includes("Not stored"))).toContain(shown);
    // A code that is not there (or no longer) is a page saying so.
    const unknown = await page.goto(new URL(`/enroll/${randomBytes(16).toString("base64url")}`, url).href);
    expect(unknown!.status()).toBe(404);
    await expect(page.locator("h1").textContent()).resolves.toBe("No such enrolment");
    // The scripts are the relay's own files, served as JavaScript.
    const script = await fetch(new URL("/assets/enroll.js", url));
    expect(script.headers.get("content-type")).toBe("text/javascript; charset=utf-8");
    expect((await fetch(new URL("/assets/nothing.js", url))).status).toBe(404);
    await page.context().close();
  });
});

// --- the enrolment connection itself, by hand: what the relay admits and refuses ---

/** An enroll connection made by hand (as enroll-owner makes it, with a key of its own): hello, proof, enroll_begin. */
function enrolByHand(url: string, token: string, machine: string, begin: { origin: string; rp_id: string }) {
  const { publicKey, privateKey } = generateKeyPairSync("ed25519");
  const x = (publicKey.export({ format: "jwk" }) as { x: string }).x;
  const ws = new WebSocket(url, { headers: { Authorization: `Bearer ${token}` } } as unknown as string[]);
  const frames: { type: string; [key: string]: unknown }[] = [];
  let closed: { code: number; reason: string } | undefined;
  ws.addEventListener("open", () =>
    ws.send(JSON.stringify({ type: "hello", protocol_version: PROTOCOL_VERSION, machine, agent_version: VERSION, os: "test", arch: "x64", shell: "/bin/sh", hostname: "test", allowed_roots: [], public_key: x, purpose: "enroll" })),
  );
  ws.addEventListener("message", (event) => {
    const frame = JSON.parse(String(event.data));
    frames.push(frame);
    if (frame.type === "challenge") ws.send(JSON.stringify({ type: "proof", signature: sign(null, identityTranscript(machine, x, frame.nonce), privateKey).toString("base64url") }));
    const challenge = randomBytes(32).toString("base64url");
    if (frame.type === "welcome") ws.send(JSON.stringify({ type: "enroll_begin", challenge, user_id: randomBytes(16).toString("base64url"), label: "by hand", ...begin }));
  });
  ws.addEventListener("close", (event) => (closed = { code: event.code, reason: event.reason }));
  return {
    frames,
    async closed() {
      await eventually(() => closed !== undefined, 5_000, "the relay to close the connection");
      return closed!;
    },
    close: () => ws.close(),
  };
}

describe("enrolment connections", () => {
  const stack = useStack({ relay: { env: { OWNER_PASSWORD } }, agent: { machine: "wire-box", relayHost: "localhost" } });
  const wsUrl = (host = "localhost") => `ws://${host}:${stack.relay.port}/ws/agent`;
  const refusals = () => eventsOf(stack.relay.databasePath).filter((e) => e.kind === "owner_key_refused").map((e) => e.detail.detail as string);

  test("a free name gets a page on the relay's own origin, and the daemon's link is untouched", async () => {
    const origin = `http://localhost:${stack.relay.port}`;
    const link = enrolByHand(wsUrl(), stack.relay.token, "another-box", { origin, rp_id: "localhost" });
    await eventually(() => link.frames.some((f) => f.type === "enroll_page"), 5_000, "the enroll_page frame");
    expect(link.frames.find((f) => f.type === "enroll_page")!.url).toMatch(new RegExp(`^${origin}/enroll/[A-Za-z0-9_-]{22}$`));
    const health = await fetch(new URL("/health", stack.relay.url), { headers: { Authorization: `Bearer ${stack.relay.token}` } });
    expect(((await health.json()) as { machines: string[] }).machines).toEqual(["wire-box"]); // not registered
    link.close();
    await link.closed();
  });

  test("an agent that expects another origin is refused, saying which, and it is audited", async () => {
    const link = enrolByHand(wsUrl(), stack.relay.token, "another-box", { origin: "https://relay.example.com", rp_id: "relay.example.com" });
    const closed = await link.closed();
    expect(closed.code).toBe(4000);
    expect(closed.reason).toContain(`this relay is http://localhost:${stack.relay.port}, not https://relay.example.com`);
    expect(refusals().join("\n")).toContain("the agent expects a passkey for https://relay.example.com");
  });

  test("a relay reached by IP address offers no page: a passkey needs a host name", async () => {
    const origin = `http://127.0.0.1:${stack.relay.port}`;
    const closed = await enrolByHand(wsUrl("127.0.0.1"), stack.relay.token, "another-box", { origin, rp_id: "127.0.0.1" }).closed();
    expect(closed.reason).toContain("a passkey needs a host name, not an IP address");
  });

  test("a name pinned to the daemon's key is not enrolled by another key", async () => {
    const closed = await enrolByHand(wsUrl(), stack.relay.token, "wire-box", { origin: `http://localhost:${stack.relay.port}`, rp_id: "localhost" }).closed();
    expect(closed.code).toBe(4004);
    const health = await fetch(new URL("/health", stack.relay.url), { headers: { Authorization: `Bearer ${stack.relay.token}` } });
    expect(((await health.json()) as { machines: string[] }).machines).toEqual(["wire-box"]);
  });
});
