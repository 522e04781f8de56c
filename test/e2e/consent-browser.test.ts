// The OAuth consent page in a real browser (Debian's Chromium driven by playwright-core), at phone width: the right
// owner secret redirects with a code; a wrong one is refused and the page asks again; a client identified by its
// metadata document is named by it, with the site that publishes it. (What repeated wrong secrets lead to is in
// consent-lockout.test.ts.) Screenshots are saved in test-output/ for a person to look at.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import type { Browser, Page } from "playwright-core";
import { closeBrowser, HAS_CHROMIUM, launchChromium, pageWidth, PHONE, phonePage as newPhonePage, SCREENSHOTS, submitForm, textsOf, type Landing } from "../helpers/browser.ts";
import { startDocumentSite, type DocumentSite } from "../helpers/cimd.ts";
import { authorizationUrl as documentAuthorizationUrl, newAuthorizationUrl } from "../helpers/oauth.ts";
import { useStack } from "../helpers/stack.ts";

const OWNER_PASSWORD = "a long owner passphrase";
const REDIRECT = "http://127.0.0.1:1/callback";

let browser: Browser;

const phonePage = (): Promise<Page> => newPhonePage(browser);

async function submit(page: Page, secret: string): Promise<Landing> {
  await page.fill("#owner_secret", secret);
  return submitForm(page, 'button[value="approve"]');
}

describe.skipIf(!HAS_CHROMIUM)("the consent page in Chromium at phone width (skipped without /usr/bin/chromium: apt-get install chromium)", () => {
  // The relay, the agent and the browser start here, not for the whole file: a skipped describe runs none of its hooks.
  // This afterAll is made before the stack's, so the browser closes before the agent and the relay stop.
  let site: DocumentSite;
  afterAll(async () => {
    await closeBrowser(browser);
    await site?.[Symbol.asyncDispose]();
  });
  beforeAll(() => {
    site = startDocumentSite();
  });

  const stack = useStack(() => ({ relay: { env: { OWNER_PASSWORD, CIMD_TEST_CA_FILE: site.caFile } }, agent: { machine: "phone-test-box" } }));

  beforeAll(async () => {
    browser = await launchChromium();
  });

  const authorizationUrl = () => newAuthorizationUrl(stack.relay.url, REDIRECT);

  test("shows who asks and where the answer goes (no machine names), fits the screen, and the right secret redirects with a code", async () => {
    const page = await phonePage();
    await page.goto(await authorizationUrl());
    await expect(page.locator("h1").textContent()).resolves.toBe("Allow Claude to use Code Remote?");
    await expect(page.locator("dd.address").textContent()).resolves.toBe(REDIRECT);
    await expect(page.locator("body").textContent()).resolves.not.toContain("phone-test-box");
    expect(await pageWidth(page)).toBeLessThanOrEqual(PHONE.width); // nothing runs off the side of a phone
    fs.mkdirSync(SCREENSHOTS, { recursive: true });
    await page.screenshot({ path: path.join(SCREENSHOTS, "consent-phone.png"), fullPage: true });

    const redirected = page.waitForRequest((request) => request.url().startsWith(REDIRECT));
    await page.fill("#owner_secret", OWNER_PASSWORD);
    await page.click('button[value="approve"]', { noWaitAfter: true });
    const target = new URL((await redirected).url());
    expect(target.searchParams.get("code")).toStartWith("crc_");
    expect(target.searchParams.get("state")).toBe("xyz");
    expect(target.searchParams.get("iss")).toBe(stack.relay.url.origin);
    await page.context().close();
  });

  test("a wrong secret is refused and the page asks again, saying why", async () => {
    const page = await phonePage();
    await page.goto(await authorizationUrl());
    const refused = await submit(page, "a wrong guess");
    expect(refused.status).toBe(401);
    expect(textsOf(refused.html, "[role=alert]")).toEqual(["Wrong owner secret. Try again."]);
    expect(textsOf(refused.html, "h1")).toEqual(["Allow Claude to use Code Remote?"]);
    expect(refused.html).toContain('id="owner_secret"');
    await page.context().close();
  });

  test("a look-alike redirect address is shown as the browser will reach it, with a warning that fits a phone", async () => {
    const page = await phonePage();
    await page.goto(await newAuthorizationUrl(stack.relay.url, "https://сlaude.ai/api/mcp/auth_callback")); // a Cyrillic "с"
    await expect(page.locator("dd.address").textContent()).resolves.toBe("https://xn--laude-0ye.ai/api/mcp/auth_callback");
    await expect(page.locator("dd.address strong").textContent()).resolves.toBe("xn--laude-0ye.ai");
    await expect(page.locator(".warning.danger").textContent()).resolves.toContain("The browser will really go to xn--laude-0ye.ai.");
    expect(await pageWidth(page)).toBeLessThanOrEqual(PHONE.width);
    await page.screenshot({ path: path.join(SCREENSHOTS, "consent-lookalike-phone.png"), fullPage: true });
    await page.context().close();
  });

  test("a client identified by its metadata document is named by it, with its site in bold, and a localhost answer is warned about", async () => {
    const clientId = site.publish("/oauth/claude-code-client-metadata", { client_name: "Claude Code", redirect_uris: [REDIRECT], token_endpoint_auth_method: "none" });
    const page = await phonePage();
    await page.goto(documentAuthorizationUrl(stack.relay.url, clientId, REDIRECT));
    await expect(page.locator("h1").textContent()).resolves.toBe("Allow Claude Code to use Code Remote?");
    await expect(page.locator(".publisher").textContent()).resolves.toBe(new URL(clientId).host);
    await expect(page.locator(".publisher strong").isVisible()).resolves.toBe(true);
    await expect(page.locator(".warning.danger").textContent()).resolves.toContain("The answer stays on this computer");
    expect(await pageWidth(page)).toBeLessThanOrEqual(PHONE.width);
    await page.screenshot({ path: path.join(SCREENSHOTS, "consent-document-phone.png"), fullPage: true });
    await page.context().close();
  });

  test("the page source holds no secret", async () => {
    const page = await phonePage();
    await page.goto(await authorizationUrl());
    const html = await page.content();
    for (const secret of [OWNER_PASSWORD, stack.relay.token]) expect(html).not.toContain(secret);
    await page.context().close();
  });
});

// Keep a record of where the screenshots are, for whoever reads the test output.
test.skipIf(!HAS_CHROMIUM)("screenshots are written", () => {
  expect(fs.existsSync(path.join(SCREENSHOTS, "consent-phone.png"))).toBe(true);
  console.log(`consent page screenshots: ${SCREENSHOTS}`);
});
