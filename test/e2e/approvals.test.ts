// The owner decides (issue 15): a machine on the ask-to-change policy runs reads at once, holds a command until the
// owner approves or denies it through the relay's approvals API, refuses what its deny rules name without asking,
// and tells the owner's webhook once per approval. Only the owner's AUTH_TOKEN (or dashboard session) decides;
// an OAuth client's token and an agent's token cannot. Real relay, real agent, real SDK clients.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ElicitRequestSchema } from "@modelcontextprotocol/sdk/types.js";
import { connectClient, connectModernClient, eventually, freePort, newToken, startAgent, startRelay, type McpClient } from "../helpers/processes.ts";
import { obtainGrant } from "../helpers/oauth.ts";
import { approvalFor, waitingApprovals, type WaitingApproval } from "../helpers/approvals.ts";
import { useStack } from "../helpers/stack.ts";
import { call, type ToolCall } from "../helpers/tools.ts";

const home = fs.realpathSync(fs.mkdtempSync("/tmp/cr-approvals-home-"));
const root = fs.realpathSync(fs.mkdtempSync("/tmp/cr-approvals-root-"));
const policyFile = path.join(root, "policy.toml");
const agentToken = newToken();

/** The owner's policy for this machine: ask-to-change, a deny rule and an allow rule for commands. */
function writePolicy(approvalTimeout = 30): void {
  fs.writeFileSync(
    policyFile,
    `preset = "ask-to-change"\napproval_timeout = ${approvalTimeout}\n\n[paths.read]\ndeny = ["${root}/secret/**"]\n\n` +
      `[commands]\nallow = ["git status", "ls *"]\ndeny = ["rm -rf *"]\n`,
  );
}
writePolicy();

/** The owner's webhook: every POST it receives. */
const hooks: { body: string; contentType: string | null }[] = [];
const webhook = Bun.serve({
  hostname: "127.0.0.1",
  port: 0,
  fetch: async (req) => (hooks.push({ body: await req.text(), contentType: req.headers.get("content-type") }), new Response("ok")),
});
afterAll(() => webhook.stop(true));

const stack = useStack({
  relay: { env: { AGENT_TOKEN: agentToken, APPROVAL_WEBHOOK_URL: `http://127.0.0.1:${webhook.port}/hook` } },
  agent: { roots: [root, home], token: agentToken, env: { POLICY_FILE: policyFile, HOME: home } },
  client: "streamable-http",
});

type Approval = WaitingApproval;

const api = (pathname: string, init: RequestInit & { token?: string } = {}) =>
  fetch(new URL(pathname, stack.relay.url), { ...init, headers: { Authorization: `Bearer ${init.token ?? stack.relay.token}`, "Content-Type": "application/json", ...init.headers } });

const pending = () => waitingApprovals(stack.relay);

/** Waits for the approval of a call whose command is `command`. */
const approvalOf = (command: string) => approvalFor(stack.relay, { command });

const decide = (id: string, body: unknown, token?: string) => api(`/approvals/${id}`, { method: "POST", body: JSON.stringify(body), token });

/** Starts a tool call that will wait, collecting its progress messages. */
function start(client: McpClient, name: string, args: Record<string, unknown>) {
  const messages: string[] = [];
  const result = client
    .callTool({ name, arguments: args }, undefined, { timeout: 120_000, onprogress: (p) => void messages.push(p.message ?? "") })
    .then((r) => r as ToolCall["result"]);
  return { messages, result };
}

/** The approval left the list when its call ended, approving it now is refused, and the call's file never appears. */
async function expectGone(approval: Approval, target: string): Promise<void> {
  await eventually(async () => (await pending()).every((a) => a.id !== approval.id), 5_000, "the approval to vanish");
  expect((await decide(approval.id, { decision: "approve" })).status).toBe(404);
  await Bun.sleep(500);
  expect(fs.existsSync(target)).toBe(false);
}

const textOf = (r: ToolCall["result"]) => (r.content?.[0] as { text: string }).text;

beforeAll(async () => {
  await eventually(async () => (await pending()).length === 0, 5_000, "the relay to answer");
});

describe("a machine on ask-to-change", () => {
  test("read_file runs at once, and check_agent_status tells the model the policy", async () => {
    fs.writeFileSync(path.join(root, "free.txt"), "hello\n");
    const read = await call(stack.client, "read_file", { path: path.join(root, "free.txt") });
    expect(read.isError).toBe(false);
    expect(read.data.content).toBe("hello\n");
    const status = await call(stack.client, "check_agent_status");
    expect(status.data.machines[0].policy).toMatchObject({ preset: "ask-to-change", file: policyFile });
    expect(status.text).toContain("ask-to-change");
  });

  test("a command waits; progress names the approval; approving runs it, once, and the webhook heard of it once", async () => {
    const target = path.join(root, "approved.txt");
    const command = `touch ${target}`;
    const hooksBefore = hooks.length;
    const waiting = start(stack.client, "run_shell_command", { command, working_dir: root });
    const approval = await approvalOf(command);
    expect(approval).toMatchObject({ machine: stack.agent.machine, tool: "run_shell_command", working_dir: root });
    expect(approval.rule).toContain("ask");
    await Bun.sleep(300);
    expect(fs.existsSync(target)).toBe(false); // nothing runs before the owner says so
    await eventually(() => waiting.messages.some((m) => m.includes(approval.url)), 10_000, "progress naming the approval");
    expect(waiting.messages[0]).toContain(`waiting for the owner to approve on ${stack.agent.machine}`);

    const decided = await decide(approval.id, { decision: "approve" });
    expect(decided.status).toBe(200);
    const result = await waiting.result;
    expect(result.isError).toBeFalsy();
    expect((result.structuredContent as { exit_code: number }).exit_code).toBe(0);
    expect(fs.existsSync(target)).toBe(true);
    expect(await pending()).toEqual([]);
    expect((await decide(approval.id, { decision: "approve" })).status).toBe(404); // decided once, not twice

    await eventually(() => hooks.length > hooksBefore, 5_000, "the webhook");
    const mine = hooks.slice(hooksBefore).filter((h) => h.body.includes(approval.id));
    expect(mine.length).toBe(1);
    expect(mine[0]!.contentType).toContain("application/json");
    expect(JSON.parse(mine[0]!.body)).toMatchObject({ event: "approval_requested", id: approval.id, machine: stack.agent.machine, url: approval.url });
  });

  test("denying fails the call with the owner's reason, and nothing runs", async () => {
    const target = path.join(root, "denied.txt");
    const command = `touch ${target}`;
    const waiting = start(stack.client, "run_shell_command", { command });
    const approval = await approvalOf(command);
    expect((await decide(approval.id, { decision: "deny", reason: "not on a Friday" })).status).toBe(200);
    const result = await waiting.result;
    expect(result.isError).toBe(true);
    expect(textOf(result)).toContain("not on a Friday");
    await Bun.sleep(300);
    expect(fs.existsSync(target)).toBe(false);
  });

  test("a deny rule refuses `rm -rf ~` at once, naming the rule, without asking", async () => {
    fs.writeFileSync(path.join(home, "keep.txt"), "precious");
    const refused = await call(stack.client, "run_shell_command", { command: "rm -rf ~" });
    expect(refused.isError).toBe(true);
    expect(refused.text).toContain('commands.deny "rm -rf *"');
    expect(await pending()).toEqual([]);
    expect(fs.readFileSync(path.join(home, "keep.txt"), "utf8")).toBe("precious");
  });

  test("an allowed simple command runs at once; the same words after `;` ask", async () => {
    const free = await call(stack.client, "run_shell_command", { command: "ls -a", working_dir: root });
    expect(free.isError).toBe(false);
    const victim = path.join(root, "x");
    fs.mkdirSync(victim, { recursive: true });
    // The deny rule still sees `rm -rf` after the `;`; without it, the line is not a simple command, so it asks.
    const denied = await call(stack.client, "run_shell_command", { command: `git status; rm -rf ${victim}`, working_dir: root });
    expect(denied.text).toContain('commands.deny "rm -rf *"');
    const command = `git status; rm -r ${victim}`;
    const waiting = start(stack.client, "run_shell_command", { command, working_dir: root });
    const approval = await approvalOf(command);
    expect((await decide(approval.id, { decision: "deny" })).status).toBe(200);
    expect((await waiting.result).isError).toBe(true);
    expect(fs.existsSync(victim)).toBe(true);
  });

  test("a write shows its diff against the file that is there", async () => {
    const file = path.join(root, "notes.txt");
    fs.writeFileSync(file, "one\ntwo\n");
    const waiting = start(stack.client, "write_file", { path: file, content: "one\nthree\n" });
    let approval: Approval | undefined;
    await eventually(async () => (approval = (await pending()).find((a) => a.path === file)) !== undefined, 10_000, "the write's approval");
    expect(approval!.diff).toContain("-two");
    expect(approval!.diff).toContain("+three");
    expect((await decide(approval!.id, { decision: "approve" })).status).toBe(200);
    expect((await waiting.result).isError).toBeFalsy();
    expect(fs.readFileSync(file, "utf8")).toBe("one\nthree\n");
  });

  test("approving the same call for a while lets it run again without asking", async () => {
    const command = `touch ${path.join(root, "again.txt")}`;
    const first = start(stack.client, "run_shell_command", { command, working_dir: root });
    const approval = await approvalOf(command);
    expect((await decide(approval.id, { decision: "approve", for_seconds: 60 })).status).toBe(200);
    expect((await first.result).isError).toBeFalsy();
    const second = await call(stack.client, "run_shell_command", { command, working_dir: root });
    expect(second.isError).toBe(false);
    // Another command still asks.
    const other = start(stack.client, "run_shell_command", { command: `${command}.other`, working_dir: root });
    const otherApproval = await approvalOf(`${command}.other`);
    await decide(otherApproval.id, { decision: "deny" });
    expect((await other.result).isError).toBe(true);
  });

  test("a path the policy denies reading is refused, and listings and searches do not see into it", async () => {
    fs.mkdirSync(path.join(root, "secret"), { recursive: true });
    fs.writeFileSync(path.join(root, "secret", "id_key"), "PRIVATE-KEY-MATERIAL\n");
    const read = await call(stack.client, "read_file", { path: path.join(root, "secret", "id_key") });
    expect(read.isError).toBe(true);
    expect(read.text).toContain(`paths.read.deny "${root}/secret/**"`);
    const found = await call(stack.client, "search_files", { path: root, content: "PRIVATE-KEY", include_hidden: true });
    expect(found.data.matches).toEqual([]);
    const listed = await call(stack.client, "list_directory", { path: root, depth: 3 });
    expect(listed.data.entries.map((e: { name: string }) => e.name).filter((name: string) => name.startsWith("secret"))).toEqual([]);
  });

  test("no tool reads or changes the policy file, even inside an allowed root", async () => {
    const before = fs.readFileSync(policyFile, "utf8");
    const read = await call(stack.client, "read_file", { path: policyFile });
    expect(read.isError).toBe(true);
    expect(read.text).toContain("Access denied");
    for (const [tool, args] of [
      ["write_file", { path: policyFile, content: 'preset = "open"\n' }],
      ["edit_file", { path: policyFile, edits: [{ old_text: "ask-to-change", new_text: "open" }] }],
    ] as const) {
      const changed = await call(stack.client, tool, args);
      expect(changed.isError).toBe(true);
    }
    const listed = await call(stack.client, "list_directory", { path: root });
    expect(listed.data.entries.map((e: { name: string }) => e.name)).not.toContain("policy.toml");
    expect(await pending()).toEqual([]);
    expect(fs.readFileSync(policyFile, "utf8")).toBe(before);
  });
});

describe("what an approval covers, and no more", () => {
  test("a command approved for a while covers that stdin only: other input to the same program asks again", async () => {
    const first = start(stack.client, "run_shell_command", { command: "sh", stdin: "echo first", working_dir: root });
    const approval = await approvalOf("sh");
    expect((approval as Approval & { stdin?: string }).stdin).toBe("echo first"); // the owner sees what the shell reads
    await decide(approval.id, { decision: "approve", for_seconds: 60 });
    expect((await first.result).isError).toBeFalsy();
    const target = path.join(root, "other-stdin.txt");
    const second = start(stack.client, "run_shell_command", { command: "sh", stdin: `touch ${target}`, working_dir: root });
    const again = await approvalOf("sh");
    await decide(again.id, { decision: "deny" });
    expect((await second.result).isError).toBe(true);
    expect(fs.existsSync(target)).toBe(false);
  });

  test("the owner tightening the policy while a call waits: the approval no longer makes it run", async () => {
    const target = path.join(root, "tightened.txt");
    const command = `touch ${target}`;
    const waiting = start(stack.client, "run_shell_command", { command });
    const approval = await approvalOf(command);
    fs.writeFileSync(policyFile, 'preset = "read-only"\n');
    try {
      await decide(approval.id, { decision: "approve" });
      const result = await waiting.result;
      expect(result.isError).toBe(true);
      expect(textOf(result)).toContain("changed while the call waited");
      expect(fs.existsSync(target)).toBe(false);
    } finally {
      writePolicy();
    }
  });

  test("a file swapped for a symlink while its write waits is not written through", async () => {
    const file = path.join(root, "app.json");
    const elsewhere = path.join(root, "elsewhere.txt");
    fs.writeFileSync(file, "{}\n");
    fs.writeFileSync(elsewhere, "keep\n");
    const waiting = start(stack.client, "write_file", { path: file, content: '{"a": 1}\n' });
    let approval: Approval | undefined;
    await eventually(async () => (approval = (await pending()).find((a) => a.path === file)) !== undefined, 10_000, "the write's approval");
    fs.rmSync(file);
    fs.symlinkSync(elsewhere, file);
    await decide(approval!.id, { decision: "approve" });
    const result = await waiting.result;
    expect(result.isError).toBe(true);
    expect(textOf(result)).toContain("which the owner approved");
    expect(fs.readFileSync(elsewhere, "utf8")).toBe("keep\n");
  });

  test("a change to a file the policy keeps from reads shows its size to the owner, not its content", async () => {
    fs.mkdirSync(path.join(root, "secret"), { recursive: true });
    const file = path.join(root, "secret", "creds");
    fs.writeFileSync(file, "aws_secret_access_key = AKIA-SECRET-123\n");
    const waiting = start(stack.client, "write_file", { path: file, content: "replaced\n" });
    let approval: Approval | undefined;
    await eventually(async () => (approval = (await pending()).find((a) => a.path === file)) !== undefined, 10_000, "the write's approval");
    expect(JSON.stringify(approval)).not.toContain("AKIA-SECRET-123");
    await decide(approval!.id, { decision: "deny" });
    expect((await waiting.result).isError).toBe(true);
  });

  test("one client cannot keep more than five calls waiting: the sixth is declined by the relay, unasked", async () => {
    await using flooder = await connectClient(stack.relay, "streamable-http");
    const hooksBefore = hooks.length;
    const calls = Array.from({ length: 6 }, (_, i) => start(flooder, "run_shell_command", { command: `touch ${path.join(root, `flood-${i}`)}` }));
    await eventually(async () => (await pending()).filter((a) => a.command?.includes("flood-")).length === 5, 10_000, "five waiting");
    const declined = await Promise.race(calls.map((c) => c.result));
    expect(textOf(declined)).toContain("already wait for the owner's approval");
    for (const approval of (await pending()).filter((a) => a.command?.includes("flood-"))) await decide(approval.id, { decision: "deny" });
    await Promise.all(calls.map((c) => c.result));
    await eventually(() => hooks.length >= hooksBefore + 5, 5_000, "the webhooks");
    expect(hooks.length - hooksBefore).toBe(5); // the declined one reached nobody
  });
});

describe("who may decide", () => {
  test("an OAuth client's token and an agent's token cannot list or decide; a bad body changes nothing", async () => {
    const command = `touch ${path.join(root, "not-by-you.txt")}`;
    const waiting = start(stack.client, "run_shell_command", { command });
    const approval = await approvalOf(command);
    const grant = await obtainGrant(stack.relay.url, stack.relay.token);
    for (const token of [grant.access, agentToken, "not-a-token"]) {
      const listed = await api("/approvals", { token });
      expect([401, 403]).toContain(listed.status);
      const decided = await decide(approval.id, { decision: "approve" }, token);
      expect([401, 403]).toContain(decided.status);
    }
    for (const body of [{ decision: "yes" }, { decision: "approve", for_seconds: -1 }, { decision: "approve", for_seconds: 1.5 }, { decision: "approve", extra: 1 }, "approve"]) {
      expect((await decide(approval.id, body)).status).toBe(400);
    }
    expect((await api(`/approvals/${approval.id}`, { method: "POST", body: "{not json" })).status).toBe(400);
    expect((await decide("no-such-approval", { decision: "approve" })).status).toBe(404);
    expect((await pending()).map((a) => a.id)).toContain(approval.id);
    await decide(approval.id, { decision: "deny" });
    expect((await waiting.result).isError).toBe(true);
    expect(fs.existsSync(path.join(root, "not-by-you.txt"))).toBe(false);
  });

  test("a dashboard session decides only with its CSRF token", async () => {
    const login = await fetch(new URL("/login", stack.relay.url), {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ owner_secret: stack.relay.token }),
      redirect: "manual",
    });
    const cookie = login.headers.get("set-cookie")!.split(";")[0]!;
    const command = `touch ${path.join(root, "csrf.txt")}`;
    const waiting = start(stack.client, "run_shell_command", { command });
    const approval = await approvalOf(command);
    const withCookie = (headers: Record<string, string>) =>
      fetch(new URL(`/approvals/${approval.id}`, stack.relay.url), { method: "POST", headers: { Cookie: cookie, "Content-Type": "application/json", ...headers }, body: JSON.stringify({ decision: "approve" }) });
    expect((await withCookie({})).status).toBe(403);
    expect((await withCookie({ "X-CSRF-Token": "forged" })).status).toBe(403);
    const page = await (await fetch(new URL("/", stack.relay.url), { headers: { Cookie: cookie } })).text();
    const csrf = /name="csrf" value="([^"]+)"/.exec(page)![1]!;
    expect((await withCookie({ "X-CSRF-Token": csrf })).status).toBe(200);
    expect((await waiting.result).isError).toBeFalsy();
  });
});

describe("calls that end while they wait", () => {
  test("an unanswered approval expires: the call fails and nothing runs", async () => {
    writePolicy(2); // the agent reads the policy again when it changes: no restart
    try {
      const target = path.join(root, "expired.txt");
      const started = Date.now();
      const result = await call(stack.client, "run_shell_command", { command: `touch ${target}` });
      expect(result.isError).toBe(true);
      expect(result.text).toContain("did not answer within 2 s");
      expect(Date.now() - started).toBeGreaterThanOrEqual(1_900);
      expect(fs.existsSync(target)).toBe(false);
      expect(await pending()).toEqual([]);
    } finally {
      writePolicy();
    }
  });

  test("a cancelled call's approval vanishes, and approving it afterwards runs nothing", async () => {
    const target = path.join(root, "cancelled.txt");
    const command = `touch ${target}`;
    const controller = new AbortController();
    const waiting = stack.client.callTool({ name: "run_shell_command", arguments: { command } }, undefined, { signal: controller.signal, timeout: 60_000 });
    const approval = await approvalOf(command);
    controller.abort();
    await waiting.catch(() => {});
    await expectGone(approval, target);
  });

  test("a 2026-07-28 client's call waits on its open request, hearing progress, and runs once approved", async () => {
    const target = path.join(root, "modern.txt");
    const command = `touch ${target}`;
    const client = await connectModernClient(stack.relay, { headers: { Authorization: `Bearer ${stack.relay.token}` } });
    try {
      const messages: string[] = [];
      const waiting = client.callTool({ name: "run_shell_command", arguments: { command } }, undefined, { timeout: 60_000, onprogress: (p) => void messages.push(p.message ?? "") });
      const approval = await approvalOf(command);
      await eventually(() => messages.some((m) => m.includes(approval.url)), 10_000, "progress naming the approval");
      await decide(approval.id, { decision: "approve" });
      expect(((await waiting) as ToolCall["result"]).isError).toBeFalsy();
      expect(fs.existsSync(target)).toBe(true);
    } finally {
      await client.close();
    }
  });

  test("a 2026-07-28 client that hangs up while its call waits: the approval vanishes, nothing runs", async () => {
    const target = path.join(root, "hung-up.txt");
    const command = `touch ${target}`;
    const client = await connectModernClient(stack.relay, { headers: { Authorization: `Bearer ${stack.relay.token}` } });
    const waiting = client.callTool({ name: "run_shell_command", arguments: { command } }, undefined, { timeout: 60_000 });
    const approval = await approvalOf(command);
    await client.close();
    await waiting.catch(() => {});
    await expectGone(approval, target);
  });

  test("a session client that declares URL-mode elicitation is asked to open the approval page", async () => {
    const client = new Client({ name: "elicitation-test", version: "1.0.0" }, { capabilities: { elicitation: { url: {} } } });
    const asked: { mode?: string; url?: string; elicitationId?: string }[] = [];
    client.setRequestHandler(ElicitRequestSchema, async (request) => (asked.push(request.params as (typeof asked)[number]), { action: "accept" }));
    await client.connect(new StreamableHTTPClientTransport(new URL("/mcp", stack.relay.url), { requestInit: { headers: { Authorization: `Bearer ${stack.relay.token}` } } }));
    try {
      const command = `touch ${path.join(root, "elicited.txt")}`;
      const waiting = client.callTool({ name: "run_shell_command", arguments: { command } }, undefined, { timeout: 60_000 });
      const approval = await approvalOf(command);
      await eventually(() => asked.length > 0, 5_000, "the elicitation");
      expect(asked[0]).toMatchObject({ mode: "url", url: approval.url, elicitationId: approval.id });
      await decide(approval.id, { decision: "approve" });
      expect(((await waiting) as ToolCall["result"]).isError).toBeFalsy();
    } finally {
      await client.close();
    }
  });

  test("over /sse too, a call waits and runs once approved", async () => {
    await using sse = await connectClient(stack.relay, "sse");
    const target = path.join(root, "sse.txt");
    const waiting = start(sse, "run_shell_command", { command: `touch ${target}` });
    const approval = await approvalOf(`touch ${target}`);
    await decide(approval.id, { decision: "approve" });
    expect((await waiting.result).isError).toBeFalsy();
    expect(fs.existsSync(target)).toBe(true);
  });

  test("the audit log holds each question, decision, expiry and cancellation", async () => {
    const response = await api("/audit?limit=500");
    const { events, calls } = (await response.json()) as { events: { kind: string; detail: { detail?: string } }[]; calls: { outcome: string }[] };
    const kinds = new Set(events.map((e) => e.kind));
    for (const kind of ["approval_requested", "approval_decided", "approval_expired", "approval_cancelled"]) expect(kinds).toContain(kind);
    const decided = events.filter((e) => e.kind === "approval_decided").map((e) => e.detail.detail ?? "");
    expect(decided.some((d) => d.includes("denied: not on a Friday by owner token"))).toBe(true);
    expect(calls.some((c) => c.outcome === "refused")).toBe(true);
  });
});

describe("the relay goes away while a call waits", () => {
  test("the relay restarts: the waiting call fails for its client, the agent drops the question, and nothing runs", async () => {
    const port = freePort();
    const relay = await startRelay({ port });
    try {
      await using agent = await startAgent(relay, { roots: [root], env: { POLICY_FILE: policyFile } });
      await using client = await connectClient(relay, "streamable-http");
      const target = path.join(root, "restart.txt");
      const waiting = client.callTool({ name: "run_shell_command", arguments: { command: `touch ${target}` } }, undefined, { timeout: 60_000 }) as Promise<ToolCall["result"]>;
      await eventually(async () => (await fetch(new URL("/approvals", relay.url), { headers: { Authorization: `Bearer ${relay.token}` } }).then((r) => r.json()) as { approvals: unknown[] }).approvals.length === 1, 10_000, "the approval");
      await relay.stop();
      const result = await waiting.catch((e: Error) => ({ isError: true, content: [{ type: "text", text: e.message }] }) as ToolCall["result"]);
      expect(result.isError).toBe(true);
      await using again = await startRelay({ port, token: relay.token, databasePath: relay.databasePath });
      await again.stderr.waitFor(/agent connected/, 30_000);
      await Bun.sleep(500);
      expect(fs.existsSync(target)).toBe(false);
      expect(agent.stderr.text).toContain("not_approved"); // the agent ended the call itself when the link dropped
      expect(((await (await fetch(new URL("/approvals", again.url), { headers: { Authorization: `Bearer ${again.token}` } })).json()) as { approvals: unknown[] }).approvals).toEqual([]);
    } finally {
      await relay.stop();
    }
  });
});
