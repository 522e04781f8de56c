// Approvals on the owner's dashboard in a real browser (Debian's Chromium via playwright-core), at phone width,
// against a real relay and an agent whose policy is "ask-to-change": a call that waits shows up as a card (by the
// page's own refresh), shows exactly what would run, and runs or fails as the owner decides on the page. Screenshots
// go to test-output/.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { Browser, Page } from "playwright-core";
import { closeBrowser, HAS_CHROMIUM, launchChromium, pageWidth, PHONE, phonePage as newPhonePage, SCREENSHOTS, submitForm } from "../helpers/browser.ts";
import { eventsOf } from "../helpers/audit.ts";
import { obtainGrant } from "../helpers/oauth.ts";
import { connectClient, eventually } from "../helpers/processes.ts";
import { useStack } from "../helpers/stack.ts";
import { call, type ToolCall } from "../helpers/tools.ts";

const OWNER_PASSWORD = "owner passphrase for approval tests";
/** The machine's name, as the cards show it. */
const MACHINE = "phone-approvals";

let browser: Browser;
let policyDir: string;

const phonePage = (): Promise<Page> => newPhonePage(browser);

interface Pending {
  id: string;
  tool: string;
  command?: string;
  working_dir?: string;
  path?: string;
  expires_at: string;
  url: string;
}

describe.skipIf(!HAS_CHROMIUM)("approvals on the dashboard in Chromium at phone width (skipped without /usr/bin/chromium)", () => {
  // Made before the stack's hooks, so the policy file is there when the agent starts and the browser closes first.
  beforeAll(() => {
    policyDir = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), "cr-policy-")));
    fs.writeFileSync(path.join(policyDir, "policy.toml"), 'preset = "ask-to-change"\n');
  });
  afterAll(async () => {
    await closeBrowser(browser);
    fs.rmSync(policyDir, { recursive: true, force: true });
  });

  const stack = useStack(() => ({
    relay: { env: { OWNER_PASSWORD } },
    agent: { machine: MACHINE, env: { POLICY_FILE: path.join(policyDir, "policy.toml") } },
    client: "streamable-http",
  }));

  beforeAll(async () => {
    browser = await launchChromium();
  });

  const root = () => stack.agent.roots[0]!;
  const dashboardUrl = () => new URL("/", stack.relay.url).toString();
  const cardOf = (page: Page, id: string) => page.locator(`[id="approval-${id}"]`);

  /** Signs in as the owner and opens the dashboard afresh (see submitForm for why afresh). */
  async function signIn(page: Page): Promise<void> {
    await page.goto(dashboardUrl());
    await page.fill("#owner_secret", OWNER_PASSWORD);
    const landing = await submitForm(page, "button[type=submit]");
    expect(landing.status).toBe(200);
    await page.goto(dashboardUrl());
  }

  /** The approvals waiting, as the owner's API lists them (with AUTH_TOKEN). */
  async function waiting(): Promise<Pending[]> {
    const response = await fetch(new URL("/approvals", stack.relay.url), { headers: { Authorization: `Bearer ${stack.relay.token}` } });
    expect(response.status).toBe(200);
    return ((await response.json()) as { approvals: Pending[] }).approvals;
  }

  /** Waits until the API lists an approval matching `which`, and returns it. */
  async function approvalFor(which: (a: Pending) => boolean): Promise<Pending> {
    let found: Pending | undefined;
    await eventually(async () => (found = (await waiting()).find(which)) !== undefined, 10_000, "the approval to be listed");
    return found!;
  }

  /** Waits for approval `id`'s card on a page that is left alone (the dashboard reloads itself while nothing waits),
   *  then opens the dashboard afresh for reading it. */
  async function cardAppears(page: Page, id: string): Promise<void> {
    await cardOf(page, id).waitFor({ timeout: 15_000 });
    await page.goto(dashboardUrl());
  }

  const refreshMeta = (page: Page) => page.locator('meta[http-equiv="refresh"]');

  test("a command waiting for approval appears by itself, shows what would run, and runs once approved", async () => {
    const page = await phonePage();
    await signIn(page);
    // Nothing waits: the page reloads itself every few seconds, and shows no approvals section.
    await expect(refreshMeta(page).getAttribute("content")).resolves.toBe("5");
    await expect(page.locator("section.approvals").count()).resolves.toBe(0);

    const target = path.join(root(), "approved.txt");
    const command = `touch ${target}`;
    const started = Date.now();
    const running = call(stack.client, "run_shell_command", { command, working_dir: root(), env: { GREETING: "value-never-shown-0a1b" } });
    const approval = await approvalFor((a) => a.command === command);
    expect(approval.url).toBe(`${stack.relay.url.origin}/#approval-${approval.id}`);

    await cardAppears(page, approval.id); // by the page's own refresh: nobody reloads it
    const card = cardOf(page, approval.id);
    await expect(page.locator("section.approvals h2").textContent()).resolves.toBe("Waiting for your approval (1)");
    await expect(card.locator("pre.command").textContent()).resolves.toBe(command);
    const text = (await card.textContent())!;
    expect(text).toContain(MACHINE);
    expect(text).toContain("run_shell_command");
    expect(text).toContain(`Working directory${root()}`);
    expect(text).toContain("GREETING");
    expect(text).not.toContain("value-never-shown-0a1b");
    expect(text).toContain("Asked bythe owner's token (AUTH_TOKEN)"); // the stack's client uses AUTH_TOKEN
    expect(text).toMatch(/ask-to-change/); // the rule that asked
    expect(text).toMatch(/expires \d\d:\d\d:\d\d UTC, in (9|10) min/);
    expect(text).toContain(`the same call on this machine (on ${MACHINE}: the same command in the same directory with the same variables)`);
    for (const label of ["Approve once", "Approve for 5 min", "Approve for 1 h", "Approve for 8 h", "Deny"]) {
      await expect(card.locator("button", { hasText: label }).count()).resolves.toBe(1);
    }
    // While something waits, the page stays put (the owner may be typing a reason), and fits a phone.
    await expect(refreshMeta(page).count()).resolves.toBe(0);
    expect(await pageWidth(page)).toBeLessThanOrEqual(PHONE.width);
    fs.mkdirSync(SCREENSHOTS, { recursive: true });
    await page.screenshot({ path: path.join(SCREENSHOTS, "approvals-phone.png"), fullPage: true });
    expect(fs.existsSync(target)).toBe(false); // nothing ran yet

    const landing = await submitForm(page, `[id="approval-${approval.id}"] button:has-text("Approve once")`);
    expect(landing.status).toBe(200);
    expect(landing.url.pathname).toBe("/");
    expect(landing.html).not.toContain(`approval-${approval.id}`);

    const result = await running;
    expect(result.isError).toBe(false);
    expect(result.data.exit_code).toBe(0);
    expect(fs.existsSync(target)).toBe(true);
    expect(Date.now() - started).toBeLessThan(25_000);
    const decided = eventsOf(stack.relay.databasePath).find((e) => e.kind === "approval_decided");
    expect(decided?.detail.detail).toMatch(new RegExp(`^${approval.id}: approved by dashboard session [A-Za-z0-9_-]{8} \\(run_shell_command\\)$`));
    await page.context().close();
  });

  test("a call denied on the page fails with the owner's reason, and nothing runs; an application is named", async () => {
    // This time an OAuth application asks, under a name it chose itself.
    const grant = await obtainGrant(stack.relay.url, OWNER_PASSWORD, { name: "Helpful <i>App</i>", resource: "/mcp" });
    await using app = await connectClient(stack.relay, "streamable-http", grant.access);
    const page = await phonePage();
    await signIn(page);
    const target = path.join(root(), "denied.txt");
    const running = call(app, "run_shell_command", { command: `touch ${target}` });
    const approval = await approvalFor((a) => a.command === `touch ${target}`);
    await cardAppears(page, approval.id);
    const askedBy = await cardOf(page, approval.id).locator("dt:has-text('Asked by') + dd").textContent();
    expect(askedBy).toBe(`Helpful <i>App</i> (client ${grant.clientId})`);

    const reason = "not now <b>please</b>: run the tests first";
    await page.fill(`[id="reason-${approval.id}"]`, reason);
    const landing = await submitForm(page, `[id="approval-${approval.id}"] button:has-text("Deny")`);
    expect(landing.url.pathname).toBe("/");

    const result: ToolCall = await running;
    expect(result.isError).toBe(true);
    expect(result.text).toContain(reason);
    expect(fs.existsSync(target)).toBe(false);
    await expect(waiting()).resolves.toEqual([]);
    await page.context().close();
  });

  test("hostile text is shown escaped and marked; a file change shows its diff; approving for a while covers the same call", async () => {
    const notes = path.join(root(), "notes.txt");
    fs.writeFileSync(notes, "line one\nline two\n");
    const page = await phonePage();
    await signIn(page);

    const content = `line one\n<script>alert("diff")</script>\n${"a-very-long-line-without-any-space-".repeat(8)}\n`;
    const writing = call(stack.client, "write_file", { path: notes, content });
    // A right-to-left override makes the end of a line read backwards: the card must show it is there.
    const disguised = `echo '<img src=x onerror=alert(1)>' # \u202Etxt.exe`;
    const echoing = call(stack.client, "run_shell_command", { command: disguised, working_dir: root() });
    const write = await approvalFor((a) => a.tool === "write_file");
    const echo = await approvalFor((a) => a.tool === "run_shell_command");
    await page.goto(dashboardUrl());
    await expect(page.locator("section.approvals h2").textContent()).resolves.toBe("Waiting for your approval (2)");
    await expect(page.title()).resolves.toBe("(2) Waiting for your approval · Code Remote");

    const writeCard = cardOf(page, write.id);
    await expect(writeCard.locator("dd code").first().textContent()).resolves.toBe(notes);
    await expect(writeCard.locator("pre.diff .del").allTextContents()).resolves.toContain("-line two");
    await expect(writeCard.locator("pre.diff .add").allTextContents()).resolves.toContain('+<script>alert("diff")</script>');
    const echoCard = cardOf(page, echo.id);
    await expect(echoCard.locator("pre.command").textContent()).resolves.toBe(disguised.replace("\u202E", "⟨U+202E⟩"));
    await expect(echoCard.locator("pre.command .ctl").textContent()).resolves.toBe("⟨U+202E⟩");
    await expect(echoCard.locator(".warning.danger").textContent()).resolves.toContain("1 invisible or unusual character");
    await expect(page.locator("section.approvals img, section.approvals script").count()).resolves.toBe(0);

    expect(await pageWidth(page)).toBeLessThanOrEqual(PHONE.width);
    await page.screenshot({ path: path.join(SCREENSHOTS, "approvals-diff-phone.png"), fullPage: true });

    // Approved for 5 min: this write runs, and the same write again runs without asking.
    await submitForm(page, `[id="approval-${write.id}"] button:has-text("Approve for 5 min")`);
    const written = await writing;
    expect(written.isError).toBe(false);
    expect(fs.readFileSync(notes, "utf8")).toBe(content);
    const again = await call(stack.client, "write_file", { path: notes, content: "again\n" });
    expect(again.isError).toBe(false);
    expect(fs.readFileSync(notes, "utf8")).toBe("again\n");
    expect((await waiting()).map((a) => a.id)).toEqual([echo.id]);

    // Denied without a reason.
    await page.goto(dashboardUrl());
    await submitForm(page, `[id="approval-${echo.id}"] button:has-text("Deny")`);
    const refused = await echoing;
    expect(refused.isError).toBe(true);
    expect(refused.text).toContain("no reason given");

    // Nothing waits any more: the page reloads itself again.
    await page.goto(dashboardUrl());
    await expect(refreshMeta(page).getAttribute("content")).resolves.toBe("5");
    // A form for an approval that is gone gets a page saying so.
    const gone = await fetch(new URL(`/approvals/${echo.id}`, stack.relay.url), {
      method: "POST",
      headers: { Cookie: (await page.context().cookies()).map((c) => `${c.name}=${c.value}`).join("; "), "Content-Type": "application/x-www-form-urlencoded", Origin: stack.relay.url.origin },
      body: new URLSearchParams({ csrf: (await page.locator('input[name="csrf"]').first().getAttribute("value"))!, decision: "approve" }),
    });
    expect(gone.status).toBe(404);
    expect(await gone.text()).toContain("No longer waiting");
    await page.context().close();
  });
});
