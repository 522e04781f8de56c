// The MCP client half of test/containers.sh: a real client (the SDK's Client over Streamable HTTP, as Claude
// Code connects) talking to the containerized relay, which forwards every call to the containerized agent.
// It checks what the sandbox promises: commands run there as the unprivileged `agent` user with no
// capabilities, the file tools work inside the workspace, and a path outside the allowed roots is refused.
//
//   RELAY_URL=http://127.0.0.1:8080 AUTH_TOKEN=… bun test/containers-client.ts
//
// The token comes from the environment (never argv, where `ps` shows it) and is never printed.
// Exits 0 when every check passes; otherwise prints what was expected and what came back, and exits 1.

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";

const MACHINE = "sandbox";
const WORKSPACE = "/home/agent/workspace";
/** The agent reconnects with backoff (up to 5 s between tries) if it started before the relay was ready. */
const AGENT_WAIT_MS = 90_000;

class CheckFailed extends Error {}

function check(ok: boolean, what: string, got: unknown): void {
  if (!ok) throw new CheckFailed(`${what}\n  got: ${typeof got === "string" ? got : JSON.stringify(got, null, 2)}`);
  console.log(`containers: ok   ${what}`);
}

interface Answer {
  text: string;
  data: Record<string, any>;
  isError: boolean;
}

async function call(client: Client, name: string, args: Record<string, unknown>): Promise<Answer> {
  const result = (await client.callTool({ name, arguments: args })) as CallToolResult;
  const first = result.content?.[0];
  return {
    text: first?.type === "text" ? first.text : "",
    data: (result.structuredContent ?? {}) as Record<string, any>,
    isError: result.isError === true,
  };
}

/** Polls check_agent_status until the sandbox has registered with the relay. */
async function waitForSandbox(client: Client): Promise<Answer> {
  const deadline = Date.now() + AGENT_WAIT_MS;
  for (;;) {
    const status = await call(client, "check_agent_status", {});
    const machines: { machine: string }[] = status.data.machines ?? [];
    if (machines.some((m) => m.machine === MACHINE)) return status;
    if (Date.now() > deadline) throw new CheckFailed(`machine '${MACHINE}' did not connect within ${AGENT_WAIT_MS / 1000} s\n  got: ${status.text}`);
    await Bun.sleep(1_000);
  }
}

async function main(): Promise<void> {
  const { RELAY_URL: relayUrl, AUTH_TOKEN: token } = process.env;
  if (!relayUrl || !token) throw new CheckFailed("set RELAY_URL (http://127.0.0.1:PORT) and AUTH_TOKEN in the environment");

  const transport = new StreamableHTTPClientTransport(new URL("/mcp", relayUrl), {
    requestInit: { headers: { Authorization: `Bearer ${token}` } },
  });
  const client = new Client({ name: "code-remote-containers-test", version: "1.0.0" });
  await client.connect(transport);
  try {
    const tools = (await client.listTools()).tools.map((t) => t.name);
    check(tools.includes("run_shell_command") && tools.includes("read_file"), "the containerized relay lists its tools over MCP", tools);

    const status = await waitForSandbox(client);
    const sandbox = status.data.machines.find((m: { machine: string }) => m.machine === MACHINE);
    check(
      JSON.stringify(sandbox.allowed_roots) === JSON.stringify([WORKSPACE, "/tmp"]),
      `the sandboxed agent connected as '${MACHINE}' with allowed roots ${WORKSPACE} and /tmp`,
      sandbox,
    );

    const who = await call(client, "run_shell_command", { machine: MACHINE, command: "id -un; id -u; grep '^CapEff' /proc/self/status" });
    const [user, uid, caps] = who.data.stdout?.trim().split("\n") ?? [];
    check(!who.isError && who.data.exit_code === 0, "run_shell_command runs a command in the sandbox", who.text);
    check(user === "agent" && uid !== "0", "the command runs as the non-root user 'agent'", who.data.stdout);
    check(/^CapEff:\s+0+$/.test(caps ?? ""), "the command has no Linux capabilities", caps);

    const inside = `${WORKSPACE}/containers-test.txt`;
    const written = await call(client, "write_file", { machine: MACHINE, path: inside, content: "hello from the container test\n" });
    check(!written.isError && written.data.path === inside, "write_file works inside the workspace", written.text);
    const readBack = await call(client, "read_file", { machine: MACHINE, path: inside });
    check(readBack.data.content === "hello from the container test\n", "read_file reads it back", readBack.text);

    const outside = await call(client, "read_file", { machine: MACHINE, path: "/etc/passwd" });
    check(outside.isError && /Access denied/.test(outside.text), "read_file of /etc/passwd (outside the allowed roots) is refused", outside.text);
    const home = await call(client, "list_directory", { machine: MACHINE, path: "/home/agent" });
    check(home.isError && /Access denied/.test(home.text), "list_directory of /home/agent (above the workspace) is refused", home.text);
  } finally {
    await client.close();
  }
}

try {
  await main();
} catch (e) {
  console.error(`containers: FAIL ${e instanceof CheckFailed ? e.message : e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
  process.exit(1);
}
