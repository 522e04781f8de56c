// The MCP Inspector CLI (2.12.0, from the npm registry), a client nobody here wrote, against a real relay and agent.
// cli.test.ts already drives `bun run dev` with it in its default negotiation (the 2025 initialize handshake); this
// file covers the rest of what a user of it can choose: modern-first negotiation (`--protocol-era auto`), the
// 2026-07-28 pin (`--protocol-era modern`), the legacy SSE transport, its schema portability check, and a wrong token.

import { expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { TOOLS } from "../../protocol.ts";
import { runClient } from "../helpers/outside-clients.ts";
import { newToken } from "../helpers/processes.ts";
import { MODERN_PROTOCOL_VERSION } from "../hostile/raw.ts";
import { useStack } from "../helpers/stack.ts";

const INSPECTOR = "@modelcontextprotocol/inspector@2.12.0";

const stack = useStack();

/** One Inspector CLI run with the token in its --header option (how its users pass one), answering one JSON
 *  object: the result on stdout, or an error envelope. npx fetches the Inspector on the first run. */
async function inspector(route: "/mcp" | "/sse", args: string[], token = stack.relay.token) {
  const url = new URL(route, stack.relay.url).href;
  const run = await runClient(["npx", "-y", INSPECTOR, "--cli", url, "--header", `Authorization: Bearer ${token}`, "--format", "json", ...args], {
    timeoutMs: 90_000,
  });
  const printed = run.stdout.trim() || run.stderr.trim().split("\n").at(-1) || "";
  let answer: { result?: any; error?: { code: string; message: string } };
  try {
    answer = JSON.parse(printed);
  } catch {
    throw new Error(`the Inspector printed no JSON answer (exit ${run.code}${run.timedOut ? ", killed at its time limit" : ""}):\n${run.stdout}${run.stderr}`);
  }
  return { code: run.code, result: answer.result, error: answer.error };
}

const toolNames = (result: { tools: { name: string }[] }) => result.tools.map((t) => t.name);

test("Streamable HTTP, modern-first (--protocol-era auto): lists every tool, with no error-severity schema portability problem (--strict)", async () => {
  const listed = await inspector("/mcp", ["--protocol-era", "auto", "--strict", "--method", "tools/list"]);
  expect({ code: listed.code, error: listed.error }).toEqual({ code: 0, error: undefined });
  expect(toolNames(listed.result)).toEqual(Object.keys(TOOLS));
}, 120_000); // the first run fetches the Inspector from the npm registry

test("Streamable HTTP, modern-first: runs a command on the agent", async () => {
  const called = await inspector("/mcp", ["--protocol-era", "auto", "--method", "tools/call", "--tool-name", "run_shell_command", "--tool-arg", "command=echo via-inspector"]);
  expect(called.code).toBe(0);
  expect(called.result.structuredContent).toMatchObject({ stdout: "via-inspector\n", exit_code: 0, machine: stack.agent.machine });
});

test("legacy SSE (/sse): writes a file on the agent", async () => {
  const file = path.join(stack.agent.roots[0]!, "via-inspector-sse.txt");
  const written = await inspector("/sse", ["--method", "tools/call", "--tool-name", "write_file", "--tool-arg", `path=${file}`, "content=over sse"]);
  expect(written.code).toBe(0);
  expect(written.result.structuredContent).toMatchObject({ path: file, created: true, machine: stack.agent.machine });
  expect(fs.readFileSync(file, "utf8")).toBe("over sse");
});

test(`pinned to ${MODERN_PROTOCOL_VERSION} (--protocol-era modern): served, with every tool`, async () => {
  const pinned = await inspector("/mcp", ["--protocol-era", "modern", "--method", "tools/list"]);
  expect({ code: pinned.code, error: pinned.error }).toEqual({ code: 0, error: undefined });
  expect(toolNames(pinned.result)).toEqual(Object.keys(TOOLS));
});

test("a wrong token is refused: the Inspector meets the OAuth challenge, and nothing runs", async () => {
  const marker = path.join(stack.agent.roots[0]!, "inspector-wrong-token");
  const refused = await inspector("/mcp", ["--method", "tools/call", "--tool-name", "run_shell_command", "--tool-arg", `command=touch ${marker}`], newToken());
  expect(refused.code).not.toBe(0);
  expect(refused.error?.code).toBe("auth_required");
  expect(fs.existsSync(marker)).toBe(false);
});
