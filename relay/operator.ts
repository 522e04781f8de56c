// The operator's subcommands of `bun run server.ts`, run where the relay keeps its database: `audit` (recent
// calls or events, and `audit verify` for the hash chain), `agent-token` (per-machine agent credentials),
// `machine-key` (the agent keys pinned to machine names) and `oauth-clients` (the OAuth applications approved).
// They read and change the database at DATABASE_PATH directly; a running relay sees a new or revoked token within
// a second. A ConfigError is a mistake of the operator's, printed without a stack trace.

import * as fs from "node:fs";
import { MachineName } from "../protocol.ts";
import { AuditLog, auditFilter, type CallRecord, type EventRecord, type VerifyResult } from "./audit.ts";
import { ConfigError, databasePath } from "./config.ts";
import { AgentTokens, OAuthStore, printableName, type ApprovedClient } from "./credentials.ts";
import { MachineKeys } from "./identity.ts";
import { auditClientRevoked } from "./oauth.ts";
import { openDatabase } from "./storage.ts";

/** The database of a relay that has run, for the commands that read or change it. Creating one here would be a
 *  silent mistake: run on the wrong machine or directory, `audit` would find nothing, and a token made by
 *  `agent-token create` would live in a database the relay never reads. */
function openRelayDatabase(env: Record<string, string | undefined>) {
  const file = databasePath(env);
  if (!fs.existsSync(file)) {
    throw new ConfigError(
      `There is no relay database at ${file}. Run this command where the relay runs and keeps its data ` +
        "(set DATABASE_PATH, or: docker compose exec server bun run /app/server.ts …, fly ssh console -C \"bun run /app/server.ts …\").",
    );
  }
  return openDatabase(file);
}

/** `audit [flags]` and `audit verify`: read the audit log of the database at DATABASE_PATH. */
export function auditCommand(args: string[], env: Record<string, string | undefined>): number {
  const db = openRelayDatabase(env);
  try {
    const audit = new AuditLog(db);
    if (args[0] === "verify" && args.length === 1) return printVerify(audit.verify());
    const { params, json, events } = parseAuditFlags(args);
    const filter = auditFilter(params);
    if (typeof filter === "string") throw new ConfigError(filter);
    if (json) console.log(JSON.stringify(events ? { events: audit.events(filter) } : { calls: audit.calls(filter) }, null, 2));
    else console.log(events ? renderEventTable(audit.events(filter)) : renderCallTable(audit.calls(filter)));
    return 0;
  } finally {
    db.close();
  }
}

function parseAuditFlags(args: string[]): { params: URLSearchParams; json: boolean; events: boolean } {
  const params = new URLSearchParams();
  let json = false;
  let events = false;
  for (let i = 0; i < args.length; i++) {
    const flag = args[i]!;
    if (flag === "--json") json = true;
    else if (flag === "--events") events = true;
    else if (["--machine", "--tool", "--since", "--limit"].includes(flag) && args[i + 1] !== undefined) params.set(flag.slice(2), args[++i]!);
    else throw new ConfigError(`unknown audit option '${flag}'. See --help.`);
  }
  return { params, json, events };
}

function printVerify(result: VerifyResult): number {
  if (!result.ok) {
    console.error(`audit chain BROKEN at event ${result.seq}: ${result.reason} (${result.events} events checked)`);
    return 1;
  }
  const head = result.head ? `head: event ${result.head.seq}, hash ${result.head.hash}` : "no events yet";
  const anchor = result.anchor ? `, continuing from pruned event ${result.anchor}` : "";
  console.log(`audit chain intact: ${result.events} events${anchor}; ${head}`);
  return 0;
}

/** A plain-text table: each column as wide as its widest cell. */
function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return [header, ...rows].map((r) => r.map((cell, i) => cell.padEnd(widths[i]!)).join("  ").trimEnd()).join("\n");
}

const shortTime = (iso: string) => iso.replace("T", " ").slice(0, 19);

function renderCallTable(calls: CallRecord[]): string {
  if (calls.length === 0) return "No tool calls match.";
  const summary = (args: Record<string, unknown>) => JSON.stringify(args).slice(0, 60);
  const rows = calls.map((c) => [shortTime(c.started_at), c.machine ?? "-", c.tool, c.outcome, String(c.exit_code ?? "-"), String(c.duration_ms ?? "-"), c.client ?? "-", summary(c.arguments)]);
  return table(["TIME (UTC)", "MACHINE", "TOOL", "OUTCOME", "EXIT", "MS", "CLIENT", "ARGUMENTS"], rows);
}

function renderEventTable(events: EventRecord[]): string {
  if (events.length === 0) return "No events match.";
  const rows = events.map((e) => [shortTime(e.at), e.kind, e.machine ?? "-", JSON.stringify(e.detail).slice(0, 80)]);
  return table(["TIME (UTC)", "EVENT", "MACHINE", "DETAIL"], rows);
}

/** `agent-token create|list|revoke`: per-machine agent credentials, kept as hashes in the database. */
export function agentTokenCommand([action, machine, ...extra]: string[], env: Record<string, string | undefined>): number {
  const usage = "usage: bun run server.ts agent-token create NAME | list | revoke NAME";
  const needsName = action === "create" || action === "revoke";
  if (!["create", "list", "revoke"].includes(action ?? "") || extra.length > 0 || needsName !== (machine !== undefined)) throw new ConfigError(usage);
  if (machine !== undefined) checkMachineName(machine);
  const db = openRelayDatabase(env);
  try {
    const tokens = new AgentTokens(db);
    const audit = new AuditLog(db);
    if (action === "list") {
      const rows = tokens.list();
      console.log(rows.length ? rows.map((r) => `${r.machine.padEnd(24)} made ${r.created_at}, last used ${r.last_used_at ?? "never"}`).join("\n") : "No per-machine agent tokens.");
      return 0;
    }
    if (action === "revoke") {
      if (!tokens.revoke(machine!)) throw new ConfigError(`No agent token for '${machine}'. See: agent-token list`);
      audit.event("agent_token_revoked", { machine });
      console.log(`Revoked the token of '${machine}'. A running relay disconnects that agent within a second.`);
      return 0;
    }
    if (tokens.exists(machine!)) throw new ConfigError(`'${machine}' already has a token. Revoke it first: agent-token revoke ${machine}`);
    const token = tokens.create(machine!);
    audit.event("agent_token_created", { machine });
    console.log(`Agent token for '${machine}' (shown once; it is stored only as a hash):\n\n  ${token}\n\nOn that machine: MACHINE_NAME=${machine} AGENT_TOKEN=<the token> RELAY_URL=wss://<relay>/ws/agent code-remote-agent`);
    return 0;
  } finally {
    db.close();
  }
}

function checkMachineName(machine: string): void {
  if (!MachineName.safeParse(machine).success) throw new ConfigError(`'${machine}' is not a machine name: 1-64 letters, digits, '.', '_' or '-'.`);
}

/** `machine-key list|unpin`: the agent keys pinned to machine names. Unpinning is how the owner gives a name back
 *  to a machine that lost its key (a reinstall): nothing else lets a new key take a pinned name. */
export function machineKeyCommand([action, machine, ...extra]: string[], env: Record<string, string | undefined>): number {
  const usage = "usage: bun run server.ts machine-key list | unpin NAME";
  const wellFormed = (action === "list" && machine === undefined) || (action === "unpin" && machine !== undefined);
  if (!wellFormed || extra.length > 0) throw new ConfigError(usage);
  if (machine !== undefined) checkMachineName(machine);
  const db = openRelayDatabase(env);
  try {
    const keys = new MachineKeys(db);
    if (action === "list") {
      const rows = keys.list();
      console.log(rows.length ? rows.map((r) => `${r.machine.padEnd(24)} key ${r.public_key}, pinned ${r.pinned_at}, last connected ${r.last_seen_at ?? "never"}`).join("\n") : "No machine keys pinned yet.");
      return 0;
    }
    if (!keys.unpin(machine!)) throw new ConfigError(`No key is pinned to '${machine}'. See: machine-key list`);
    new AuditLog(db).event("machine_key_unpinned", { machine });
    console.log(
      `Unpinned '${machine}'. The next agent that connects as '${machine}' pins its own key; an agent connected as '${machine}' ` +
        "now keeps its link, and its key is pinned again when it reconnects.",
    );
    return 0;
  } finally {
    db.close();
  }
}

/** `oauth-clients [list] | revoke CLIENT_ID`: the OAuth applications the owner approved, and taking one's access
 *  away. Revoking deletes its registration, grants and tokens, so every request it makes is refused at once; a
 *  running relay ends its open sessions within a second (it looks for revoked clients every second). */
export function oauthClientsCommand([action = "list", clientId, ...extra]: string[], env: Record<string, string | undefined>): number {
  const wellFormed = (action === "list" && clientId === undefined) || (action === "revoke" && clientId !== undefined);
  if (!wellFormed || extra.length > 0) throw new ConfigError("usage: bun run server.ts oauth-clients [list] | revoke CLIENT_ID");
  const db = openRelayDatabase(env);
  try {
    const store = new OAuthStore(db);
    if (action === "list") {
      console.log(renderClientTable(store.approvedClients()));
      return 0;
    }
    const client = store.forgetClient(clientId!);
    if (!client) throw new ConfigError(`No OAuth client '${printableName(clientId, 64)}'. See: oauth-clients list`);
    auditClientRevoked(new AuditLog(db), client, { via: "from the command line" });
    const name = printableName(client.metadata.client_name) ?? "an unnamed application";
    console.log(`Revoked ${name} (${client.client_id}): its tokens no longer work, and a running relay ends its open sessions within a second. To come back it must be approved again.`);
    return 0;
  } finally {
    db.close();
  }
}

function renderClientTable(clients: ApprovedClient[]): string {
  if (clients.length === 0) return "No approved OAuth clients.";
  const time = (ms: number) => shortTime(new Date(ms).toISOString());
  const rows = clients.map((c) => [c.client_id, c.name ?? "(unnamed)", c.redirect_hosts.join(", "), time(c.approved_at), time(c.last_used_at)]);
  return table(["CLIENT ID", "NAME", "REDIRECT HOSTS", "APPROVED (UTC)", "LAST USED (UTC)"], rows);
}
