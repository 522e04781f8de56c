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

/** A fresh page in a phone-sized, touch-enabled context (its own cookies). */
export async function phonePage(browser: Browser): Promise<Page> {
  const context = await browser.newContext({ viewport: PHONE, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
  return context.newPage();
}

/** The page's full width, which must not exceed the phone's. */
export const pageWidth = async (page: Page) => (await page.evaluate("document.documentElement.scrollWidth")) as number;
