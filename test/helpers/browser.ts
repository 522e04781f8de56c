// A real browser for page tests: Debian's Chromium driven by playwright-core (browser downloads do not work here).

import * as fs from "node:fs";
import * as path from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { ROOT } from "./processes.ts";

export const CHROMIUM = "/usr/bin/chromium";
/** Whether the browser is installed (apt-get install chromium); page tests are skipped, saying so, without it. */
export const HAS_CHROMIUM = fs.existsSync(CHROMIUM);
/** A phone's screen, for pages that must work there. */
export const PHONE = { width: 390, height: 844 };
/** Where screenshots go, for a person to look at (not committed). */
export const SCREENSHOTS = path.join(ROOT, "test-output");

export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    // As the machine's notes say: no sandbox as root, and no background traffic to a network that is closed.
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

/** How long one browser step may take before it fails, naming the step (well inside the tests' own 30 s). */
const STEP_TIMEOUT_MS = 10_000;

/** A fresh page in a phone-sized, touch-enabled context (its own cookies). */
export async function phonePage(browser: Browser): Promise<Page> {
  const context = await browser.newContext({ viewport: PHONE, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  return context.newPage();
}

/** Closes the browser, giving up after a few seconds: a browser that will not close must not hang the test run. */
export async function closeBrowser(browser: Browser | undefined): Promise<void> {
  await Promise.race([browser?.close(), Bun.sleep(5_000)]);
}

/** The document a submitted form led to, after any redirects, as the relay sent it. */
export interface Landing {
  status: number;
  url: URL;
  html: string;
}

/**
 * Clicks a form's submit button and returns the document the browser lands on, read from the network.
 *
 * Why not read the page's DOM afterwards: with Debian's Chromium 156 and playwright-core 1.64, about one form post in
 * ten leaves Playwright without the new document's execution context, and every later DOM query on that page waits
 * forever (the relay's response is complete and Chromium fires load; tcpdump and page events show it). It never
 * happens after page.goto, so a test that needs the DOM after a post navigates afresh.
 */
export async function submitForm(page: Page, button: string): Promise<Landing> {
  const landed = page.waitForResponse((response) => {
    const request = response.request();
    const redirect = response.status() >= 300 && response.status() < 400;
    return request.isNavigationRequest() && request.frame() === page.mainFrame() && !redirect;
  });
  await page.click(button, { noWaitAfter: true });
  const response = await landed;
  return { status: response.status(), url: new URL(response.url()), html: await response.text() };
}

/** The text of each element that `selector` matches in `html`, parsed without a browser (Bun's HTMLRewriter). */
export function textsOf(html: string, selector: string): string[] {
  const texts: string[] = [];
  const collect = new HTMLRewriter().on(selector, {
    element: () => void texts.push(""),
    text: (chunk) => void (texts[texts.length - 1] += chunk.text),
  });
  collect.transform(html);
  return texts.map(decodeEntities);
}

const ENTITIES: Record<string, string> = { "&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&#39;": "'" };
const decodeEntities = (text: string) => text.replace(/&(?:amp|lt|gt|quot|#39);/g, (entity) => ENTITIES[entity]!);

/** The page's full width, which must not exceed the phone's. */
export const pageWidth = async (page: Page) => (await page.evaluate("document.documentElement.scrollWidth")) as number;
