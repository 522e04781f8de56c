// The HTML the relay serves to a person: the OAuth consent page and the page for an error that must not be sent
// back to a client. Plain HTML and inline CSS, readable on a phone; no script, but on the two pages that need the
// browser's passkeys (an enrolment, and approval cards of a machine that wants the owner's passkey), which load the
// relay's own scripts from /assets/ (assets/*.js) and nothing inline. Every dynamic value is escaped; the headers
// forbid framing (clickjacking) and loading anything else.

import * as fs from "node:fs";
import * as path from "node:path";
import type { ApprovalView } from "./approvals.ts";
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
  section.approvals { margin-bottom: 1.5rem; }
  section.approvals h2 { margin-top: 0.5rem; }
  .approval { border: 2px solid #f5a623; border-radius: 0.6rem; padding: 0.75rem 1rem; margin: 0 0 0.9rem; overflow-wrap: anywhere; scroll-margin-top: 0.75rem; }
  .approval:target { border-color: #2563eb; box-shadow: 0 0 0 3px #2563eb55; }
  .approval h3 { margin: 0 0 0.3rem; font-size: 1.05rem; }
  .approval .summary { margin: 0 0 0.5rem; font-weight: 600; }
  .approval dl { border: none; padding: 0; margin: 0 0 0.5rem; }
  .approval dd code { font-size: 0.9rem; }
  .approval pre { margin: 0.2rem 0 0; padding: 0.5rem 0.6rem; border-radius: 0.4rem; border: 1px solid #8884; background: #8881;
    font-size: 0.85rem; line-height: 1.35; white-space: pre-wrap; overflow-wrap: anywhere; max-height: 20rem; overflow: auto; }
  pre.diff .add { background: #30a46c33; } pre.diff .del { background: #e5484d33; } pre.diff .hunk, pre.diff .file { opacity: 0.7; }
  .ctl { border: 1px solid #e5484d; border-radius: 0.2rem; padding: 0 0.1rem; font-size: 0.75rem; background: #e5484d22; }
  .approval form { margin: 0; }
  .approval button { font-size: 0.95rem; padding: 0.65rem 0.5rem; width: 100%; }
  .approval button.approve { background: #2563eb; color: white; border-color: #2563eb; font-weight: 600; }
  .approval .for { display: grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 0.4rem; }
  .approval .deny { margin-top: 0.75rem; }
  .approval .deny label { font-weight: normal; font-size: 0.85rem; }
  .approval input[type=text] { width: 100%; box-sizing: border-box; font-size: 1rem; padding: 0.55rem; border-radius: 0.5rem; border: 1px solid #8888; margin-bottom: 0.4rem; }
  .approval p.small { margin: 0.6rem 0 0.3rem; }
  .approval .passkey { margin: 0 0 0.5rem; font-weight: 600; }
  .approval .passkey-status { padding: 0.5rem 0.75rem; border-radius: 0.5rem; background: #8882; margin: 0.5rem 0; }
  .approval details { margin: 0 0 0.5rem; font-size: 0.85rem; }
  .enrolment button#create { width: 100%; background: #2563eb; color: white; border-color: #2563eb; font-weight: 600; }
  .fingerprint { font-family: ui-monospace, "SF Mono", Menlo, monospace; font-size: 1.5rem; font-weight: 700; line-height: 1.35;
    word-spacing: 0.25ch; max-width: 20ch; padding: 0.75rem 1rem; border-radius: 0.6rem; border: 2px solid #2563eb; margin: 0.5rem 0; }
  #status { padding: 0.75rem 1rem; border-radius: 0.6rem; background: #8882; margin: 1rem 0; }
  #status:empty { display: none; }
  #status.stored { background: #30a46c33; font-weight: 600; } #status.error { background: #e5484d22; }
`;

/** Escapes text for HTML content and attribute values. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[ch]!);
}

/** Characters that hide or disguise text: controls (but newline and tab), format characters (bidirectional
 *  overrides, zero-width spaces, soft hyphens), spaces other than the plain one (a shell does not split words on a
 *  no-break space), line and paragraph separators, fillers and variation selectors, lone surrogates. */
const DISGUISING = /[\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}\p{Zs}\u034f\u115f\u1160\u3164\uffa0\ufe00-\ufe0f]/gu;
const isDisguising = (ch: string) => ch !== "\n" && ch !== "\t" && ch !== " ";

/** Hostile text, escaped for HTML, with every character that could hide or disguise part of it shown as a marked
 *  code point instead (⟨U+202E⟩), so what the owner reads is what would run. */
function visible(text: string): string {
  let html = "";
  let last = 0;
  for (const match of text.matchAll(DISGUISING)) {
    const ch = match[0];
    if (!isDisguising(ch)) continue;
    const code = `U+${ch.codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0")}`;
    html += `${escapeHtml(text.slice(last, match.index))}<span class="ctl" title="an invisible or unusual character">⟨${code}⟩</span>`;
    last = match.index + ch.length;
  }
  return html + escapeHtml(text.slice(last));
}

/** How many characters `visible` marks in the texts. */
const disguisingCount = (...texts: (string | undefined)[]) => texts.reduce((n, t) => n + [...(t ?? "").matchAll(DISGUISING)].filter((m) => isDisguising(m[0])).length, 0);

/** Headers for every page: no caching, no framing, nothing loaded but the inline style, forms only to us (and to
 *  `formTarget`, where the consent form's answer redirects: Chromium applies form-action to that redirect). A page
 *  with `scripts` may load the relay's own scripts and fetch from it, and nothing else (no inline script). */
function pageHeaders(formTarget?: string, scripts = false): Record<string, string> {
  const formAction = ["'self'", formTarget].filter(Boolean).join(" ");
  const scriptSources = scripts ? "script-src 'self'; connect-src 'self'; " : "";
  return {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin", // nothing leaves the relay; same-origin posts keep their Origin (no-referrer would send "null")
    "Content-Security-Policy": `default-src 'none'; ${scriptSources}style-src 'unsafe-inline'; form-action ${formAction}; frame-ancestors 'none'; base-uri 'none'`,
  };
}

interface PageOptions {
  wide?: boolean;
  refreshSeconds?: number;
  /** Names of the relay's scripts (ASSETS) the page loads, as modules. */
  scripts?: string[];
}

function page(title: string, body: string, options: PageOptions = {}): string {
  const refresh = options.refreshSeconds ? `<meta http-equiv="refresh" content="${options.refreshSeconds}">\n` : "";
  const scripts = (options.scripts ?? []).map((name) => `<script type="module" src="/assets/${escapeHtml(name)}"></script>\n`).join("");
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
${refresh}${scripts}<title>${escapeHtml(title)}</title>
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

const html = (status: number, title: string, body: string, options?: PageOptions) =>
  new Response(page(title, body, options), { status, headers: pageHeaders(undefined, (options?.scripts ?? []).length > 0) });

/** The only thing a visitor without a session sees. `next` is the relay's own page to go on to once signed in. */
export function loginPage(error?: string, status = 200, next?: string): Response {
  return html(
    status,
    "Code Remote",
    `<h1>Code Remote</h1>
${error ? `<p class="error" role="alert">${escapeHtml(error)}</p>` : ""}
<form method="post" action="/login">
  ${next ? `<input type="hidden" name="next" value="${escapeHtml(next)}">` : ""}
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
  /** Calls waiting for the owner's approval, oldest first. */
  approvals: ApprovalView[];
  /** The time the page shows "time left" from (default: now). */
  now?: number;
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

const clientName = (client: Pick<ApprovedClient, "name">) => visible(client.name ?? "An unnamed application");
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
    (c) => `<li><span class="tag">${escapeHtml(c.machine)}</span> <code>${visible(c.command.slice(0, 120))}</code> <span class="small">${c.background ? "background, " : ""}running ${seconds(c.duration_ms)} (${escapeHtml(c.command_id)})</span></li>`,
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
    const args = visible(JSON.stringify(c.arguments).slice(0, 140));
    const exit = c.exit_code !== null ? ` exit ${c.exit_code}` : "";
    return `<li><span class="small">${when(c.started_at)}</span> <span class="tag">${escapeHtml(c.machine ?? "-")}</span> <strong>${escapeHtml(c.tool)}</strong> <span class="tag ${escapeHtml(c.outcome)}">${escapeHtml(c.outcome)}${exit}</span> <span class="small">${seconds(c.duration_ms)} · ${escapeHtml(c.client ?? "-")}</span><br><code class="small">${args}</code></li>`;
  });
  return `${filter}<ul class="list">${rows.join("")}</ul>`;
}

function recentEvents(view: DashboardView): string {
  if (view.events.length === 0) return "";
  const rows = view.events.map((e) => `<li><span class="small">${when(e.at)}</span> <strong>${escapeHtml(e.kind)}</strong> ${e.machine ? `<span class="tag">${escapeHtml(e.machine)}</span> ` : ""}<span class="small">${visible(JSON.stringify(e.detail).slice(0, 160))}</span></li>`);
  return `<h2>Recent events</h2><ul class="list">${rows.join("")}</ul>`;
}

// --- calls waiting for the owner's approval ---

/** How often the dashboard reloads itself while no call waits, so a new question shows up without a tap. */
export const DASHBOARD_REFRESH_S = 5;

/** A unified diff, each added or removed line marked for colour. */
function diffHtml(diff: string): string {
  return diff
    .split("\n")
    .map((line) => {
      const kind = line.startsWith("+++") || line.startsWith("---") ? "file" : line.startsWith("@@") ? "hunk" : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : "";
      return kind ? `<span class="${kind}">${visible(line)}</span>` : visible(line);
    })
    .join("\n");
}

/** "expires 14:03:10 UTC, in 9 min" (with the date when it is not today's). */
export function expiryText(expiresAt: string, now: number): string {
  const at = new Date(expiresAt);
  if (Number.isNaN(at.getTime())) return `expires ${expiresAt}`;
  const iso = at.toISOString();
  const day = iso.slice(0, 10) === new Date(now).toISOString().slice(0, 10) ? "" : `${iso.slice(0, 10)} `;
  const minutes = Math.round((at.getTime() - now) / 60_000);
  const hours = `in ${Math.floor(minutes / 60)} h${minutes % 60 ? ` ${minutes % 60} min` : ""}`;
  const left = at.getTime() - now < 60_000 ? "in less than a minute" : minutes < 90 ? `in ${minutes} min` : hours;
  return `expires ${day}${iso.slice(11, 19)} UTC, ${left}`;
}

/** The lengths an owner may approve "the same call on this machine" for, from the dashboard. */
const APPROVE_FOR: [seconds: number, label: string][] = [
  [300, "5 min"],
  [3600, "1 h"],
  [28800, "8 h"],
];

/** What "the same call" means for this approval, in the owner's words (HTML). */
function sameCall(a: ApprovalView): string {
  if (a.tool === "run_shell_command") return "the same command in the same directory with the same variables";
  if (a.tool === "send_command_input") return "the same input to the same running command";
  if (a.path !== undefined) return `${visible(a.tool)} on the same file`;
  return `${visible(a.tool)} with the same arguments`;
}

/** Who asked, in the owner's words: an approved application by its name (which it chose itself) and client id. */
function askedBy(client: string, clients: DashboardView["clients"]): string {
  if (client === "owner") return "the owner's token (AUTH_TOKEN)";
  const known = clients.find((c) => c.client_id === client);
  return known ? `${clientName(known)} <span class="small">(client ${visible(client)})</span>` : visible(client);
}

function approvalCard(a: ApprovalView, view: DashboardView, now: number): string {
  const { csrf } = view;
  const action = `/approvals/${encodeURIComponent(a.id)}`;
  const { passkey } = a;
  // With a passkey, each approve form carries the statement its scope signs, and the page's script (approve.js) asks
  // the browser for the assertion and posts it; without one, the forms post by themselves.
  const statementOf = (scope: keyof NonNullable<ApprovalView["passkey"]>["statements"]) =>
    passkey ? ` data-statement="${escapeHtml(passkey.statements[scope])}"` : "";
  const form = (fields: Record<string, string>, inner: string, cls = "", attributes = "") =>
    `<form method="post" action="${escapeHtml(action)}"${cls ? ` class="${cls}"` : ""}${attributes}>${Object.entries({ csrf, ...fields })
      .map(([name, value]) => `<input type="hidden" name="${name}" value="${escapeHtml(value)}">`)
      .join("")}${inner}</form>`;
  const input = a.tool === "send_command_input";
  const lines = a.command?.split("\n").length ?? 0;
  const size = a.command && (lines > 1 || a.command.length > 300) ? ` <span class="small">(${lines} line${lines === 1 ? "" : "s"}, ${a.command.length} characters)</span>` : "";
  const hidden = disguisingCount(a.shell, a.command, a.working_dir, a.stdin, a.path, a.diff, ...(a.env_names ?? []));
  const details = [
    // Which program reads the command comes first: text that reads as shell may be Python to another interpreter.
    a.shell !== undefined && `<dt>Run by</dt><dd><code>${visible(a.shell)}</code> <strong>(not the machine's usual shell)</strong></dd>`,
    a.command !== undefined && `<dt>${input ? "Input it would send" : "Command"}${size}</dt><dd><pre class="command">${visible(a.command)}</pre></dd>`,
    (a.background || a.timeout_s !== undefined) &&
      `<dt>How long</dt><dd>${a.background ? "in the background, with no time limit unless one is set" : ""}${a.background && a.timeout_s !== undefined ? "; " : ""}${a.timeout_s !== undefined ? `stopped after ${a.timeout_s} s` : ""}</dd>`,
    a.working_dir !== undefined && `<dt>Working directory</dt><dd><code>${visible(a.working_dir)}</code></dd>`,
    a.env_names?.length && `<dt>Environment variables it sets (values not shown)</dt><dd><code>${a.env_names.map(visible).join(", ")}</code></dd>`,
    a.stdin !== undefined && `<dt>What it reads on stdin</dt><dd><pre class="command">${visible(a.stdin)}</pre></dd>`,
    a.path !== undefined && `<dt>File</dt><dd><code>${visible(a.path)}</code></dd>`,
    a.diff !== undefined && `<dt>Change</dt><dd><pre class="diff">${diffHtml(a.diff)}</pre></dd>`,
    `<dt>Asked by</dt><dd>${askedBy(a.client, view.clients)}</dd>`,
    `<dt>Because of the rule</dt><dd><code>${visible(a.rule)}</code></dd>`,
    `<dt>Time left</dt><dd>${escapeHtml(expiryText(a.expires_at, now))}; then it fails and nothing runs</dd>`,
  ].filter(Boolean);
  const warning = hidden
    ? `<p class="warning danger">This holds ${hidden} invisible or unusual character${hidden === 1 ? "" : "s"}, shown marked as ⟨U+…⟩: it may not be what it seems at first sight.</p>`
    : "";
  const passkeyData = passkey ? ` data-rp-id="${escapeHtml(passkey.rp_id)}" data-credentials="${escapeHtml(passkey.credential_ids.join(" "))}"` : "";
  const passkeyNote = passkey
    ? `<p class="passkey">Approving needs your passkey.</p>
  <details><summary>What your passkey signs</summary><pre>${visible(passkey.statements.once)}</pre></details>
  <p class="passkey-status" role="status" hidden></p>`
    : "";
  return `<article class="approval" id="approval-${escapeHtml(a.id)}"${passkeyData}>
  <h3><span class="tag">${visible(a.machine)}</span> ${visible(a.tool)}</h3>
  <p class="summary">${visible(a.summary)}</p>
  ${warning}
  <dl>${details.join("\n  ")}</dl>
  ${passkeyNote}
  ${form({ decision: "approve" }, `<button class="approve" type="submit">Approve once</button>`, "", statementOf("once"))}
  <p class="small">Or approve the same call on this machine (on ${visible(a.machine)}: ${sameCall(a)}) without asking again, for:</p>
  <div class="for">${APPROVE_FOR.map(([seconds, label]) => form({ decision: "approve", for_seconds: String(seconds) }, `<button type="submit">Approve for ${label}</button>`, "", statementOf(String(seconds) as "300" | "3600" | "28800"))).join("")}</div>
  ${form(
    { decision: "deny" },
    `<label for="reason-${escapeHtml(a.id)}">Reason (optional; the assistant is told)</label><input type="text" id="reason-${escapeHtml(a.id)}" name="reason" maxlength="1000" autocomplete="off"><button class="danger" type="submit">Deny</button>`,
    "deny",
  )}
</article>`;
}

/** The calls waiting for the owner, first on the page; nothing when none waits. */
function waitingApprovals(view: DashboardView): string {
  if (view.approvals.length === 0) return "";
  const now = view.now ?? Date.now();
  return `<section class="approvals" aria-labelledby="approvals-heading">
<h2 id="approvals-heading">Waiting for your approval (${view.approvals.length})</h2>
<p class="small">Nothing runs until you decide. This page does not reload by itself while a call waits.</p>
${view.approvals.map((a) => approvalCard(a, view, now)).join("\n")}
</section>`;
}

/** The dashboard: calls waiting for approval, machines, what runs, what was called. It reloads itself every few
 *  seconds while no call waits (so a new question shows up), and not while one does (the owner may be typing). */
export function dashboardPage(view: DashboardView): Response {
  const waiting = view.approvals.length;
  const body = `<header><h1>Code Remote</h1>
<form method="post" action="/logout"><input type="hidden" name="csrf" value="${escapeHtml(view.csrf)}"><button class="link" type="submit">Sign out</button></form></header>
${waitingApprovals(view)}
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
  const title = waiting ? `(${waiting}) Waiting for your approval · Code Remote` : "Code Remote";
  const scripts = view.approvals.some((a) => a.passkey) ? ["approve.js"] : [];
  return html(200, title, body, { wide: true, refreshSeconds: waiting ? undefined : DASHBOARD_REFRESH_S, scripts });
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

// --- the owner's passkeys: enrolment ---

/** What the enrolment page shows and hands its script (enrolments.ts). */
export interface EnrolmentView {
  machine: string;
  label: string;
  /** The agent's challenge, user id and RP ID, for navigator.credentials.create. */
  begin: { challenge: string; user_id: string; rp_id: string; origin: string };
  expiresAt: number;
  state: "waiting" | "sent" | "stored" | "refused";
  message?: string;
  fingerprint?: string;
  csrf: string;
}

/** The page where the owner creates a passkey for a machine that asked (`enroll-owner`), with the relay's script
 *  (assets/enroll.js), which shows the new key's fingerprint and then the machine's answer. */
export function enrolPage(view: EnrolmentView, now = Date.now()): Response {
  const machine = visible(view.machine);
  const data = { challenge: view.begin.challenge, "user-id": view.begin.user_id, "rp-id": view.begin.rp_id, machine: view.machine, csrf: view.csrf, state: view.state };
  const attributes = Object.entries(data).map(([name, value]) => ` data-${name}="${escapeHtml(value)}"`).join("");
  const status =
    view.state === "stored" ? `<p id="status" class="stored" role="status">Stored on ${machine}.</p>`
    : view.state === "refused" ? `<p id="status" class="error" role="status">${visible(notStored(view.message))}</p>`
    : `<p id="status" role="status"></p>`;
  const body = `<section class="enrolment" id="enrolment"${attributes}>
<h1>Create a passkey for ${machine}</h1>
<p>${machine} asked for a passkey that only you hold (someone ran <code>code-remote-agent enroll-owner</code> there). Once it is
stored on ${machine}, the approvals its policy asks for can require it, and whoever runs this relay cannot give them for you.
If you did not start this, close the page.</p>
<dl>
  <dt>Machine</dt><dd><strong>${machine}</strong></dd>
  <dt>Label</dt><dd>${visible(view.label || "(none)")}</dd>
  <dt>Passkey for the site</dt><dd>${escapeHtml(view.begin.rp_id)} <span class="small">(${escapeHtml(view.begin.origin)})</span></dd>
  <dt>This link</dt><dd>${escapeHtml(expiryText(new Date(view.expiresAt).toISOString(), now))}</dd>
</dl>
<button id="create" type="button"${view.state === "waiting" ? "" : " hidden"}>Create a passkey for ${machine}</button>
<div id="fingerprint-box"${view.fingerprint ? "" : " hidden"}>
  <p>Fingerprint of the new passkey:</p>
  <p class="fingerprint" id="fingerprint">${escapeHtml(view.fingerprint ?? "")}</p>
  <p><strong>Check that your machine shows the same fingerprint, then confirm there.</strong> If it shows another one, answer no there: the key it received is not the one you just made.</p>
</div>
${status}`;
  return html(200, `Create a passkey for ${view.machine} · Code Remote`, body, { scripts: ["enroll.js"] });
}

/** "Not stored: <the machine's words>" (which may say "Not stored" already), as one sentence (as enroll.js says it). */
function notStored(message = "the machine refused it"): string {
  const words = message.trim();
  const sentence = /^not stored/i.test(words) ? words : `Not stored: ${words}`;
  return /[.!?]$/.test(sentence) ? sentence : `${sentence}.`;
}

// --- the relay's scripts, served at /assets/<name> ---

/** The scripts in assets/, read once: the pages load them from the relay itself (CSP script-src 'self'). */
const ASSETS = new Map(["webauthn.js", "enroll.js", "approve.js"].map((name) => [name, fs.readFileSync(path.join(import.meta.dir, "assets", name), "utf8")]));

/** GET /assets/<name>: one of the relay's scripts, or 404. */
export function assetResponse(name: string): Response {
  const script = ASSETS.get(name);
  if (script === undefined) return new Response("Not found.", { status: 404, headers: { "Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff" } });
  return new Response(script, {
    headers: { "Content-Type": "text/javascript; charset=utf-8", "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", "Cross-Origin-Resource-Policy": "same-origin" },
  });
}
