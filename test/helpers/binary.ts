// The compiled agent as a user runs it: a binary started directly (no bun in front), from a neutral working
// directory, with only the environment the test gives it. Returned processes are AsyncDisposable, like the
// ones in processes.ts.

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { NEUTRAL_CWD, OutputLog, type Relay } from "./processes.ts";

export interface BinaryAgent extends AsyncDisposable {
  proc: Bun.Subprocess<"ignore", "pipe", "pipe">;
  stderr: OutputLog;
  machine: string;
  root: string;
}

/** Longest a one-shot run (--help, a refusal to start) may take. */
const RUN_TIMEOUT_MS = 10_000;

/** Runs the binary to completion and returns its exit code and output. */
export function runBinary(binary: string, args: string[], env: Record<string, string> = {}, cwd = NEUTRAL_CWD) {
  // A bounded wait: a binary that wrongly picked up settings (say, from a .env) would otherwise run forever.
  const result = Bun.spawnSync([binary, ...args], { cwd, env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: os.homedir(), ...env }, timeout: RUN_TIMEOUT_MS });
  return { code: result.exitCode, stdout: result.stdout.toString(), stderr: result.stderr.toString() };
}

export interface BinaryProcess extends AsyncDisposable {
  proc: Bun.Subprocess<"ignore", "pipe", "pipe">;
  stderr: OutputLog;
}

/** Starts the binary with `args` and exactly `env`, as a service manager would; disposing stops it (SIGTERM). */
export function spawnBinary(binary: string, args: string[], env: Record<string, string>): BinaryProcess {
  const proc = Bun.spawn([binary, ...args], { cwd: NEUTRAL_CWD, env, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const stderr = new OutputLog(proc.stderr);
  void new OutputLog(proc.stdout); // drained, so a chatty child never blocks on a full pipe
  const dispose = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill("SIGTERM");
      await proc.exited;
    }
  };
  return { proc, stderr, [Symbol.asyncDispose]: dispose };
}

/** Starts the binary as an agent of `relay` with a fresh temp directory as its only root, and waits until the
 *  relay has welcomed it. */
export async function startBinaryAgent(binary: string, relay: Relay, machine: string): Promise<BinaryAgent> {
  const root = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), "cr-bin-root-")));
  const child = spawnBinary(binary, [], {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    HOME: os.homedir(),
    // Where no configuration file is: a developer's own `setup` must not leak into a test agent.
    XDG_CONFIG_HOME: path.join(root, ".no-config"),
    RELAY_URL: `ws://127.0.0.1:${relay.port}/ws/agent`,
    AGENT_TOKEN: relay.token,
    MACHINE_NAME: machine,
    ALLOWED_ROOTS: root,
    SHELL: "/bin/sh",
  });
  const dispose = async () => {
    await child[Symbol.asyncDispose]();
    fs.rmSync(root, { recursive: true, force: true });
  };
  try {
    await child.stderr.waitFor(/agent info connected/);
  } catch (e) {
    await dispose();
    throw e;
  }
  return { proc: child.proc, stderr: child.stderr, machine, root, [Symbol.asyncDispose]: dispose };
}
