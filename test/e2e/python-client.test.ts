// The Python MCP SDK's client (`mcp` 2.3.0, test/clients/python_client.py) against a real relay and agent, as a
// Python user drives it: over Streamable HTTP in the SDK's default negotiation ("auto": `server/discover` first, the
// initialize handshake on a 2025-era server) and in forced "legacy", and the HTTP+SSE client on /sse. Each run lists
// the tools, checks the agent, runs echo, and writes then reads a file. The SDK's venv is made once per clone
// (test/helpers/python.ts); a machine that cannot get the SDK fails here, saying what to install.

import { beforeAll, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { TOOLS } from "../../protocol.ts";
import { MODERN_PROTOCOL_VERSION } from "../hostile/raw.ts";
import { PYTHON_MCP_VERSION, pythonSdk, runPythonClient, type PythonClientReport } from "../helpers/python.ts";
import { useStack } from "../helpers/stack.ts";

/** The newest revision with the initialize handshake: what both SDKs settle on without `server/discover`. */
const LATEST_HANDSHAKE_REVISION = "2025-11-25";
const CONTENT = "written by the Python MCP client\nsecond line: café ✓\n";

type Transport = "streamable-http" | "sse";
type Mode = "auto" | "legacy";
const RUNS: { transport: Transport; mode: Mode }[] = [
  { transport: "streamable-http", mode: "auto" },
  { transport: "streamable-http", mode: "legacy" },
  { transport: "sse", mode: "auto" },
  { transport: "sse", mode: "legacy" },
];

const stack = useStack();

beforeAll(async () => {
  const sdk = await pythonSdk();
  console.log(`python-client: mcp ${PYTHON_MCP_VERSION} venv ${sdk.madeNow ? "made" : "found ready"} in ${sdk.preparedInMs} ms`);
}, 300_000); // a cold venv takes 10 to 15 s here; pip on a slow index may take much longer

/** How the SDK must open: Streamable HTTP in "auto" reaches 2026-07-28 through server/discover;
 *  "legacy" and the SSE transport always use the initialize handshake. */
function expectedOpening(transport: Transport, mode: Mode): Pick<PythonClientReport, "protocol_version" | "opened_with"> {
  const modern = transport === "streamable-http" && mode === "auto";
  return modern ? { protocol_version: MODERN_PROTOCOL_VERSION, opened_with: "discover" } : { protocol_version: LATEST_HANDSHAKE_REVISION, opened_with: "initialize" };
}

for (const { transport, mode } of RUNS) {
  test(`${transport}, mode "${mode}": lists the tools, checks the agent, runs echo, writes and reads a file`, async () => {
    const { machine, roots } = stack.agent;
    const file = path.join(roots[0]!, `python-${transport}-${mode}.txt`);
    const echo = `hello from python over ${transport} (${mode})`;
    const url = new URL(transport === "sse" ? "/sse" : "/mcp", stack.relay.url);
    const { report, run } = await runPythonClient({ url, token: stack.relay.token, transport, mode, file, content: CONTENT, echo });
    console.log(`python-client: ${transport} ${mode}: ${run.ms} ms, ${report.protocol_version}, opened with ${report.opened_with}`);

    expect({ protocol_version: report.protocol_version, opened_with: report.opened_with }).toEqual(expectedOpening(transport, mode));
    expect(report.server_name).toBe("code-remote");
    expect(report.tools).toEqual(Object.keys(TOOLS));
    expect(report.status).toMatchObject({ is_error: false, structured: { connected: 1, machines: [{ machine }] } });
    expect(report.shell).toMatchObject({ is_error: false, structured: { state: "exited", exit_code: 0, stdout: `${echo}\n`, machine } });
    expect(report.write).toMatchObject({ is_error: false, structured: { path: file, bytes_written: Buffer.byteLength(CONTENT), created: true } });
    expect(report.read).toMatchObject({ is_error: false, structured: { path: file, encoding: "utf8", content: CONTENT } });
    expect(fs.readFileSync(file, "utf8")).toBe(CONTENT);
    expect(run.stdout + run.stderr).not.toContain(stack.relay.token);
  });
}

test("no relay log line shows the token the clients sent", () => {
  expect(stack.relay.stdout.text + stack.relay.stderr.text).not.toContain(stack.relay.token);
});
