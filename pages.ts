// The HTML the relay serves to a person: the OAuth consent page and the page for an error that must not be sent
// back to a client. Plain HTML and inline CSS: no script, no external asset, readable on a phone. Every dynamic
// value is escaped; the headers forbid framing (clickjacking) and loading anything.

const STYLE = `
  :root { color-scheme: light dark; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; }
  body { margin: 0; padding: 1.25rem; display: flex; justify-content: center; line-height: 1.45; }
  main { width: 100%; max-width: 28rem; }
  h1 { font-size: 1.35rem; margin: 0 0 1rem; }
  dl { margin: 0 0 1rem; padding: 0.75rem 1rem; border: 1px solid #8884; border-radius: 0.6rem; }
  dt { font-size: 0.8rem; opacity: 0.7; margin-top: 0.5rem; }
  dt:first-child { margin-top: 0; }
  dd { margin: 0; overflow-wrap: anywhere; }
  .warning { padding: 0.75rem 1rem; border-radius: 0.6rem; background: #f5a62322; margin: 0 0 1rem; }
  .error { padding: 0.75rem 1rem; border-radius: 0.6rem; background: #e5484d22; margin: 0 0 1rem; }
  label { display: block; font-weight: 600; margin-bottom: 0.35rem; }
  input[type=password] { width: 100%; box-sizing: border-box; font-size: 1rem; padding: 0.7rem; border-radius: 0.5rem; border: 1px solid #8888; }
  .buttons { display: flex; gap: 0.75rem; margin-top: 1rem; }
  button { flex: 1; font-size: 1rem; padding: 0.8rem; border-radius: 0.5rem; border: 1px solid #8888; cursor: pointer; }
  button[value=approve] { background: #2563eb; color: white; border-color: #2563eb; font-weight: 600; }
  .small { font-size: 0.85rem; opacity: 0.75; }
`;

/** Escapes text for HTML content and attribute values. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[ch]!);
}

/** Headers for every page: no caching, no framing, nothing loaded but the inline style, forms only to us (and to
 *  `formTarget`, where the consent form's answer redirects: Chromium applies form-action to that redirect). */
function pageHeaders(formTarget?: string): Record<string, string> {
  const formAction = ["'self'", formTarget].filter(Boolean).join(" ");
  return {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": `default-src 'none'; style-src 'unsafe-inline'; form-action ${formAction}; frame-ancestors 'none'; base-uri 'none'`,
  };
}

function page(title: string, body: string): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>${escapeHtml(title)}</title>
<style>${STYLE}</style>
</head>
<body><main>
${body}
</main></body>
</html>`;
}

export interface ConsentDetails {
  clientName: string;
  clientId: string;
  redirectUri: string;
  machines: string[];
  requestId: string;
  /** Shown above the form after a wrong owner secret. */
  error?: string;
}

/** The consent page: who asks, where the answer goes, what it will reach, and the owner secret to approve. */
export function consentPage(details: ConsentDetails, extraHeaders: Record<string, string>, status = 200): Response {
  const machines = details.machines.length
    ? details.machines.map(escapeHtml).join(", ")
    : "none connected right now";
  const body = `
<h1>Allow ${escapeHtml(details.clientName)} to use Code Remote?</h1>
<p class="warning">It will be able to <strong>run any command</strong> and read and write files on every machine
connected to this relay, now and later, as the users those agents run as.</p>
<dl>
  <dt>Application</dt><dd>${escapeHtml(details.clientName)} <span class="small">(client ${escapeHtml(details.clientId)})</span></dd>
  <dt>Answer goes to</dt><dd>${escapeHtml(details.redirectUri)}</dd>
  <dt>Machines</dt><dd>${machines}</dd>
</dl>
${details.error ? `<p class="error" role="alert">${escapeHtml(details.error)}</p>` : ""}
<form method="post" action="/authorize">
  <input type="hidden" name="request_id" value="${escapeHtml(details.requestId)}">
  <label for="owner_secret">Owner secret</label>
  <input type="password" id="owner_secret" name="owner_secret" autocomplete="current-password" autofocus>
  <p class="small">The relay's OWNER_PASSWORD, or its AUTH_TOKEN when no password is set.</p>
  <div class="buttons">
    <button type="submit" name="decision" value="deny">Deny</button>
    <button type="submit" name="decision" value="approve">Approve</button>
  </div>
</form>`;
  return new Response(page("Allow access to Code Remote?", body), {
    status,
    headers: { ...pageHeaders(new URL(details.redirectUri).origin), ...extraHeaders },
  });
}

/** A page for an error that cannot go back to the client (unknown client, unregistered redirect URI, expired
 *  request): the person reads what happened and what to do. */
export function errorPage(status: number, title: string, message: string): Response {
  const body = `<h1>${escapeHtml(title)}</h1>\n<p class="error">${escapeHtml(message)}</p>`;
  return new Response(page(title, body), { status, headers: pageHeaders() });
}
