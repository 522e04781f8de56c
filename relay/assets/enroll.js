// The enrolment page (/enroll/<code>): creates the owner's passkey for the machine that asked (the challenge, user id
// and RP ID are the agent's, carried in the page's data attributes), shows its fingerprint for the owner to compare
// with the machine's, sends what the browser made to the relay (which passes it to the machine), and shows the
// machine's answer.

import { fingerprintOf, fromBase64url, registrationJson, whyNot } from "./webauthn.js";

const section = document.getElementById("enrolment");
const data = section.dataset;
const button = document.getElementById("create");
const shown = document.getElementById("fingerprint-box");
const status = document.getElementById("status");

const say = (text, kind) => {
  status.textContent = text;
  status.className = kind ?? "";
};

async function create() {
  button.disabled = true;
  say("Waiting for your passkey…");
  let credential;
  try {
    credential = await navigator.credentials.create({
      publicKey: {
        challenge: fromBase64url(data.challenge),
        rp: { id: data.rpId, name: "Code Remote" },
        user: { id: fromBase64url(data.userId), name: data.machine, displayName: `owner of ${data.machine}` },
        pubKeyCredParams: [
          { type: "public-key", alg: -7 },
          { type: "public-key", alg: -8 },
          { type: "public-key", alg: -257 },
        ],
        authenticatorSelection: { residentKey: "preferred", userVerification: "required" },
        attestation: "none",
        timeout: 120000,
      },
    });
  } catch (error) {
    button.disabled = false;
    return say(`No passkey was made. ${whyNot(error)}`, "error");
  }
  const spki = credential.response.getPublicKey();
  if (!spki) return say("This browser cannot show the new key's fingerprint, so it cannot be checked. Try another browser.", "error");
  button.hidden = true; // one passkey per enrolment
  const fingerprint = await fingerprintOf(spki);
  document.getElementById("fingerprint").textContent = fingerprint;
  shown.hidden = false;
  say(`Sending the passkey to ${data.machine}…`);
  const response = await fetch(location.pathname, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": data.csrf },
    body: JSON.stringify({ credential: registrationJson(credential), fingerprint }),
    credentials: "same-origin",
  }).catch((error) => ({ ok: false, json: async () => ({ error: `Could not reach the relay: ${error.message}` }) }));
  if (!response.ok) {
    const { error } = await response.json().catch(() => ({}));
    return say(`Not sent: ${error ?? `the relay answered ${response.status}`}`, "error");
  }
  follow();
}

/** Reads the machine's answer until it comes. */
async function follow() {
  say(`Waiting for ${data.machine}: confirm there that it shows the same fingerprint.`);
  for (;;) {
    const response = await fetch(`${location.pathname}/status`, { credentials: "same-origin", cache: "no-store" }).catch(() => undefined);
    const answer = response ? await response.json().catch(() => ({})) : {};
    if (answer.state === "stored") return say(`Stored on ${data.machine}.`, "stored");
    if (answer.state === "refused") return say(notStored(answer.message), "error");
    if (response && response.status === 404) return say("The enrolment link expired.", "error");
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

/** "Not stored: <the machine's words>" (which may say "Not stored" already), as one sentence. */
function notStored(message) {
  const words = (message ?? "the machine refused it").trim();
  const sentence = /^not stored/i.test(words) ? words : `Not stored: ${words}`;
  return /[.!?]$/.test(sentence) ? sentence : `${sentence}.`;
}

button.addEventListener("click", () => void create());
if (data.state === "sent") follow();
