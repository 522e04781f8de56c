// MCP 2026-07-28, the stateless revision, on /mcp against a real relay and agent: the v2 SDK client reaches it with
// no fallback round trip, server/discover answers, the standard headers are checked against the body, a version the
// relay does not speak is named as such, progress rides the call's own response, closing that response is the
// cancel, and no request leans on another. The suites parametrised by transport (tools, commands) run every tool
// over this revision too ("modern" in TRANSPORTS); the v1 client and the SSE transport keep theirs.

import { describe, expect, test } from "bun:test";
import type { FetchLike } from "@modelcontextprotocol/client";
import { VERSION } from "../../protocol.ts";
import { callsOf, relayCommand } from "../helpers/audit.ts";
import { followCommand } from "../helpers/chaos.ts";
import { obtainGrant } from "../helpers/oauth.ts";
import { connectModernClient, eventually, pidsMatching } from "../helpers/processes.ts";
import { useStack } from "../helpers/stack.ts";
import { call } from "../helpers/tools.ts";
import { bearer, MODERN_PROTOCOL_VERSION, modernRequest, postModern, toolAnswer } from "../hostile/raw.ts";

const OWNER_PASSWORD = "owner passphrase for the modern suite";
const stack = useStack({ relay: { env: { OWNER_PASSWORD } }, agent: { machine: "modern-box" } });

/** A marker unlikely to appear in any other process's command line. */
const marker = () => String(4_000_000 + Math.floor(Math.random() * 5_000_000));

/** The audit row of the call whose command contains `text`. */
const auditedCall = (text: string) => callsOf(stack.relay.databasePath).find((c) => c.arguments.command?.includes(text));

/** A 2026-07-28 tools/call sent by hand, its response left open for the test to read or close. */
function startModernCall(args: Record<string, unknown>, options: { progress?: boolean; token?: string; signal?: AbortSignal } = {}) {
  const sent = modernRequest("tools/call", { name: "run_shell_command", arguments: args, ...(options.progress && { _meta: { progressToken: "p" } }) });
  return fetch(new URL("/mcp", stack.relay.url), {
    method: "POST",
    headers: { ...sent.headers, ...bearer(options.token ?? stack.relay.token) },
    body: JSON.stringify(sent.body),
    signal: options.signal,
  });
}

/** The JSON-RPC messages of an event-stream response, as they arrive, until it ends. */
async function* streamedMessages(response: Response): AsyncGenerator<any> {
  let buffered = "";
  for await (const chunk of response.body!.pipeThrough(new TextDecoderStream())) {
    buffered += chunk;
    let end: number;
    while ((end = buffered.indexOf("\n\n")) >= 0) {
      const event = buffered.slice(0, end);
      buffered = buffered.slice(end + 2);
      const data = event.split("\n").find((line) => line.startsWith("data: "));
      if (data) yield JSON.parse(data.slice(6));
    }
  }
}

describe("the v2 client negotiating by itself", () => {
  test("speaks 2026-07-28 from its first request: server/discover, answered at once, no initialize and no session", async () => {
    const requests: { what: string; status: number; session: string | null }[] = [];
    const counting: FetchLike = async (url, init) => {
      const response = await fetch(url, init);
      const method = typeof init?.body === "string" ? JSON.parse(init.body).method : "";
      requests.push({ what: `${init?.method ?? "GET"} ${method}`, status: response.status, session: response.headers.get("mcp-session-id") });
      return response;
    };
    await using client = await connectModernClient(stack.relay, { headers: bearer(stack.relay.token), fetch: counting });
    expect(client.sdk.getProtocolEra()).toBe("modern");
    expect((await client.listTools()).tools.length).toBeGreaterThan(0);
    expect((await call(client, "run_shell_command", { command: "echo modern" })).data.stdout).toBe("modern\n");
    expect(requests[0]).toEqual({ what: "POST server/discover", status: 200, session: null });
    expect(requests.map((r) => r.what)).toEqual(["POST server/discover", "POST tools/list", "POST tools/call"]);
    expect(requests.every((r) => r.status === 200 && r.session === null)).toBe(true);
  });

  test("server/discover names the server, its version, its capabilities and its instructions", async () => {
    await using client = await connectModernClient(stack.relay, { headers: bearer(stack.relay.token) });
    expect(client.sdk.getServerVersion()).toMatchObject({ name: "code-remote", version: VERSION });
    expect(client.sdk.getDiscoverResult()).toMatchObject({ supportedVersions: [MODERN_PROTOCOL_VERSION], capabilities: { tools: {} } });
    const raw = await postModern(stack.relay, stack.relay.token, "server/discover");
    expect(raw.status).toBe(200);
    expect(raw.messages[0].result).toMatchObject({
      supportedVersions: [MODERN_PROTOCOL_VERSION],
      capabilities: { tools: { listChanged: false } },
      instructions: expect.stringContaining("check_agent_status"),
      _meta: { "io.modelcontextprotocol/serverInfo": { name: "code-remote", version: VERSION } },
    });
  });

  test("in legacy mode it opens a 2025 session as before, and the audit records each call's revision", async () => {
    await using modern = await connectModernClient(stack.relay, { headers: bearer(stack.relay.token) });
    await using legacy = await connectModernClient(stack.relay, { headers: bearer(stack.relay.token), mode: "legacy" });
    expect(legacy.sdk.getProtocolEra()).toBe("legacy");
    const tag = marker();
    expect((await call(legacy, "run_shell_command", { command: `echo legacy-${tag}` })).data.stdout).toBe(`legacy-${tag}\n`);
    await call(modern, "run_shell_command", { command: `echo modern-${tag}` });
    const legacyRow = auditedCall(`legacy-${tag}`);
    expect(legacyRow.protocol).toMatch(/^2025-/);
    expect(legacyRow.session).toMatch(/^[0-9a-f-]{36}$/);
    expect(auditedCall(`modern-${tag}`)).toMatchObject({ protocol: MODERN_PROTOCOL_VERSION, session: null, outcome: "ok" });
  });
});

describe("headers and versions", () => {
  test("an Mcp-Method header that disagrees with the body gets 400 and HeaderMismatch (-32020)", async () => {
    const reply = await postModern(stack.relay, stack.relay.token, "server/discover", {}, { "Mcp-Method": "tools/list" });
    expect(reply.status).toBe(400);
    expect(reply.error).toMatchObject({ code: -32020, message: expect.stringContaining("Mcp-Method") });
  });

  test("an Mcp-Name that disagrees with the tool called, or none, gets -32020, and nothing runs", async () => {
    const tag = marker();
    const args = { name: "run_shell_command", arguments: { command: `echo ran-${tag}` } };
    const wrongName = await postModern(stack.relay, stack.relay.token, "tools/call", args, { "Mcp-Name": "read_file" });
    expect([wrongName.status, wrongName.error?.code]).toEqual([400, -32020]);
    const sent = modernRequest("tools/call", args);
    delete sent.headers["Mcp-Name"];
    const noName = await fetch(new URL("/mcp", stack.relay.url), { method: "POST", headers: { ...sent.headers, ...bearer(stack.relay.token) }, body: JSON.stringify(sent.body) });
    expect(noName.status).toBe(400);
    expect(((await noName.json()) as any).error.code).toBe(-32020);
    expect(auditedCall(`ran-${tag}`)).toBeUndefined();
  });

  test("a revision the relay does not speak gets 400 and UnsupportedProtocolVersion (-32022) with the supported list", async () => {
    const version = "2027-03-30";
    const reply = await postModern(stack.relay, stack.relay.token, "server/discover", { _meta: { "io.modelcontextprotocol/protocolVersion": version } }, { "MCP-Protocol-Version": version });
    expect(reply.status).toBe(400);
    expect(reply.error).toMatchObject({ code: -32022 });
    expect(reply.messages[0].error.data).toEqual({ supported: [MODERN_PROTOCOL_VERSION], requested: version });
  });

  test("params that do not fit the method get -32602 in a sentence", async () => {
    const reply = await postModern(stack.relay, stack.relay.token, "tools/call", { name: 3, arguments: {} }, { "Mcp-Name": "3" });
    expect(reply.messages[0].error).toEqual({ code: -32602, message: "Invalid params: params.name: Invalid input: expected string, received number" });
  });
});

describe("long calls", () => {
  test("progress comes on the call's own response, which turns into an event stream, then the answer ends it", async () => {
    const response = await startModernCall({ command: "for i in 1 2 3; do echo step-$i; sleep 1; done" }, { progress: true });
    expect(response.headers.get("content-type")).toContain("text/event-stream");
    const messages: any[] = [];
    for await (const message of streamedMessages(response)) messages.push(message);
    const progress = messages.filter((m) => m.method === "notifications/progress");
    expect(progress.length).toBeGreaterThanOrEqual(2);
    expect(progress.every((m) => m.params.progressToken === "p")).toBe(true);
    expect(progress.some((m) => m.params.message.includes("step-"))).toBe(true);
    expect(messages.at(-1).result.structuredContent.stdout).toBe("step-1\nstep-2\nstep-3\n");
  });

  test.each([
    ["streaming progress", true],
    ["waiting for a JSON answer", false],
  ])("closing the response (%s) cancels: the command's process group is gone within 2 s, and the audit says cancelled", async (_, progress) => {
    const tag = marker();
    const abort = new AbortController();
    const response = startModernCall({ command: `sh -c 'sleep ${tag} & sleep ${tag}'` }, { progress, signal: abort.signal });
    await eventually(() => pidsMatching(`sleep ${tag}`).length >= 2, 3_000, "commands started");
    // Streaming, the response has begun (the first progress turned it into events); else nothing has come yet.
    if (progress) expect((await response).headers.get("content-type")).toContain("text/event-stream");
    abort.abort();
    if (!progress) await expect(response).rejects.toThrow();
    const closedAt = Date.now();
    await eventually(() => pidsMatching(`sleep ${tag}`).length === 0, 2_000, "no process left");
    expect(Date.now() - closedAt).toBeLessThan(2_000);
    await eventually(() => auditedCall(`sleep ${tag}`)?.outcome === "cancelled", 3_000, "audit says cancelled");
  });

  test("a call that ends normally stays ok in the audit, although the SDK aborts its signal just after the answer", async () => {
    await using client = await connectModernClient(stack.relay, { headers: bearer(stack.relay.token) });
    const tag = marker();
    await call(client, "run_shell_command", { command: `echo quick-${tag}` });
    const streamed = await startModernCall({ command: `sleep 1.5; echo streamed-${tag}` }, { progress: true });
    for await (const _ of streamedMessages(streamed));
    await Bun.sleep(500);
    expect(auditedCall(`quick-${tag}`)).toMatchObject({ outcome: "ok", protocol: MODERN_PROTOCOL_VERSION });
    expect(auditedCall(`streamed-${tag}`)).toMatchObject({ outcome: "ok", exit_code: 0 });
  });

  test("revoking an OAuth client ends its 2026-07-28 call in flight, which belongs to no session", async () => {
    const grant = await obtainGrant(stack.relay.url, OWNER_PASSWORD, { name: "Revoked mid-call" });
    const tag = marker();
    const response = startModernCall({ command: `sleep ${tag}` }, { token: grant.access });
    await eventually(() => pidsMatching(`sleep ${tag}`).length > 0, 3_000, "command started");
    expect(relayCommand(stack.relay.databasePath, "oauth-clients", "revoke", grant.clientId).code).toBe(0);
    await eventually(() => pidsMatching(`sleep ${tag}`).length === 0, 4_000, "the command is killed");
    expect(toolAnswer({ messages: [await (await response).json()] } as never).text).toContain("cancelled");
    await eventually(() => auditedCall(`sleep ${tag}`)?.outcome === "cancelled", 3_000, "audit says cancelled");
  });
});

describe("no state between requests", () => {
  test("a tools/call needs no request before it, and two at once with the same JSON-RPC id each get their own answer", async () => {
    const both = await Promise.all(
      ["first", "second"].map(async (word) => {
        const sent = modernRequest("tools/call", { name: "run_shell_command", arguments: { command: `sleep 0.3; echo ${word}` } }, "same-id");
        const response = await fetch(new URL("/mcp", stack.relay.url), { method: "POST", headers: { ...sent.headers, ...bearer(stack.relay.token) }, body: JSON.stringify(sent.body) });
        expect(response.headers.get("mcp-session-id")).toBeNull();
        return (await response.json()) as any;
      }),
    );
    expect(both.map((answer) => [answer.id, answer.result.structuredContent.stdout])).toEqual([
      ["same-id", "first\n"],
      ["same-id", "second\n"],
    ]);
  });

  test("a requestState the relay did not sign is refused with -32602 before any tool runs", async () => {
    const tag = marker();
    const forged = Buffer.from(JSON.stringify({ p: { approved: true }, exp: 4_000_000_000 })).toString("base64url");
    const reply = await postModern(stack.relay, stack.relay.token, "tools/call", { name: "run_shell_command", arguments: { command: `echo forged-${tag}` }, requestState: `v1.${forged}.AAAA` });
    expect(reply.messages[0].error).toMatchObject({ code: -32602, message: "Invalid or expired requestState" });
    expect(auditedCall(`forged-${tag}`)).toBeUndefined();
  });

  test("a command_id handed back to one client is followed by another: the handle carries what it needs", async () => {
    const starter = await connectModernClient(stack.relay, { headers: bearer(stack.relay.token) });
    const started = await call(starter, "run_shell_command", { command: "sleep 0.5; echo handed-over", background: true });
    await starter.close();
    await using follower = await connectModernClient(stack.relay, { headers: bearer(stack.relay.token) });
    const { output, last } = await followCommand(follower, started.data.command_id);
    expect([output, last.state, last.exit_code]).toEqual(["handed-over\n", "exited", 0]);
  });
});
