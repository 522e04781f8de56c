// The HTML the relay serves to a person: the OAuth consent page and the page for an error that must not be sent
// back to a client. Plain HTML and inline CSS: no script, no external asset, readable on a phone. Every dynamic
// value is escaped; the headers forbid framing (clickjacking) and loading anything.

import type { ApprovedClient } from "./credentials.ts";

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
  .warning.danger { background: #e5484d33; border: 1px solid #e5484d; }
  dd.address { font-size: 1.05rem; }
  .error { padding: 0.75rem 1rem; border-radius: 0.6rem; background: #e5484d22; margin: 0 0 1rem; }
  label { display: block; font-weight: 600; margin-bottom: 0.35rem; }
  input[type=password] { width: 100%; box-sizing: border-box; font-size: 1rem; padding: 0.7rem; border-radius: 0.5rem; border: 1px solid #8888; }
  .buttons { display: flex; gap: 0.75rem; margin-top: 1rem; }
  button { flex: 1; font-size: 1rem; padding: 0.8rem; border-radius: 0.5rem; border: 1px solid #8888; cursor: pointer; }
  button[value=approve] { background: #2563eb; color: white; border-color: #2563eb; font-weight: 600; }
  .small { font-size: 0.85rem; opacity: 0.75; }
  main.wide { max-width: 60rem; }
  header { display: flex; justify-content: space-between; align-items: baseline; gap: 1rem; flex-wrap: wrap; }
  h2 { font-size: 1.05rem; margin: 1.5rem 0 0.6rem; }
  .cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(17rem, 1fr)); gap: 0.75rem; }
  .card { border: 1px solid #8884; border-radius: 0.6rem; padding: 0.75rem 1rem; overflow-wrap: anywhere; }
  .card h3 { margin: 0 0 0.35rem; font-size: 1rem; }
  .card p { margin: 0.15rem 0; font-size: 0.9rem; }
  .actions { display: flex; gap: 0.5rem; margin-top: 0.6rem; flex-wrap: wrap; }
  a.button, button.link { display: inline-block; padding: 0.45rem 0.75rem; border-radius: 0.45rem; border: 1px solid #8888;
    text-decoration: none; color: inherit; font-size: 0.9rem; background: none; cursor: pointer; }
  ul.list { list-style: none; padding: 0; margin: 0; }
  ul.list li { padding: 0.5rem 0; border-bottom: 1px solid #8883; font-size: 0.9rem; overflow-wrap: anywhere; }
  .tag { display: inline-block; padding: 0 0.4rem; border-radius: 0.3rem; font-size: 0.8rem; background: #8882; }
  .tag.ok { background: #30a46c33; } .tag.error, .tag.timed_out, .tag.cancelled { background: #e5484d33; } .tag.unfinished, .tag.interrupted { background: #f5a62333; }
  nav.filter { display: flex; gap: 0.4rem; flex-wrap: wrap; margin-bottom: 0.5rem; }
  nav.filter a { font-size: 0.85rem; padding: 0.2rem 0.55rem; border-radius: 1rem; border: 1px solid #8886; text-decoration: none; color: inherit; }
  nav.filter a.on { background: #2563eb; color: white; border-color: #2563eb; }
  button.danger { background: #e5484d; color: white; border-color: #e5484d; font-weight: 600; }
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
    "Referrer-Policy": "same-origin", // nothing leaves the relay; same-origin posts keep their Origin (no-referrer would send "null")
    "Content-Security-Policy": `default-src 'none'; style-src 'unsafe-inline'; form-action ${formAction}; frame-ancestors 'none'; base-uri 'none'`,
  };
}

function page(title: string, body: string, options: { wide?: boolean; refreshSeconds?: number } = {}): string {
  const refresh = options.refreshSeconds ? `<meta http-equiv="refresh" content="${options.refreshSeconds}">\n` : "";
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
${refresh}<title>${escapeHtml(title)}</title>
<style>${STYLE}</style>
</head>
<body><main${options.wide ? ' class="wide"' : ""}>
${body}
</main></body>
</html>`;
}

export interface ConsentDetails {
  clientName: string;
  clientId: string;
  /** The client_id of a client identified by its metadata document: the URL its name was read from. */
  documentUrl?: string;
  redirectUri: string;
  requestId: string;
  /** Shown above the form after a wrong owner secret. */
  error?: string;
}

/** The consent page: who asks, where the answer goes, and the owner secret to approve. It names no machine: whoever
 *  opens it has proved nothing yet. */
export function consentPage(details: ConsentDetails, extraHeaders: Record<string, string>, status = 200): Response {
  const target = new URL(details.redirectUri);
  const warnings = [...redirectWarnings(target), ...documentWarnings(details, target)].map((warning) => `<p class="warning danger">${warning}</p>`);
  const body = `
<h1>Allow ${escapeHtml(details.clientName)} to use Code Remote?</h1>
<p class="warning">It will be able to <strong>run any command</strong> and read and write files on every machine
connected to this relay, now and later, as the users those agents run as.</p>
${warnings.join("\n")}
<dl>
  <dt>Application</dt><dd>${applicationHtml(details)}</dd>
  <dt>Answer goes to</dt><dd class="address">${addressHtml(target)}</dd>
</dl>
<p class="small">Approve only if the part in bold is the site of the application you are connecting (claude.ai for Claude).</p>
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

/** Who the application is: a registered one by the name it chose, one identified by a metadata document by the name
 *  that document gives, with the site publishing it in bold (only that site can publish at its URL). */
function applicationHtml(details: ConsentDetails): string {
  const name = escapeHtml(details.clientName);
  if (!details.documentUrl) return `${name} <span class="small">(client ${escapeHtml(details.clientId)}; the name is whatever the application chose to call itself)</span>`;
  const document = new URL(details.documentUrl);
  return `${name} <span class="small">from</span> <span class="publisher">${hostHtml(document)}</span> <span class="small">(named so by its metadata document, ${addressHtml(document)})</span>`;
}

/** The warning the MCP authorization spec asks for: a metadata document cannot stop a program on this computer from
 *  presenting a well-known application's client_id when the answer goes to localhost. */
function documentWarnings(details: ConsentDetails, target: URL): string[] {
  if (!details.documentUrl || !["localhost", "127.0.0.1", "[::1]"].includes(target.hostname)) return [];
  return [
    `<strong>The answer stays on this computer:</strong> it goes to a program on ${escapeHtml(target.host)}, and any program on this computer can use the client ID ${escapeHtml(new URL(details.documentUrl).host)} publishes. Approve only if you just started ${escapeHtml(details.clientName)} here yourself.`,
  ];
}

/** Second-level labels that belong to a registry under a two-letter country code (co.uk, com.au, or.jp, …), so the
 *  registrable domain is the label before them too. A short rule for the common ones, not the Public Suffix List. */
const REGISTRY_SECOND_LEVELS = new Set(["ac", "co", "com", "edu", "go", "gob", "gov", "mil", "ne", "net", "or", "org"]);
/** Hosting suffixes under which every customer gets a name of its own (the best-known private entries of the Public
 *  Suffix List): evil.github.io belongs to whoever made it, not to GitHub. */
const SHARED_HOSTING_SUFFIXES = new Set([
  "appspot.com", "azurewebsites.net", "cloudfront.net", "firebaseapp.com", "fly.dev", "github.io", "gitlab.io", "glitch.me",
  "herokuapp.com", "netlify.app", "ngrok-free.app", "ngrok.io", "onrender.com", "pages.dev", "vercel.app", "web.app", "workers.dev",
]);

/** Splits a host name (as a browser reaches it: an international name in punycode) into what comes before its
 *  registrable domain and the domain itself: "api." and "claude.ai". The domain is the last two labels, or three
 *  under a registry's second level or a shared hosting suffix; an IP address is all domain. */
function splitRegistrableDomain(hostname: string): [before: string, domain: string] {
  const trailingDot = hostname.endsWith(".") ? "." : "";
  const labels = hostname.slice(0, hostname.length - trailingDot.length).split(".");
  if (hostname.startsWith("[") || labels.every((label) => /^\d+$/.test(label))) return ["", hostname];
  const [secondLevel, topLevel] = labels.slice(-2);
  const shared = SHARED_HOSTING_SUFFIXES.has(`${secondLevel}.${topLevel}`) || (topLevel?.length === 2 && REGISTRY_SECOND_LEVELS.has(secondLevel ?? ""));
  const size = Math.min(labels.length, shared ? 3 : 2);
  return [labels.slice(0, -size).map((label) => `${label}.`).join(""), `${labels.slice(-size).join(".")}${trailingDot}`];
}

/** A redirect address as the browser will really reach it: the host as `new URL` resolves it (punycode), its
 *  registrable domain in bold, the rest small. A user name before an "@" is left out here: a warning names it. */
function addressHtml(url: URL): string {
  return `<span class="small">${escapeHtml(url.protocol)}//</span>${hostHtml(url)}<span class="small">${escapeHtml(url.pathname + url.search)}</span>`;
}

/** A URL's host and port as the browser reaches it, its registrable domain in bold. */
function hostHtml(url: URL): string {
  const [before, domain] = splitRegistrableDomain(url.hostname);
  return `${escapeHtml(before)}<strong>${escapeHtml(domain)}</strong>${escapeHtml(url.port ? `:${url.port}` : "")}`;
}

/** Plain warnings about a redirect address that may not be what it seems (HTML, values escaped). */
function redirectWarnings(url: URL): string[] {
  const warnings: string[] = [];
  if (url.hostname.split(".").some((label) => label.startsWith("xn--"))) {
    warnings.push(
      `<strong>Look-alike letters:</strong> this address was written with letters outside plain a-z, which can imitate a name you know (a Cyrillic "с" looks just like a Latin "c"). The browser will really go to <strong>${escapeHtml(url.hostname)}</strong>.`,
    );
  }
  if (url.username || url.password) {
    warnings.push(
      `<strong>Misleading address:</strong> it starts with "${escapeHtml(url.username.slice(0, 60))}@", which is not where it goes. The answer goes to <strong>${escapeHtml(url.host)}</strong>.`,
    );
  }
  return warnings;
}

/** A page for an error that cannot go back to the client (unknown client, unregistered redirect URI, expired
 *  request): the person reads what happened and what to do. */
export function errorPage(status: number, title: string, message: string): Response {
  const body = `<h1>${escapeHtml(title)}</h1>\n<p class="error">${escapeHtml(message)}</p>`;
  return new Response(page(title, body), { status, headers: pageHeaders() });
}

// --- the owner's dashboard ---

const html = (status: number, title: string, body: string, options?: { wide?: boolean; refreshSeconds?: number }) =>
  new Response(page(title, body, options), { status, headers: pageHeaders() });

/** The only thing a visitor without a session sees. */
export function loginPage(error?: string, status = 200): Response {
  return html(
    status,
    "Code Remote",
    `<h1>Code Remote</h1>
${error ? `<p class="error" role="alert">${escapeHtml(error)}</p>` : ""}
<form method="post" action="/login">
  <label for="owner_secret">Owner secret</label>
  <input type="password" id="owner_secret" name="owner_secret" autocomplete="current-password" autofocus>
  <p class="small">The relay's OWNER_PASSWORD, or its AUTH_TOKEN when no password is set.</p>
  <div class="buttons"><button type="submit" name="decision" value="approve">Sign in</button></div>
</form>`,
  );
}

export interface DashboardView {
  csrf: string;
  /** The machine the recent calls are filtered by, if any. */
  filter?: string;
  machines: { name: string; version: string; os: string; roots: string[]; connectedSince: string; lastHeartbeat: string; credential: string; hasToken: boolean }[];
  offlineTokens: { machine: string; created_at: string; last_used_at: string | null }[];
  running: { machine: string; command_id: string; command: string; started_at: string; duration_ms: number; background: boolean }[];
  calls: { started_at: string; machine: string | null; tool: string; outcome: string; duration_ms: number | null; exit_code: number | null; client: string | null; arguments: Record<string, unknown> }[];
  events: { at: string; kind: string; machine: string | null; detail: Record<string, unknown> }[];
  /** The OAuth clients the owner approved. */
  clients: ApprovedClient[];
}

const when = (iso: string) => escapeHtml(iso.replace("T", " ").slice(0, 19));
const seconds = (ms: number | null) => (ms === null ? "" : `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`);
const confirmLink = (query: Record<string, string>, label: string) =>
  `<a class="button" href="/confirm?${escapeHtml(new URLSearchParams(query).toString())}">${label}</a>`;

function machineCards(view: DashboardView): string {
  if (view.machines.length === 0) return `<p class="small">No machine is connected. Start an agent: see the README.</p>`;
  return `<div class="cards">${view.machines
    .map(
      (m) => `<div class="card">
  <h3>${escapeHtml(m.name)}</h3>
  <p>agent ${escapeHtml(m.version)} on ${escapeHtml(m.os)}</p>
  <p class="small">roots: ${m.roots.map(escapeHtml).join(", ")}</p>
  <p class="small">connected since ${when(m.connectedSince)}, last heartbeat ${when(m.lastHeartbeat)}, with ${escapeHtml(m.credential)}</p>
  <div class="actions">${confirmLink({ action: "disconnect", machine: m.name }, "Disconnect")}${m.hasToken ? confirmLink({ action: "revoke", machine: m.name }, "Revoke token") : ""}</div>
</div>`,
    )
    .join("\n")}</div>`;
}

function offlineTokens(view: DashboardView): string {
  if (view.offlineTokens.length === 0) return "";
  const rows = view.offlineTokens.map((t) => `<li><strong>${escapeHtml(t.machine)}</strong> <span class="small">token made ${when(t.created_at)}, last used ${t.last_used_at ? when(t.last_used_at) : "never"}</span> ${confirmLink({ action: "revoke", machine: t.machine }, "Revoke token")}</li>`);
  return `<h2>Agent tokens of machines not connected</h2><ul class="list">${rows.join("")}</ul>`;
}

const clientName = (client: Pick<ApprovedClient, "name">) => escapeHtml(client.name ?? "An unnamed application");
const hostsOf = (client: Pick<ApprovedClient, "redirect_hosts">) => client.redirect_hosts.map(escapeHtml).join(", ");
const whenMs = (ms: number) => when(new Date(ms).toISOString());

function approvedClients(view: DashboardView): string {
  if (view.clients.length === 0) return `<p class="small">No application is approved. Claude.ai, ChatGPT and other OAuth clients appear here once you approve them.</p>`;
  const rows = view.clients.map(
    (c) => `<li><strong>${clientName(c)}</strong> <span class="small">answers go to ${hostsOf(c)}; approved ${whenMs(c.approved_at)}, last used ${whenMs(c.last_used_at)} (client ${escapeHtml(c.client_id)})</span>
  <div class="actions">${confirmLink({ action: "revoke-client", client_id: c.client_id }, "Revoke access")}</div></li>`,
  );
  return `<ul class="list clients">${rows.join("")}</ul>`;
}

function runningCommands(view: DashboardView): string {
  if (view.running.length === 0) return `<p class="small">Nothing running.</p>`;
  const rows = view.running.map(
    (c) => `<li><span class="tag">${escapeHtml(c.machine)}</span> <code>${escapeHtml(c.command.slice(0, 120))}</code> <span class="small">${c.background ? "background, " : ""}running ${seconds(c.duration_ms)} (${escapeHtml(c.command_id)})</span></li>`,
  );
  return `<ul class="list">${rows.join("")}</ul>`;
}

function recentCalls(view: DashboardView): string {
  const names = [...new Set([...view.machines.map((m) => m.name), ...(view.filter ? [view.filter] : [])])].sort();
  const filter = `<nav class="filter"><a href="/"${view.filter ? "" : ' class="on"'}>all</a>${names
    .map((n) => `<a href="/?machine=${encodeURIComponent(n)}"${view.filter === n ? ' class="on"' : ""}>${escapeHtml(n)}</a>`)
    .join("")}</nav>`;
  if (view.calls.length === 0) return `${filter}<p class="small">No tool calls yet.</p>`;
  const rows = view.calls.map((c) => {
    const args = escapeHtml(JSON.stringify(c.arguments).slice(0, 140));
    const exit = c.exit_code !== null ? ` exit ${c.exit_code}` : "";
    return `<li><span class="small">${when(c.started_at)}</span> <span class="tag">${escapeHtml(c.machine ?? "-")}</span> <strong>${escapeHtml(c.tool)}</strong> <span class="tag ${escapeHtml(c.outcome)}">${escapeHtml(c.outcome)}${exit}</span> <span class="small">${seconds(c.duration_ms)} · ${escapeHtml(c.client ?? "-")}</span><br><code class="small">${args}</code></li>`;
  });
  return `${filter}<ul class="list">${rows.join("")}</ul>`;
}

function recentEvents(view: DashboardView): string {
  if (view.events.length === 0) return "";
  const rows = view.events.map((e) => `<li><span class="small">${when(e.at)}</span> <strong>${escapeHtml(e.kind)}</strong> ${e.machine ? `<span class="tag">${escapeHtml(e.machine)}</span> ` : ""}<span class="small">${escapeHtml(JSON.stringify(e.detail).slice(0, 160))}</span></li>`);
  return `<h2>Recent events</h2><ul class="list">${rows.join("")}</ul>`;
}

/** The dashboard: machines, what runs, what was called. Refreshes itself every 30 s. */
export function dashboardPage(view: DashboardView): Response {
  const body = `<header><h1>Code Remote</h1>
<form method="post" action="/logout"><input type="hidden" name="csrf" value="${escapeHtml(view.csrf)}"><button class="link" type="submit">Sign out</button></form></header>
<h2>Machines (${view.machines.length})</h2>
${machineCards(view)}
${offlineTokens(view)}
<h2>Applications (${view.clients.length})</h2>
${approvedClients(view)}
<h2>Running commands</h2>
${runningCommands(view)}
<h2>Recent tool calls${view.filter ? ` on ${escapeHtml(view.filter)}` : ""}</h2>
${recentCalls(view)}
${recentEvents(view)}`;
  return html(200, "Code Remote", body, { wide: true, refreshSeconds: 30 });
}

/** A dashboard action to confirm: on a machine, or on an approved OAuth client. */
export type Confirmation =
  | { action: "disconnect" | "revoke"; machine: string; holdMinutes: number }
  | { action: "revoke-client"; client: Pick<ApprovedClient, "client_id" | "name" | "redirect_hosts"> };

/** What a confirmation asks, the form fields that carry the answer, and its button. */
function confirmationText(details: Confirmation): { question: string; fields: Record<string, string>; button: string } {
  if (details.action === "revoke-client") {
    const { client } = details;
    return {
      question: `Revoke the access of <strong>${clientName(client)}</strong> (answers go to ${hostsOf(client)})? Its tokens stop working at once and its open sessions end; to come back it must ask you to approve it again.`,
      fields: { action: details.action, client_id: client.client_id },
      button: "Revoke access",
    };
  }
  const machine = escapeHtml(details.machine);
  const question =
    details.action === "disconnect"
      ? `Disconnect <strong>${machine}</strong>? Its running calls fail, and it is turned away for ${details.holdMinutes} minutes before it may connect again.`
      : `Revoke the agent token of <strong>${machine}</strong>? The agent is cut off at once and cannot connect with that token again; make a new one with agent-token create.`;
  return { question, fields: { action: details.action, machine: details.machine }, button: details.action === "disconnect" ? "Disconnect" : "Revoke token" };
}

/** "Are you sure?" for a dashboard action; the answer is a form post with the session's token. */
export function confirmPage(details: Confirmation & { csrf: string }): Response {
  const { question, fields, button } = confirmationText(details);
  const hidden = Object.entries({ csrf: details.csrf, ...fields }).map(([name, value]) => `<input type="hidden" name="${name}" value="${escapeHtml(value)}">`);
  return html(
    200,
    "Confirm",
    `<h1>Are you sure?</h1>
<p class="warning">${question}</p>
<form method="post" action="/actions">
  ${hidden.join("\n  ")}
  <div class="buttons"><a class="button" href="/">Cancel</a><button class="danger" type="submit">${button}</button></div>
</form>`,
  );
}
