// Chaos: the agent's WebSocket dies without a close frame (security.md §4.4, second row). Two ways: a TCP proxy
// between agent and relay turns the live connection into a black hole (no FIN, no RST: a dead NAT or a pulled
// cable), and the agent process is frozen with SIGSTOP (what a sleeping laptop looks like to the relay). Heartbeats
// must notice within ~7 s on both sides (a ping every 2 s, checked every second, a link silent for 6 s is closed),
// the call in flight must fail, the agent must reconnect by itself (within a second once it notices; at once when
// its clock says it was stopped or asleep), and the request must not run a second time (at most once). The tests
// wait on heartbeats, so they run side by side.

import { expect, setDefaultTimeout, test } from "bun:test";
import * as fs from "node:fs";
import { followCommand, startCuttableProxy } from "../helpers/chaos.ts";
import { connectClient, startAgent, startRelay } from "../helpers/processes.ts";
import { call } from "../helpers/tools.ts";

setDefaultTimeout(90_000);

/** Heartbeat promise (protocol.ts): a dead link is noticed within ~7 s (6 s of silence, found by a check every
 *  second); 3 s more for a busy machine, which is the target (a half-dead link found within 10 s). */
const NOTICE_MS = 10_000;
/** The agent's first retry after a link that registered comes within 1 s (full jitter); 1 s more for a busy machine. */
const RETRY_MS = 2_000;
/** A machine that wakes is back within this: the sleep is seen by the next 1 s tick, and the reconnect is at once. */
const WAKE_MS = 2_500;

const lineCount = (file: string) => (fs.existsSync(file) ? fs.readFileSync(file, "utf8").split("\n").filter(Boolean).length : 0);

test.concurrent("a link cut without a close frame is noticed by both sides, fails the call in flight, and the agent reconnects without a replay", async () => {
  await using relay = await startRelay();
  await using proxy = startCuttableProxy(relay.port);
  await using agent = await startAgent(relay, { machine: "far", env: { RELAY_URL: `ws://127.0.0.1:${proxy.port}/ws/agent` } });
  await using client = await connectClient(relay, "streamable-http");
  const counter = `${agent.roots[0]}/runs`;

  // Each run of the command appends a line; it outlives the cut and the reconnect (20 s, against ~8 s), so a replay
  // would show as a second line.
  const pending = call(client, "run_shell_command", { command: `echo ran >> ${counter}; sleep 20; echo finished`, timeout: 120 });
  for (let i = 0; i < 100 && lineCount(counter) === 0; i++) await Bun.sleep(50);
  expect(lineCount(counter)).toBe(1);

  const cutAt = Date.now();
  proxy.cut();
  const failed = await pending;
  const relayNoticedMs = Date.now() - cutAt;
  expect(failed.isError).toBe(true);
  expect(failed.text).toMatch(/^Machine 'far' disconnected before answering; it may or may not have run\. Its command_id is [0-9a-f]{12}@far: check with get_command_output once 'far' is back\.$/);
  expect(relayNoticedMs).toBeGreaterThan(3_500); // not before the 6 s of silence (less the age of the last ping, up to 2 s)
  expect(relayNoticedMs).toBeLessThan(NOTICE_MS);
  await relay.stderr.waitFor(/agent link silent; closing machine="far"/, 1_000);

  await agent.stderr.waitFor(/agent warn disconnected code=4008 reason="the relay fell silent"/, NOTICE_MS - (Date.now() - cutAt));
  const agentNoticedMs = Date.now() - cutAt;
  expect(agentNoticedMs).toBeLessThan(NOTICE_MS);
  await agent.stderr.waitFor(/agent info connected/, RETRY_MS, agent.stderr.lines.findIndex((l) => l.includes("fell silent")));
  const backMs = Date.now() - cutAt;
  expect(backMs - agentNoticedMs).toBeLessThan(RETRY_MS);
  expect(proxy.accepted).toBe(2);
  console.log(`link cut: the relay failed the call after ${relayNoticedMs} ms, the agent noticed after ${agentNoticedMs} ms and was back after ${backMs} ms`);

  // The command ran once and goes on running after the cut (the agent lets calls in flight finish); the relay
  // never sent it again.
  const listed = await call(client, "list_commands", { machine: "far" });
  const runs = listed.data.commands.filter((c: { command: string }) => c.command.includes(counter));
  expect(runs).toHaveLength(1);
  const { output, last } = await followCommand(client, runs[0].command_id);
  expect(output).toBe("finished\n");
  expect(last).toMatchObject({ state: "exited", exit_code: 0 });
  expect(lineCount(counter)).toBe(1);
  expect(agent.stderr.lines.filter((l) => l.includes('op="run_shell_command"'))).toHaveLength(1);
});

test.concurrent("an agent frozen with SIGSTOP for 10 s is dropped by the relay within ~7 s, fails the call, and is back within 2 s of waking", async () => {
  await using relay = await startRelay();
  await using agent = await startAgent(relay, { machine: "frozen" });
  await using client = await connectClient(relay, "sse");
  const counter = `${agent.roots[0]}/runs`;
  const pending = call(client, "run_shell_command", { command: `echo ran >> ${counter}; sleep 2; echo finished`, timeout: 120 });
  for (let i = 0; i < 100 && lineCount(counter) === 0; i++) await Bun.sleep(50);

  const stoppedAt = Date.now();
  agent.proc.kill("SIGSTOP");
  let wokeAt = 0;
  try {
    const failed = await pending;
    const noticedMs = Date.now() - stoppedAt;
    console.log(`SIGSTOP: the relay failed the call after ${noticedMs} ms`);
    expect(noticedMs).toBeLessThan(NOTICE_MS);
    expect(failed.text).toMatch(/^Machine 'frozen' disconnected before answering; it may or may not have run\. Its command_id is [0-9a-f]{12}@frozen: check with get_command_output once 'frozen' is back\.$/);
    await relay.stderr.waitFor(/agent link silent; closing machine="frozen"/, 1_000);
    const status = await call(client, "check_agent_status");
    expect(status.data.connected).toBe(0);
    await Bun.sleep(10_000 - (Date.now() - stoppedAt)); // a laptop lid closed for 10 s
  } finally {
    agent.proc.kill("SIGCONT");
    wokeAt = Date.now();
  }
  const thawedFrom = agent.stderr.lines.length;
  // The clock jumped: the agent reconnects at once (whether it read the relay's close first or not).
  const slept = await agent.stderr.waitFor(/the machine slept \(or the agent was stopped\) for \d+ s; reconnecting/, WAKE_MS, thawedFrom);
  expect(Number(/for (\d+) s/.exec(slept)![1])).toBeGreaterThanOrEqual(9);
  await agent.stderr.waitFor(/agent warn disconnected/, WAKE_MS, thawedFrom);
  await agent.stderr.waitFor(/agent info connected/, WAKE_MS, thawedFrom);
  const backMs = Date.now() - wokeAt;
  console.log(`SIGSTOP for ${wokeAt - stoppedAt} ms: back ${backMs} ms after SIGCONT`);
  expect(backMs).toBeLessThan(WAKE_MS);
  const again = await call(client, "run_shell_command", { command: `cat ${counter}` });
  expect(again.data.stdout).toBe("ran\n"); // ran once, before the freeze; not replayed after the reconnect
});

test.concurrent("an agent stopped for 4.5 s (less than the relay's timeout) hangs up itself on waking and is back at once", async () => {
  await using relay = await startRelay();
  await using agent = await startAgent(relay, { machine: "napper" });
  await using client = await connectClient(relay, "streamable-http");
  const relayFrom = relay.stderr.lines.length;

  // A call just answered: the relay has heard the agent a moment before the stop, so 4.5 s stopped stays short of
  // its 6 s of silence (a ping could be up to 2 s old), and more than the agent's 3 s beyond its 1 s tick.
  expect((await call(client, "run_shell_command", { machine: "napper", command: "true" })).isError).toBe(false);
  agent.proc.kill("SIGSTOP");
  await Bun.sleep(4_500);
  agent.proc.kill("SIGCONT");
  const wokeAt = Date.now();
  const thawedFrom = agent.stderr.lines.length;
  await agent.stderr.waitFor(/the machine slept \(or the agent was stopped\) for \d+ s; reconnecting/, WAKE_MS, thawedFrom);
  await agent.stderr.waitFor(/agent warn disconnected code=4009 reason="agent woke from sleep" retry_ms=0/, WAKE_MS, thawedFrom);
  await agent.stderr.waitFor(/agent info connected/, WAKE_MS, thawedFrom);
  const backMs = Date.now() - wokeAt;
  console.log(`SIGSTOP for 4.5 s: back ${backMs} ms after SIGCONT`);
  expect(backMs).toBeLessThan(WAKE_MS);
  // The relay did not time the link out (silent for less than 6 s): the agent hung up, saying why, and the new link
  // is the machine.
  await relay.stderr.waitFor(/agent disconnected machine="napper" code=4009 reason="agent woke from sleep"/, 1_000, relayFrom);
  expect(relay.stderr.lines.slice(relayFrom).some((l) => l.includes("agent link silent"))).toBe(false);
  const status = await call(client, "check_agent_status", { machine: "napper" });
  expect(status.data.machines[0].pid).toBe(agent.proc.pid);
});
