// The agent's side of an approval, with a real policy file: a frame from the relay can answer only the question the
// agent asked, while it is open; it can neither skip the question, nor turn a deny into a run, nor answer late.

import { describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Failure, type AskFrame } from "../../protocol.ts";
import { Gatekeeper, OwnerQuestions } from "../../agent/approvals.ts";
import { OwnerKeys } from "../../agent/owner-keys.ts";
import { relayIdentity } from "../../agent/passkeys.ts";
import { PolicySource } from "../../agent/policy.ts";
import type { FileScope } from "../../agent/paths.ts";

const dir = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), "cr-questions-")));
const policyFile = path.join(dir, "policy.toml");
fs.writeFileSync(policyFile, 'preset = "ask-to-change"\napproval_timeout = 1\n[commands]\ndeny = ["rm -rf *"]\n');
const scope: FileScope = { roots: [dir], home: dir, ownFiles: [policyFile] };

/** A link whose relay side is the test: the ask frames it sent, and whether the relay said it carries approvals. */
function link(carries = true) {
  const sent: AskFrame[] = [];
  const questions = new OwnerQuestions("box", (frame) => (sent.push(frame), true), () => carries);
  return { sent, questions };
}

/** No passkey enrolled: this policy takes the owner's answer as the relay carries it (approvals = "relay"). */
const noPasskeys = { keys: new OwnerKeys(path.join(dir, "owner-keys.json")), relay: relayIdentity("wss://relay.example.com/ws/agent") };
const gate = () => new Gatekeeper(new PolicySource(policyFile, dir), "box", noPasskeys);
const touch = (name: string) => ({ command: `touch ${path.join(dir, name)}` });

async function failureOf(promise: Promise<unknown>): Promise<Failure> {
  const outcome = await promise.then(() => undefined, (e: unknown) => e);
  expect(outcome).toBeInstanceOf(Failure);
  return outcome as Failure;
}

describe("what the relay can and cannot do to a call", () => {
  test("a decision for a question never asked, or asked for another call, changes nothing", async () => {
    const { sent, questions } = link();
    questions.decided({ type: "decision", id: "r1", approve: true, by: "a forger" }); // before any question: ignored
    const admitted = gate().admit("run_shell_command", touch("a"), scope, new AbortController().signal, questions.askerFor("r1"));
    await Bun.sleep(20);
    expect(sent.map((f) => f.id)).toEqual(["r1"]); // it asked, the early "approval" notwithstanding
    questions.decided({ type: "decision", id: "r2", approve: true, by: "a forger" }); // another call's id
    const failure = await failureOf(admitted); // so it expires
    expect(failure.code).toBe("not_approved");
    expect(failure.message).toContain("did not answer within 1 s");
  });

  test("an approval after the question expired runs nothing", async () => {
    const { questions } = link();
    const failure = await failureOf(gate().admit("run_shell_command", touch("b"), scope, new AbortController().signal, questions.askerFor("r3")));
    questions.decided({ type: "decision", id: "r3", approve: true, by: "too late" });
    expect(failure.code).toBe("not_approved");
  });

  test("a deny rule refuses without a question: no frame can approve it", async () => {
    const { sent, questions } = link();
    const failure = await failureOf(gate().admit("run_shell_command", { command: "rm -rf ~" }, scope, new AbortController().signal, questions.askerFor("r4")));
    expect(failure.code).toBe("policy_denied");
    expect(sent).toEqual([]);
  });

  test("the owner's approval lets the call run; a denial fails it with the reason", async () => {
    const { questions } = link();
    const approved = gate().admit("run_shell_command", touch("c"), scope, new AbortController().signal, questions.askerFor("r5"));
    await Bun.sleep(10);
    questions.decided({ type: "decision", id: "r5", approve: true, by: "owner token" });
    expect(await approved).toBe(true);
    const denied = gate().admit("run_shell_command", touch("d"), scope, new AbortController().signal, questions.askerFor("r6"));
    await Bun.sleep(10);
    questions.decided({ type: "decision", id: "r6", approve: false, reason: "no", by: "owner token" });
    expect((await failureOf(denied)).message).toContain(": no. Nothing ran.");
  });

  test("a cancel or a dropped link ends the wait; a relay older than approvals is never asked", async () => {
    const { questions } = link();
    const cancel = new AbortController();
    const cancelled = gate().admit("run_shell_command", touch("e"), scope, cancel.signal, questions.askerFor("r7"));
    const dropped = gate().admit("run_shell_command", touch("f"), scope, new AbortController().signal, questions.askerFor("r8"));
    await Bun.sleep(10);
    cancel.abort();
    questions.dropAll();
    expect((await failureOf(cancelled)).message).toContain("cancelled");
    expect((await failureOf(dropped)).message).toContain("link to the relay dropped");
    const old = link(false);
    const refused = await failureOf(gate().admit("run_shell_command", touch("g"), scope, new AbortController().signal, old.questions.askerFor("r9")));
    expect(refused.message).toContain("older than approvals");
    expect(old.sent).toEqual([]);
  });
});
