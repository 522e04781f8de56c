// An MCP client in a process of its own, for tests that need the client somewhere the test process is not (in a
// network namespace: netns.ts's startClientIn). It is the v1 SDK's client over Streamable HTTP, made by processes.ts's
// connectClient, driven by JSON lines; it reads RELAY_URL and AUTH_TOKEN from its environment and exits when its
// stdin closes, so it never outlives the test that started it.
//   stdin:  {"id":1,"tool":"read_file","arguments":{...},"timeoutMs":60000}, one call a line; calls run concurrently.
//   stdout: {"ready":true} once connected (or {"failed":"..."}, then it exits 1); then, for each call, any number of
//           {"progressOf":1,"at":<ms epoch>,"message":"..."} and one
//           {"answerTo":1,"issuedAt":<ms epoch>,"answeredAt":<ms epoch>,"isError":false,"text":"..."}, with
//           "error" instead of "isError" and "text" when the call threw (a timeout, a transport failure).
// Times are Date.now() of this machine, the same clock as the test's.

import { connectClient, type McpClient } from "./processes.ts";

/** One call, as a line on stdin. */
export interface CallLine {
  id: number;
  tool: string;
  arguments: Record<string, unknown>;
  timeoutMs: number;
}

/** Bound on the client's goodbye (DELETE of its session) once stdin has closed: the link may be cut by then. */
const CLOSE_TIMEOUT_MS = 2_000;

const say = (line: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(line)}\n`);

async function answer(client: McpClient, line: CallLine): Promise<void> {
  const issuedAt = Date.now();
  try {
    const result = await client.callTool({ name: line.tool, arguments: line.arguments }, undefined, {
      timeout: line.timeoutMs,
      onprogress: (p) => say({ progressOf: line.id, at: Date.now(), message: p.message ?? "" }),
    });
    const first = (result.content as { type: string; text?: string }[] | undefined)?.[0];
    say({ answerTo: line.id, issuedAt, answeredAt: Date.now(), isError: result.isError === true, text: first?.type === "text" ? first.text : "" });
  } catch (e) {
    say({ answerTo: line.id, issuedAt, answeredAt: Date.now(), error: e instanceof Error ? e.message : String(e) });
  }
}

async function main(): Promise<void> {
  const url = process.env.RELAY_URL;
  const token = process.env.AUTH_TOKEN;
  if (!url || !token) throw new Error("RELAY_URL and AUTH_TOKEN must be set");
  const client = await connectClient({ url: new URL(url), token }, "streamable-http");
  say({ ready: true });
  for await (const text of console) {
    if (text.trim()) void answer(client, JSON.parse(text) as CallLine);
  }
  // stdin closed: the test is done (or gone). Calls still open end with the process.
  await Promise.race([client.close().catch(() => {}), Bun.sleep(CLOSE_TIMEOUT_MS)]);
  process.exit(0);
}

main().catch((e) => {
  say({ failed: e instanceof Error ? e.message : String(e) });
  process.exit(1);
});
