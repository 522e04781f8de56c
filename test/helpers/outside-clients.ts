// Clients nobody here wrote (the Python SDK, the MCP Inspector CLI, the conformance suite), run as programs to
// their end against a real relay.

import { minimalEnv, NEUTRAL_CWD } from "./processes.ts";

export interface ClientRun {
  /** The exit code; null when the run was killed (see timedOut). */
  code: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  ms: number;
}

export interface ClientRunOptions {
  /** Added to a minimal PATH and HOME, as for the relay and agents: nothing else of this process's environment
   *  (no token of the developer's) reaches the client. Secrets go here, never into argv, where `ps` shows them. */
  env?: Record<string, string>;
  /** Killed after this long; the run then reports timedOut. */
  timeoutMs: number;
}

/** Runs a client program to its end from a neutral directory and collects its output. */
export async function runClient(argv: string[], options: ClientRunOptions): Promise<ClientRun> {
  const started = performance.now();
  const proc = Bun.spawn(argv, {
    cwd: NEUTRAL_CWD,
    env: minimalEnv({ NO_COLOR: "1", ...options.env }),
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    timeout: options.timeoutMs,
    killSignal: "SIGKILL",
  });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  return { code: proc.signalCode ? null : code, stdout, stderr, timedOut: proc.signalCode === "SIGKILL", ms: Math.round(performance.now() - started) };
}
