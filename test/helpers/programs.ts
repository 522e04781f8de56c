// Any program as a child process, with the same handles startRelay and startAgent return (processes.ts starts
// only `bun run <script>`): a compiled agent binary, a peer server on node, a load generator. Used by the
// benchmarks; tests may use it too.

import * as os from "node:os";
import { NEUTRAL_CWD, OutputLog, type ChildProcess } from "./processes.ts";

export interface ProgramOptions {
  /** Added to a minimal PATH and HOME; nothing else of this process's environment is passed on. */
  env?: Record<string, string>;
  /** Working directory (default: a neutral one, so no .env or bunfig.toml is picked up by accident). */
  cwd?: string;
}

/** Starts `argv` with piped stdout and stderr; dispose (or stop) sends SIGTERM and waits for the exit. */
export function spawnProgram(argv: string[], options: ProgramOptions = {}): ChildProcess {
  const proc = Bun.spawn(argv, {
    cwd: options.cwd ?? NEUTRAL_CWD,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: process.env.HOME ?? os.homedir(), ...options.env },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  const alive = () => proc.exitCode === null && proc.signalCode === null;
  const stop = async () => {
    if (alive()) proc.kill("SIGTERM");
    return proc.exited;
  };
  return {
    proc,
    stdout: new OutputLog(proc.stdout),
    stderr: new OutputLog(proc.stderr),
    stop,
    kill: async () => {
      if (alive()) proc.kill("SIGKILL");
      await proc.exited;
    },
    [Symbol.asyncDispose]: async () => {
      if (alive()) await stop();
    },
  };
}
