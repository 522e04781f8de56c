// The Python MCP SDK (`mcp` 2.3.0) for tests that drive the relay with a client nobody here wrote. Its venv is made
// on first use and kept in node_modules/.cache (ignored, and gone with `rm -rf node_modules`), so one machine
// (one clone) makes it once: 10 to 15 s cold, about a second to confirm later.
//
// PyPI cannot be reached from the project's machines; they carry a local wheel index instead (/opt/pypi/files,
// /opt/pypi-more/files), which pip uses alone when it is there. Elsewhere pip asks its configured index (PyPI by
// default). When neither works the test fails, saying what to install: a client test that skips quietly proves
// nothing.

import * as fs from "node:fs";
import * as path from "node:path";
import { runClient, type ClientRun } from "./outside-clients.ts";
import { ROOT } from "./processes.ts";

export const PYTHON_MCP_VERSION = "2.3.0";
const REQUIREMENT = `mcp==${PYTHON_MCP_VERSION}`;
const VENV = path.join(ROOT, "node_modules", ".cache", "code-remote", `python-mcp-${PYTHON_MCP_VERSION}`);
const LOCAL_WHEELS = ["/opt/pypi/files", "/opt/pypi-more/files"];
const CLIENT_SCRIPT = path.join(ROOT, "test", "clients", "python_client.py");

export interface PythonSdk {
  python: string;
  /** How long making (or, when it was already made, confirming) the venv took. */
  preparedInMs: number;
  madeNow: boolean;
}

let prepared: Promise<PythonSdk> | undefined;

/** A Python interpreter that has the MCP SDK: the cached venv, made first if it is missing or broken. */
export const pythonSdk = (): Promise<PythonSdk> => (prepared ??= prepareVenv());

async function prepareVenv(): Promise<PythonSdk> {
  const started = performance.now();
  const python = path.join(VENV, "bin", "python");
  const elapsed = () => Math.round(performance.now() - started);
  if (await hasSdk(python)) return { python, preparedInMs: elapsed(), madeNow: false };
  // Whatever is there is half made (an interrupted install) or made by an interpreter that has since gone.
  fs.rmSync(VENV, { recursive: true, force: true });
  fs.mkdirSync(path.dirname(VENV), { recursive: true });
  await step(["python3", "-m", "venv", VENV], "python3 -m venv", "Install Python 3.10 or newer with its venv module (Debian: apt-get install python3-venv).");
  // One retry with a short timeout: an index that cannot be reached should fail the run in seconds, not minutes.
  const pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--retries", "1", "--timeout", "15"];
  await step([...pip, ...wheelSource(), REQUIREMENT], `pip install ${REQUIREMENT}`, howToInstall());
  if (!(await hasSdk(python))) throw new Error(`pip installed ${REQUIREMENT} into ${VENV}, but that Python cannot import it.`);
  return { python, preparedInMs: elapsed(), madeNow: true };
}

/** True when `python` runs and imports the SDK's HTTP and SSE clients at the pinned version. */
async function hasSdk(python: string): Promise<boolean> {
  if (!fs.existsSync(python)) return false;
  const check = `import importlib.metadata, mcp.client.sse, mcp.client.streamable_http; print(importlib.metadata.version("mcp"))`;
  const run = await runClient([python, "-c", check], { timeoutMs: 30_000 });
  return run.code === 0 && run.stdout.trim() === PYTHON_MCP_VERSION;
}

const localWheels = () => LOCAL_WHEELS.filter((dir) => fs.existsSync(dir));

/** The machine's local wheel index alone when it has one (no waiting on an index it cannot reach), else pip's own. */
function wheelSource(): string[] {
  const local = localWheels();
  return local.length > 0 ? ["--no-index", ...local.flatMap((dir) => ["--find-links", dir])] : [];
}

function howToInstall(): string {
  const local = localWheels();
  const tried = local.length > 0 ? `the local wheel index (${local.join(", ")}) does not hold it with all its dependencies` : `this machine has no local wheel index (${LOCAL_WHEELS.join(", ")}) and pip could not get it from its index (PyPI)`;
  return (
    `The Python client tests need ${REQUIREMENT}: ${tried}. Either make PyPI reachable, or put the wheels of ${REQUIREMENT} ` +
    `and its dependencies (\`pip download ${REQUIREMENT} -d DIR\` on a machine that reaches PyPI) in ${LOCAL_WHEELS[0]}, ` +
    `or make the venv yourself: python3 -m venv ${VENV} && ${VENV}/bin/pip install ${REQUIREMENT}`
  );
}

/** Runs one setup command (bounded to two minutes), failing with what it printed and what to do about it. */
async function step(argv: string[], what: string, advice: string): Promise<void> {
  let run: ClientRun;
  try {
    run = await runClient(argv, { timeoutMs: 120_000 });
  } catch (error) {
    throw new Error(`${what} could not start (${(error as Error).message}). ${advice}`);
  }
  if (run.code === 0) return;
  const said = (run.stderr || run.stdout).trim().split("\n").slice(-8).join("\n");
  throw new Error(`${what} ${run.timedOut ? "took longer than 2 minutes" : `failed (exit ${run.code})`}:\n${said}\n${advice}`);
}

export interface PythonClientOptions {
  /** The relay's /mcp (streamable-http) or /sse (sse) URL; the token never goes into it. */
  url: URL;
  token: string;
  transport: "streamable-http" | "sse";
  /** The SDK's negotiation: "auto" (its default: server/discover first, initialize on a 2025-era server) or "legacy". */
  mode: "auto" | "legacy";
  /** A path inside the agent's roots for the write/read round trip, and what to write there. */
  file: string;
  content: string;
  /** What run_shell_command echoes. */
  echo: string;
}

/** What test/clients/python_client.py saw, as it printed it. */
export interface PythonClientReport {
  protocol_version: string;
  opened_with: "discover" | "initialize";
  server_name: string | null;
  tools: string[];
  status: ToolOutcome;
  shell: ToolOutcome;
  write: ToolOutcome;
  read: ToolOutcome;
}

export interface ToolOutcome {
  is_error: boolean;
  structured: Record<string, any> | null;
  text: string;
}

/** Runs the Python SDK's client against the relay; throws with its output when it fails or prints no report. */
export async function runPythonClient(options: PythonClientOptions): Promise<{ report: PythonClientReport; run: ClientRun }> {
  const { python } = await pythonSdk();
  const argv = [python, CLIENT_SCRIPT, options.url.href, "--transport", options.transport, "--mode", options.mode];
  argv.push("--file", options.file, "--content", options.content, "--echo", options.echo);
  const run = await runClient(argv, { env: { MCP_BEARER_TOKEN: options.token }, timeoutMs: 60_000 });
  const failure = whatWentWrong(run);
  if (failure) throw new Error(`the Python client (${options.transport}, ${options.mode}) ${failure}:\n${run.stderr}${run.stdout}`);
  return { report: JSON.parse(run.stdout) as PythonClientReport, run };
}

function whatWentWrong(run: ClientRun): string | undefined {
  if (run.timedOut) return "timed out";
  if (run.code !== 0) return `exited ${run.code}`;
  if (!run.stdout.trimStart().startsWith("{")) return "printed no report";
  return undefined;
}
