// Hostile commands for run_shell_command (research/security.md §4.5, "Shell tool"), against a real agent: output
// that is binary or escape-sequence spam, commands that read stdin or want a terminal, stop themselves, die by
// signals or exit above 128, and arguments with NUL, unicode or nothing at all. Each is reported faithfully and
// within its timeout, and the agent keeps serving other calls meanwhile. (Floods of 50 and 200 MB, timeouts of
// whole process groups and the clean environment are in test/e2e/shell.test.ts.)

import { beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { eventually, newToken, pidsMatching } from "../helpers/processes.ts";
import { useStack } from "../helpers/stack.ts";
import { call, resultSize } from "../helpers/tools.ts";

const AGENT_TOKEN = newToken();
const stack = useStack({ relay: { env: { AGENT_TOKEN } }, agent: { machine: "shell", token: AGENT_TOKEN }, client: "streamable-http" });
let root: string;

beforeAll(() => {
  root = stack.agent.roots[0]!;
});

const run = (args: Record<string, unknown>) => call(stack.client, "run_shell_command", args);
/** A number unlikely to appear in any other process's command line. */
const tag = () => String(3_000_000 + Math.floor(Math.random() * 6_000_000));

describe("output", () => {
  test("binary and invalid UTF-8 output: bytes counted exactly, invalid ones shown as U+FFFD, NUL kept", async () => {
    const r = await run({ command: "printf 'ok\\377\\376\\000end\\300'" });
    expect(r.data).toMatchObject({ exit_code: 0, stdout: "ok\uFFFD\uFFFD\u0000end\uFFFD", stdout_bytes: 9, truncated: false });
  });

  test("5 MB of ANSI escapes and carriage returns stay inside the result budget, escaped, with the exact byte count", async () => {
    const r = await run({ command: "yes \"$(printf '\\r\\033[2J\\033[31mX\\033[0m\\a')\" | head -c 5000000" });
    expect(r.data.exit_code).toBe(0);
    expect(r.data.stdout_bytes).toBe(5_000_000);
    expect(r.data.truncated).toBe(true);
    expect(r.data.stdout.startsWith("\r\u001b[2J\u001b[31mX\u001b[0m\u0007\n")).toBe(true);
    expect(resultSize(r)).toBeLessThan(100_000);
  });

  test("a carriage-return progress bar is passed on as it is, not interpreted", async () => {
    const r = await run({ command: "for i in 1 2 3; do printf '\\r%s%%' $i; done; echo" });
    expect(r.data.stdout).toBe("\r1%\r2%\r3%\n");
  });
});

describe("input and terminals", () => {
  test("a command reading stdin gets end-of-file at once (read fails, cat ends)", async () => {
    const r = await run({ command: 'read line; echo "read:$? [$line]"; cat; echo cat-done' });
    expect(r.data).toMatchObject({ exit_code: 0, stdout: "read:1 []\ncat-done\n", timed_out: false });
  });

  test("a command that wants a terminal is told there is none", async () => {
    const r = await run({ command: "tty; echo status:$?; test -t 0 || echo no-tty-on-stdin" });
    expect(r.data.stdout).toBe("not a tty\nstatus:1\nno-tty-on-stdin\n");
  });

  test.skipIf(!Bun.which("vi"))("an editor with no terminal waits for keys that never come: it is killed at its timeout (skipped without vi)", async () => {
    const file = path.join(root, "edited-by-vi");
    const started = Date.now();
    const r = await run({ command: `vi ${file}`, timeout: 2 });
    expect(r.data).toMatchObject({ state: "timed_out", timed_out: true, exit_code: null });
    expect(r.data.stdout + r.data.stderr).toContain("Vim: Warning: Input is not from a terminal");
    expect(Date.now() - started).toBeLessThan(15_000); // ended by its 2 s timeout, long before the relay's deadline
    expect(fs.existsSync(file)).toBe(false);
  });
});

describe("commands that stop, die or outlive their timeout", () => {
  test("kill -STOP $$ freezes the shell: it is killed at its timeout (SIGTERM cannot end a stopped process, SIGKILL does), and the agent serves others meanwhile", async () => {
    let stoppedEnded = false;
    const stopped = run({ command: "echo before; kill -STOP $$; echo after", timeout: 2 }).finally(() => (stoppedEnded = true));
    await Bun.sleep(500);
    const other = await run({ command: "echo meanwhile" });
    expect(other.data.stdout).toBe("meanwhile\n");
    expect(stoppedEnded).toBe(false); // served while the stopped one was still waiting for its timeout
    const r = await stopped;
    expect(r.data).toMatchObject({ state: "timed_out", timed_out: true, exit_code: null, signal: "SIGKILL", stdout: "before\n" });
    expect(r.text).toContain("timed out and was killed (SIGKILL)");
  });

  test("sleeping past the timeout: timed out with SIGTERM, nothing left running", async () => {
    const t = tag();
    const r = await run({ command: `sleep ${t}`, timeout: 1 });
    expect(r.data).toMatchObject({ state: "timed_out", timed_out: true, exit_code: null, signal: "SIGTERM" });
    await eventually(() => pidsMatching(`sleep ${t}`).length === 0, 5_000, "no sleep left");
  });

  test("a burst of 100 background children: all of them are killed with the group at the timeout", async () => {
    const t = tag();
    const r = await run({ command: `for i in $(seq 100); do sleep ${t} & done; wait`, timeout: 2 });
    expect(r.data.timed_out).toBe(true);
    await eventually(() => pidsMatching(`sleep ${t}`).length === 0, 6_000, "all 100 children gone");
  });

  const endings: [string, string, Record<string, unknown>][] = [
    ["exit 200", "exit 200", { state: "exited", exit_code: 200, signal: null }],
    ["exit 255", "exit 255", { state: "exited", exit_code: 255, signal: null }],
    ["exit 256 (the shell keeps the low 8 bits)", "exit 256", { state: "exited", exit_code: 0, signal: null }],
    ["death by SIGTERM", "kill -TERM $$", { state: "killed", exit_code: null, signal: "SIGTERM", timed_out: false }],
    ["death by SIGSEGV", "kill -SEGV $$", { state: "killed", exit_code: null, signal: "SIGSEGV", timed_out: false }],
    ["death by SIGKILL", "kill -KILL $$", { state: "killed", exit_code: null, signal: "SIGKILL", timed_out: false }],
    ["a child's death by signal, as the shell reports it (128 + 11)", "sh -c 'kill -SEGV $$'", { state: "exited", exit_code: 139, signal: null }],
  ];
  for (const [what, command, expected] of endings) {
    test(`${what} is reported as it happened`, async () => {
      const r = await run({ command });
      expect(r.data).toMatchObject(expected);
      expect(r.isError).toBe(false);
    });
  }
});

describe("arguments", () => {
  test("an empty command is refused by the schema, and so is an empty argv", async () => {
    for (const args of [{ command: "" }, { argv: [] }]) {
      const r = await run(args);
      expect(r.isError).toBe(true);
      expect(r.text).toContain("Invalid arguments for tool run_shell_command");
    }
  });

  test("an empty program name ends like a missing program in a shell: exit 127", async () => {
    const r = await run({ argv: [""] });
    expect(r.data).toMatchObject({ exit_code: 127, stderr: "code-remote: cannot run '': ENOENT\n" });
  });

  test("a command of blanks runs nothing and exits 0", async () => {
    expect((await run({ command: "   " })).data).toMatchObject({ exit_code: 0, stdout: "", stderr: "" });
  });

  const nuls: [string, Record<string, unknown>][] = [
    ["argv", { argv: ["printf", "%s", "a\u0000b"] }],
    ["the command", { command: "echo a\u0000b" }],
    ["an environment value", { command: "echo $X", env: { X: "a\u0000b" } }],
  ];
  for (const [where, args] of nuls) {
    test(`a NUL byte in ${where} is refused with a clear error, and nothing runs`, async () => {
      const r = await run(args);
      expect(r.isError).toBe(true);
      expect(r.text).toContain("NUL byte");
    });
  }

  test("unicode in argv, including RTL override and zero-width characters, reaches the program byte for byte", async () => {
    const text = "héllo ☃ 𝄞 \u202Egnp.exe \u200B\u200D end";
    const r = await run({ argv: ["printf", "%s", text] });
    expect(r.data).toMatchObject({ exit_code: 0, stdout: text, stdout_bytes: Buffer.byteLength(text) });
  });

  test("cd outside the allowed roots is allowed: the shell is not confined (documented)", async () => {
    expect((await run({ command: "cd / && pwd" })).data.stdout).toBe("/\n");
  });

  test("the command's environment holds neither the agent's token nor the client's", async () => {
    const r = await run({ command: "env; cat /proc/self/environ" });
    expect(r.data.stdout).not.toContain(AGENT_TOKEN);
    expect(r.data.stdout).not.toContain(stack.relay.token);
  });
});

test("after all of the above the agent is the same process and answers at once", async () => {
  expect(stack.agent.proc.exitCode).toBeNull();
  const status = await call(stack.client, "check_agent_status");
  expect(status.data.machines[0]).toMatchObject({ machine: "shell", pid: stack.agent.proc.pid, running_commands: 0, queued_commands: 0 });
});
