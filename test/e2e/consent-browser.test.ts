// The OAuth consent page in a real browser (Debian's Chromium driven by playwright-core), at phone width: the right
// owner secret redirects with a code; wrong ones are refused, then the approval is cancelled, then the address is
// made to wait. A screenshot is saved in test-output/ for a person to look at.

import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import type { Browser, Page } from "playwright-core";
import { HAS_CHROMIUM, launchChromium, pageWidth, PHONE, phonePage as newPhonePage, SCREENSHOTS } from "../helpers/browser.ts";
import { startAgent, startRelay, type Agent, type Relay } from "../helpers/processes.ts";

// Real processes on a busy machine take longer than bun's default 5 s per test (the setting is per file).
setDefaultTimeout(30_000);

const OWNER_PASSWORD = "a long owner passphrase";
const REDIRECT = "http://127.0.0.1:1/callback";

let relay: Relay;
let agent: Agent;
let browser: Browser;

beforeAll(async () => {
  if (!HAS_CHROMIUM) return;
  relay = await startRelay({ env: { OWNER_PASSWORD } });
  agent = await startAgent(relay, { machine: "phone-test-box" });
  browser = await launchChromium();
});

afterAll(async () => {
  await browser?.close();
  await agent?.[Symbol.asyncDispose]();
  await relay?.[Symbol.asyncDispose]();
});

/** A freshly registered client's authorization URL, as Claude would open it. */
async function authorizationUrl(): Promise<string> {
  const registered = (await (
    await fetch(new URL("/register", relay.url), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ client_name: "Claude", redirect_uris: [REDIRECT], token_endpoint_auth_method: "none" }),
    })
  ).json()) as { client_id: string };
  const challenge = createHash("sha256").update(randomBytes(32).toString("base64url")).digest("base64url");
  const url = new URL("/authorize", relay.url);
  const params = { response_type: "code", client_id: registered.client_id, redirect_uri: REDIRECT, code_challenge: challenge, code_challenge_method: "S256", state: "xyz" };
  for (const [key, value] of Object.entries(params)) url.searchParams.set(key, value);
  return url.toString();
}

const phonePage = (): Promise<Page> => newPhonePage(browser);

async function submit(page: Page, secret: string): Promise<void> {
  await page.fill("#owner_secret", secret);
  await page.click('button[value="approve"]');
}

describe.skipIf(!HAS_CHROMIUM)("the consent page in Chromium at phone width (skipped without /usr/bin/chromium: apt-get install chromium)", () => {
  test("shows who asks and what it reaches, fits the screen, and the right secret redirects with a code", async () => {
    const page = await phonePage();
    await page.goto(await authorizationUrl());
    await expect(page.locator("h1").textContent()).resolves.toBe("Allow Claude to use Code Remote?");
    await expect(page.locator("dl").textContent()).resolves.toContain("phone-test-box");
    await expect(page.locator("dl").textContent()).resolves.toContain(REDIRECT);
    expect(await pageWidth(page)).toBeLessThanOrEqual(PHONE.width); // nothing runs off the side of a phone
    fs.mkdirSync(SCREENSHOTS, { recursive: true });
    await page.screenshot({ path: path.join(SCREENSHOTS, "consent-phone.png"), fullPage: true });

    const redirected = page.waitForRequest((request) => request.url().startsWith(REDIRECT));
    await submit(page, OWNER_PASSWORD);
    const target = new URL((await redirected).url());
    expect(target.searchParams.get("code")).toStartWith("crc_");
    expect(target.searchParams.get("state")).toBe("xyz");
    expect(target.searchParams.get("iss")).toBe(relay.url.origin);
    await page.context().close();
  });

  test("wrong secrets are refused, then the approval is cancelled, then the address must wait", async () => {
    const page = await phonePage();
    await page.goto(await authorizationUrl());
    for (let attempt = 1; attempt < 5; attempt++) {
      await submit(page, `wrong guess ${attempt}`);
      await expect(page.locator("[role=alert]").textContent()).resolves.toBe("Wrong owner secret. Try again.");
    }
    await submit(page, "wrong guess 5");
    await expect(page.locator("h1").textContent()).resolves.toBe("Too many wrong attempts");
    await page.screenshot({ path: path.join(SCREENSHOTS, "consent-refused-phone.png") });

    await page.goto(await authorizationUrl()); // a second approval, five more wrong guesses
    for (let attempt = 1; attempt <= 5; attempt++) await submit(page, `again wrong ${attempt}`);
    await page.goto(await authorizationUrl());
    await submit(page, "eleventh wrong guess"); // the last free one
    await expect(page.locator("[role=alert]").textContent()).resolves.toBe("Wrong owner secret. Try again.");
    await submit(page, OWNER_PASSWORD); // right, but too late: this address has to wait first
    await expect(page.locator("h1").textContent()).resolves.toBe("Too many attempts");
    await expect(page.locator(".error").textContent()).resolves.toContain("try again in");
    await page.context().close();
  });

  test("the page source holds no secret", async () => {
    const page = await phonePage();
    await page.goto(await authorizationUrl());
    const html = await page.content();
    for (const secret of [OWNER_PASSWORD, relay.token]) expect(html).not.toContain(secret);
    await page.context().close();
  });
});

// Keep a record of where the screenshots are, for whoever reads the test output.
test.skipIf(!HAS_CHROMIUM)("screenshots are written", () => {
  expect(fs.existsSync(path.join(SCREENSHOTS, "consent-phone.png"))).toBe(true);
  console.log(`consent page screenshots: ${SCREENSHOTS}`);
});
