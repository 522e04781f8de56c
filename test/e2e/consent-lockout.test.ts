// What repeated wrong owner secrets on the OAuth consent page lead to, posted as a browser would (following the
// form's rotating cookie): five wrong answers cancel that approval; past ten failures the address has to wait, even
// with the right secret. Its own relay, because the wait applies to every test from this address.

import { expect, test } from "bun:test";
import { answerConsent, newAuthorizationUrl, openConsent } from "../helpers/oauth.ts";
import { useStack } from "../helpers/stack.ts";

const OWNER_PASSWORD = "a long owner passphrase";
const REDIRECT = "http://127.0.0.1:1/callback";

const stack = useStack({ relay: { env: { OWNER_PASSWORD } }, agent: false });

/** A consent page opened by the owner, answered again and again the way a browser resubmits it. */
async function openApproval() {
  const consent = await openConsent(await newAuthorizationUrl(stack.relay.url, REDIRECT));
  return async (secret: string) => {
    const response = await answerConsent(stack.relay.url, consent, { secret });
    const rotated = response.headers.get("set-cookie");
    if (rotated) consent.cookie = rotated.split(";")[0]!;
    return { status: response.status, html: await response.text(), location: response.headers.get("location") };
  };
}

test("five wrong secrets cancel the approval; past ten failures the address must wait, even with the right secret", async () => {
  const answer = await openApproval();
  for (let attempt = 1; attempt < 5; attempt++) {
    const refused = await answer(`wrong guess ${attempt}`);
    expect(refused.status).toBe(401);
    expect(refused.html).toContain("Wrong owner secret. Try again.");
  }
  const cancelled = await answer("wrong guess 5");
  expect(cancelled.status).toBe(401);
  expect(cancelled.html).toContain("Too many wrong attempts");
  expect((await answer(OWNER_PASSWORD)).status).toBe(400); // that approval is gone: the right secret no longer helps

  const second = await openApproval();
  for (let attempt = 1; attempt <= 5; attempt++) await second(`again wrong ${attempt}`);
  const third = await openApproval();
  const lastFree = await third("eleventh wrong guess");
  expect(lastFree.status).toBe(401);
  expect(lastFree.html).toContain("Wrong owner secret. Try again.");
  const tooSoon = await third(OWNER_PASSWORD);
  expect(tooSoon.status).toBe(429);
  expect(tooSoon.html).toContain("Too many attempts");
  expect(tooSoon.html).toContain("try again in");
  expect(tooSoon.location).toBeNull();
});
