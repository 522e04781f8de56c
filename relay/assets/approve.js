// The dashboard's approval cards for a machine that wants the owner's passkey: each approve button carries the
// statement its scope signs (rendered by the relay from what the agent asked). On a click the browser signs the
// statement's SHA-256 with the owner's passkey, and the page posts the decision with that assertion; the agent checks
// it and runs the call only then. Deny stays a plain form.

import { assertionJson, fromBase64url, whyNot } from "./webauthn.js";

async function approve(form) {
  const card = form.closest("article.approval");
  const status = card.querySelector(".passkey-status");
  const buttons = card.querySelectorAll("button");
  const say = (text) => {
    status.textContent = text;
    status.hidden = false;
  };
  buttons.forEach((button) => (button.disabled = true));
  try {
    const challenge = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(form.dataset.statement));
    const allowCredentials = card.dataset.credentials.split(" ").filter(Boolean).map((id) => ({ type: "public-key", id: fromBase64url(id) }));
    say("Waiting for your passkey…");
    const credential = await navigator.credentials.get({ publicKey: { challenge, rpId: card.dataset.rpId, allowCredentials, userVerification: "required", timeout: 120000 } });
    const body = { decision: "approve", assertion: assertionJson(credential) };
    const forSeconds = form.elements.namedItem("for_seconds");
    if (forSeconds) body.for_seconds = Number(forSeconds.value);
    say("Sending your approval…");
    const response = await fetch(form.action, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": form.elements.namedItem("csrf").value },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
    if (!response.ok) {
      const { error } = await response.json().catch(() => ({}));
      throw new Error(`Not approved: ${error ?? `the relay answered ${response.status}`}`);
    }
    location.reload();
  } catch (error) {
    say(whyNot(error));
    buttons.forEach((button) => (button.disabled = false));
  }
}

for (const form of document.querySelectorAll("article.approval form[data-statement]")) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    void approve(form);
  });
}
