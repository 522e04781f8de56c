// A command in a real pseudo-terminal (script(1) from util-linux), into which a test types answers one by one, as a
// person at a terminal would: for setup's questions, which are asked only when stdin is a terminal.

import { eventually, NEUTRAL_CWD } from "./processes.ts";

export const SCRIPT = Bun.which("script");

export interface Terminal {
  /** Everything printed so far. */
  screen(): string;
  /** Waits for `prompt` on the screen, then types `text` and Enter. */
  answer(prompt: string | RegExp, text: string): Promise<void>;
  /** Waits for `done` on the screen, closes the input and waits for the command to exit; the whole screen. */
  finish(done: (screen: string) => boolean): Promise<string>;
}

/** Runs the words of `argv` (quoted for the shell script(1) starts) in a pseudo-terminal with `env`. Needs SCRIPT. */
export function openTerminal(argv: string[], env: Record<string, string>): Terminal {
  const command = argv.map((word) => `'${word.replaceAll("'", "'\\''")}'`).join(" ");
  const proc = Bun.spawn([SCRIPT!, "-qec", command, "/dev/null"], { cwd: NEUTRAL_CWD, env: { ...env, TERM: "dumb" }, stdin: "pipe", stdout: "pipe", stderr: "pipe" });
  let screen = "";
  void (async () => {
    for await (const chunk of proc.stdout) screen += new TextDecoder().decode(chunk);
  })();
  const shown = (prompt: string | RegExp) => (typeof prompt === "string" ? screen.includes(prompt) : prompt.test(screen));
  return {
    screen: () => screen,
    async answer(prompt, text) {
      await eventually(() => shown(prompt), 10_000, `the prompt '${prompt}'`);
      proc.stdin.write(`${text}\r`);
      proc.stdin.flush();
    },
    async finish(done) {
      await eventually(() => done(screen), 10_000, "the command to finish");
      proc.stdin.end();
      await proc.exited;
      return screen;
    },
  };
}
