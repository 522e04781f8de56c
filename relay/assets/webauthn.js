// What the relay's pages share for passkeys: base64url, the JSON forms of what navigator.credentials returns (as
// protocol.ts's PasskeyRegistration and PasskeyAssertion take them), and the fingerprint of a public key, computed
// exactly as the agent does, so the owner can compare the two. Served as is at /assets/webauthn.js (CSP: 'self').

export function toBase64url(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

export function fromBase64url(text) {
  const base64 = text.replaceAll("-", "+").replaceAll("_", "/");
  const binary = atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4));
  return Uint8Array.from(binary, (ch) => ch.charCodeAt(0));
}

/** "3f9c 0a1b 2c3d 4e5f 6a7b 8c9d 0e1f 2a3b": the first 16 bytes of the SHA-256 of the key in SubjectPublicKeyInfo
 *  DER, as 8 groups of 4 lowercase hex digits. */
export async function fingerprintOf(spki) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", spki));
  const hex = Array.from(digest.slice(0, 16), (byte) => byte.toString(16).padStart(2, "0")).join("");
  return hex.match(/.{4}/g).join(" ");
}

const common = (credential) => {
  const json = { id: credential.id, rawId: toBase64url(credential.rawId), type: credential.type, clientExtensionResults: credential.getClientExtensionResults() };
  if (credential.authenticatorAttachment) json.authenticatorAttachment = credential.authenticatorAttachment;
  return json;
};

/** RegistrationResponseJSON of what navigator.credentials.create returned. */
export function registrationJson(credential) {
  const response = credential.response;
  const json = { ...common(credential), response: { clientDataJSON: toBase64url(response.clientDataJSON), attestationObject: toBase64url(response.attestationObject) } };
  if (response.getTransports) json.response.transports = response.getTransports();
  if (response.getPublicKeyAlgorithm) json.response.publicKeyAlgorithm = response.getPublicKeyAlgorithm();
  const publicKey = response.getPublicKey ? response.getPublicKey() : null;
  if (publicKey) json.response.publicKey = toBase64url(publicKey);
  if (response.getAuthenticatorData) json.response.authenticatorData = toBase64url(response.getAuthenticatorData());
  return json;
}

/** AuthenticationResponseJSON of what navigator.credentials.get returned. */
export function assertionJson(credential) {
  const response = credential.response;
  const json = {
    ...common(credential),
    response: { clientDataJSON: toBase64url(response.clientDataJSON), authenticatorData: toBase64url(response.authenticatorData), signature: toBase64url(response.signature) },
  };
  if (response.userHandle) json.response.userHandle = toBase64url(response.userHandle);
  return json;
}

/** A browser's refusal in the owner's words. */
export function whyNot(error) {
  if (error && error.name === "NotAllowedError") return "The passkey was not used: it was cancelled, timed out, or this device has none for this site.";
  if (error && error.name === "InvalidStateError") return "This device already holds a passkey for this machine.";
  if (error && error.name === "SecurityError") return "The browser refused: this page's address does not match the passkey's site.";
  return error && error.message ? error.message : String(error);
}
