// The command id the relay chooses (RequestFrame.command_id): the agent's CommandRunner takes it only when it is a
// well-formed id of its own machine that no kept command has, in memory or on disk; anything else gets an id of the
// agent's own, as with a relay that sends none. Real commands in a real state directory.

import { afterAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { CommandRunner, type RunContext } from "../../agent/commands.ts";
import { RequestFrame, parseFrame } from "../../protocol.ts";

const dir = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), "cr-ids-")));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const MACHINE = "idbox";
const OWN_ID = /^[0-9a-f]{12}@idbox$/;

function runner(stateDir = path.join(dir, `state-${Math.random().toString(16).slice(2)}`)) {
  return new CommandRunner({ stateDir, machine: MACHINE, maxForeground: 2, maxBackground: 2 });
}

const context = (commandId?: string): RunContext => ({
  signal: new AbortController().signal,
  receivedAt: Date.now(),
  shell: "/bin/sh",
  roots: [dir],
  home: dir,
  ownFiles: [],
  commandId,
});

const run = (commands: CommandRunner, commandId?: string) => commands.run({ command: "echo hi" }, context(commandId));

describe("a relay-chosen command id", () => {
  test("is taken when it is valid, of this machine and new", async () => {
    const commands = runner();
    const r = await run(commands, "0123456789ab@idbox");
    expect(r).toMatchObject({ command_id: "0123456789ab@idbox", state: "exited", stdout: "hi\n" });
  });

  test.each([
    ["malformed", "not-an-id"],
    ["too short", "0123@idbox"],
    ["upper-case hex", "0123456789AB@idbox"],
    ["for another machine", "0123456789ab@otherbox"],
    ["a path", "../../etc/passwd@idbox"],
    ["an id with two machines", "0123456789ab@otherbox@idbox"],
  ])("%s, is not taken: the agent makes its own", async (_why, requested) => {
    const commands = runner();
    const r = await run(commands, requested);
    expect(r.command_id).toMatch(OWN_ID);
    expect(r.command_id).not.toBe(requested);
    expect(r.stdout).toBe("hi\n");
  });

  test("already used by a kept command, is not taken again (the first command's output stays its own)", async () => {
    const commands = runner();
    const first = await run(commands, "aaaaaaaaaaaa@idbox");
    expect(first.command_id).toBe("aaaaaaaaaaaa@idbox");
    const second = await commands.run({ command: "echo second" }, context("aaaaaaaaaaaa@idbox"));
    expect(second.command_id).toMatch(OWN_ID);
    expect(second.command_id).not.toBe("aaaaaaaaaaaa@idbox");
    const output = await commands.output({ command_id: "aaaaaaaaaaaa@idbox", wait_seconds: 0 }, new AbortController().signal);
    expect(output.output).toBe("hi\n");
  });

  test("used by a command an earlier agent recorded in the same state directory, is not taken", async () => {
    const stateDir = path.join(dir, "shared-state");
    await run(runner(stateDir), "bbbbbbbbbbbb@idbox");
    const next = runner(stateDir); // a new agent, before (and without) recovering: the record on disk still counts
    const r = await run(next, "bbbbbbbbbbbb@idbox");
    expect(r.command_id).toMatch(OWN_ID);
    expect(r.command_id).not.toBe("bbbbbbbbbbbb@idbox");
  });

  test("absent (an older relay), the agent makes its own as before", async () => {
    const r = await run(runner());
    expect(r.command_id).toMatch(OWN_ID);
  });
});

describe("the request frame", () => {
  test("carries command_id; a malformed one still parses (the agent refuses the id, not the frame)", () => {
    for (const command_id of ["0123456789ab@idbox", "not-an-id", undefined]) {
      const parsed = parseFrame(RequestFrame, JSON.stringify({ type: "request", id: "r1", op: "run_shell_command", args: {}, command_id }));
      expect(parsed.ok).toBe(true);
      if (parsed.ok) expect(parsed.frame.command_id).toBe(command_id);
    }
  });

  test("refuses a command_id longer than 200 characters", () => {
    const parsed = parseFrame(RequestFrame, JSON.stringify({ type: "request", id: "r1", op: "run_shell_command", args: {}, command_id: "a".repeat(201) }));
    expect(parsed.ok).toBe(false);
  });
});
