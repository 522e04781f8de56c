// The owner's dashboard in a real browser (Debian's Chromium via playwright-core), at phone width, against a real
// relay with real agents: login, machines, approved OAuth applications, running commands, recent calls filtered by
// machine, and the actions behind their confirmation pages. Screenshots go to test-output/.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import type { Browser, Page } from "playwright-core";
import { closeBrowser, HAS_CHROMIUM, launchChromium, pageWidth, PHONE, phonePage as newPhonePage, SCREENSHOTS, submitForm, textsOf, type Landing } from "../helpers/browser.ts";
import { eventsOf, relayCommand } from "../helpers/audit.ts";
import { obtainGrant } from "../helpers/oauth.ts";
import { connectClient, startAgent, type Agent } from "../helpers/processes.ts";
import { useStack } from "../helpers/stack.ts";
import { call } from "../helpers/tools.ts";

const OWNER_PASSWORD = "owner passphrase for tests";

let ci: Agent;
let ciToken: string;
let browser: Browser;

const phonePage = (): Promise<Page> => newPhonePage(browser);

/** A machine's card, found by its heading alone (a temp directory in another card's roots may hold "ci" too). */
const cardOf = (page: Page, machine: string) => page.locator(".card").filter({ has: page.locator("h3", { hasText: new RegExp(`^${machine}$`) }) });

describe.skipIf(!HAS_CHROMIUM)("the dashboard in Chromium at phone width (skipped without /usr/bin/chromium)", () => {
  // The relay, the agents and the browser start here, not for the whole file: a skipped describe runs none of its
  // hooks. This afterAll is made before the stack's, so the browser and "ci" stop before "laptop" and the relay.
  afterAll(async () => {
    await closeBrowser(browser);
    await ci?.[Symbol.asyncDispose]();
  });

  const stack = useStack({ relay: { env: { OWNER_PASSWORD } }, agent: { machine: "laptop" } });

  beforeAll(async () => {
    const made = relayCommand(stack.relay.databasePath, "agent-token", "create", "ci");
    ciToken = /crm_[A-Za-z0-9_-]{43}/.exec(made.stdout)![0];
    ci = await startAgent(stack.relay, { machine: "ci", token: ciToken });
    browser = await launchChromium();
  });

  const dashboardUrl = () => new URL("/", stack.relay.url).toString();

  /** Fills in the login form and submits it; returns the page the relay answered with. */
  async function submitSecret(page: Page, secret: string): Promise<Landing> {
    await page.goto(dashboardUrl());
    await page.fill("#owner_secret", secret);
    return submitForm(page, "button[type=submit]");
  }

  /** Signs in as the owner and opens the dashboard afresh (see submitForm for why afresh). */
  async function signIn(page: Page): Promise<void> {
    const landing = await submitSecret(page, OWNER_PASSWORD);
    expect(landing.status).toBe(200);
    expect(landing.url.pathname).toBe("/");
    await page.goto(dashboardUrl());
  }

  test("a visitor without a session sees only the login form; a wrong secret is refused", async () => {
    const page = await phonePage();
    await page.goto(dashboardUrl());
    const html = await page.content();
    expect(html).toContain('name="owner_secret"');
    expect(html).not.toContain("laptop");
    const refused = await submitSecret(page, "not the secret");
    expect(refused.status).toBe(401);
    expect(textsOf(refused.html, "[role=alert]")).toEqual(["Wrong owner secret."]);
    await page.context().close();
  });

  test("signed in, it shows machines, running commands and recent calls, fits a phone, and holds no secret", async () => {
    await using client = await connectClient(stack.relay, "streamable-http");
    await call(client, "run_shell_command", { command: "echo from-laptop", machine: "laptop" });
    await call(client, "list_directory", { path: ci.roots[0], machine: "ci" });
    const background = await call(client, "run_shell_command", { command: "sleep 120", background: true, machine: "laptop" });

    const page = await phonePage();
    await signIn(page);
    const cards = page.locator(".card");
    await expect(cards.count()).resolves.toBe(2);
    const laptopCard = await cardOf(page, "laptop").textContent();
    expect(laptopCard).toContain("agent 0.1.0 on Linux");
    expect(laptopCard).toContain(stack.agent.roots[0]!);
    expect(laptopCard).toContain("the shared token");
    expect(await cardOf(page, "ci").textContent()).toContain("its own token");
    const running = await page.locator("h2:has-text('Running commands') + ul").textContent();
    expect(running).toContain("sleep 120");
    expect(running).toContain(background.data.command_id);
    const calls = await page.locator("h2:has-text('Recent tool calls') ~ ul.list").first().textContent();
    expect(calls).toContain("run_shell_command");
    expect(calls).toContain("list_directory");

    expect(await pageWidth(page)).toBeLessThanOrEqual(PHONE.width);
    fs.mkdirSync(SCREENSHOTS, { recursive: true });
    await page.screenshot({ path: path.join(SCREENSHOTS, "dashboard-phone.png"), fullPage: true });

    const html = await page.content();
    for (const secret of [OWNER_PASSWORD, stack.relay.token, ciToken]) expect(html).not.toContain(secret);

    await page.locator("nav.filter a", { hasText: /^ci$/ }).click();
    const filtered = await page.locator("h2:has-text('Recent tool calls') ~ ul.list").first().textContent();
    expect(filtered).toContain("list_directory");
    expect(filtered).not.toContain("run_shell_command");
    await call(client, "kill_command", { command_id: background.data.command_id });
    await page.context().close();
  });

  test("disconnecting a machine asks first, cuts it off, keeps it away, and is audited", async () => {
    const page = await phonePage();
    await signIn(page);
    await cardOf(page, "laptop").locator("a", { hasText: "Disconnect" }).click();
    await expect(page.locator("h1").textContent()).resolves.toBe("Are you sure?");
    await page.screenshot({ path: path.join(SCREENSHOTS, "dashboard-confirm-phone.png") });
    await submitForm(page, "button.danger");
    await stack.agent.stderr.waitFor(/disconnected code=4003 reason="disconnected by the owner"/);
    await page.goto(dashboardUrl());
    await expect(page.locator(".card").count()).resolves.toBe(1);
    await stack.agent.stderr.waitFor(/could not register with the relay.*turned away until/, 10_000); // it may not come straight back
    const event = eventsOf(stack.relay.databasePath, "--machine", "laptop").find((e) => e.kind === "agent_disconnected_by_owner");
    expect(event?.detail.detail).toBe("disconnected");
    await page.context().close();
  });

  test("revoking a machine's token asks first and cuts that agent off", async () => {
    const page = await phonePage();
    await signIn(page);
    await cardOf(page, "ci").locator("a", { hasText: "Revoke token" }).click();
    await submitForm(page, "button.danger");
    await ci.stderr.waitFor(/disconnected code=4003 reason="agent token revoked"/, 5_000);
    expect(eventsOf(stack.relay.databasePath, "--machine", "ci").some((e) => e.kind === "agent_token_revoked")).toBe(true);
    await page.context().close();
  });

  test("approved applications are listed; revoking one asks first, kills its tokens and ends its open stream at once", async () => {
    const grant = await obtainGrant(stack.relay.url, OWNER_PASSWORD, { name: "Phone-listed app", redirectUri: "https://app.listed.example/cb", resource: "/sse" });
    const stream = await fetch(new URL("/sse", stack.relay.url), { headers: { Authorization: `Bearer ${grant.access}`, Accept: "text/event-stream" } });
    const reader = stream.body!.getReader();
    await reader.read(); // the endpoint event: the session is open

    const page = await phonePage();
    await signIn(page);
    const listed = page.locator("ul.clients li", { hasText: "Phone-listed app" });
    const entry = await listed.textContent();
    expect(entry).toContain("answers go to app.listed.example");
    expect(entry).toMatch(/approved \d{4}-\d\d-\d\d \d\d:\d\d:\d\d, last used \d{4}-/);
    expect(entry).toContain(grant.clientId);
    expect(await pageWidth(page)).toBeLessThanOrEqual(PHONE.width);
    await page.screenshot({ path: path.join(SCREENSHOTS, "dashboard-applications-phone.png"), fullPage: true });

    await listed.locator("a", { hasText: "Revoke access" }).click();
    await expect(page.locator("h1").textContent()).resolves.toBe("Are you sure?");
    await expect(page.locator(".warning").textContent()).resolves.toContain("Revoke the access of Phone-listed app (answers go to app.listed.example)?");
    const landing = await submitForm(page, "button.danger");
    expect(landing.url.pathname).toBe("/");
    expect(textsOf(landing.html, "ul.clients li").some((li) => li.includes("Phone-listed app"))).toBe(false);

    const drained = (async () => {
      while (!(await reader.read()).done);
      return true;
    })();
    expect(await Promise.race([drained, Bun.sleep(3_000).then(() => false)])).toBe(true); // the stream ended
    const refused = await fetch(new URL("/sse", stack.relay.url), { headers: { Authorization: `Bearer ${grant.access}` } });
    expect(refused.status).toBe(401);
    await refused.body?.cancel();
    const event = eventsOf(stack.relay.databasePath).find((e) => e.kind === "oauth_client_revoked");
    expect(event?.detail.detail).toBe(`${grant.clientId} (Phone-listed app) from the dashboard`);
    await page.context().close();
  });

  test("revoking an application that is already gone says so and changes nothing", async () => {
    const page = await phonePage();
    await signIn(page);
    await page.goto(new URL("/confirm?action=revoke-client&client_id=gone", stack.relay.url).toString());
    await expect(page.locator("h1").textContent()).resolves.toBe("No such application");
    await page.context().close();
  });

  test("an action posted without the session's form token is refused", async () => {
    const page = await phonePage();
    await signIn(page);
    // The page's CSP forbids it to fetch anything, so the forgery comes from outside, with the session's cookie.
    const cookie = (await page.context().cookies()).map((c) => `${c.name}=${c.value}`).join("; ");
    const forged = await fetch(new URL("/actions", stack.relay.url), {
      method: "POST",
      redirect: "manual",
      headers: { Cookie: cookie, "Content-Type": "application/x-www-form-urlencoded" },
      body: "action=disconnect&machine=ci&csrf=forged",
    });
    expect(forged.status).toBe(403);
    const crossSite = await fetch(new URL("/actions", stack.relay.url), { method: "POST", headers: { Cookie: cookie, Origin: "https://evil.example" }, body: "" });
    expect(crossSite.status).toBe(403);
    await page.context().close();
  });

  test("signing out ends the session, even for a copy of the cookie", async () => {
    const page = await phonePage();
    await signIn(page);
    const cookies = await page.context().cookies();
    const signedOut = await submitForm(page, "text=Sign out");
    expect(signedOut.html).toContain('name="owner_secret"');
    const copied = cookies.map((c) => `${c.name}=${c.value}`).join("; ");
    const response = await fetch(new URL("/", stack.relay.url), { headers: { Cookie: copied } });
    expect(await response.text()).toContain('name="owner_secret"');
    await page.context().close();
  });
});
