// Chaos: the agent's WebSocket dies without a close frame (security.md §4.4, second row). Two ways: a TCP proxy
// between agent and relay turns the live connection into a black hole (no FIN, no RST: a dead NAT or a pulled
// cable), and the agent process is frozen with SIGSTOP. Heartbeats must notice within 25 s (ping every 5 s, a link
// silent for 20 s is closed), the call in flight must fail, the agent must reconnect by itself, and the request
// must not run a second time (at most once). The two tests wait on heartbeats, so they run side by side.

import { expect, setDefaultTimeout, test } from "bun:test";
import * as fs from "node:fs";
import { followCommand, startCuttableProxy } from "../helpers/chaos.ts";
import { connectClient, startAgent, startRelay } from "../helpers/processes.ts";
import { call } from "../helpers/tools.ts";

setDefaultTimeout(90_000);

/** Heartbeat promise (ARCHITECTURE.md): a dead link is noticed within 25 s; 10 s more for a busy machine. */
const NOTICE_MS = 35_000;

const lineCount = (file: string) => (fs.existsSync(file) ? fs.readFileSync(file, "utf8").split("\n").filter(Boolean).length : 0);

test.concurrent("a link cut without a close frame is noticed by both sides, fails the call in flight, and the agent reconnects without a replay", async () => {
  await using relay = await startRelay();
  await using proxy = startCuttableProxy(relay.port);
  await using agent = await startAgent(relay, { machine: "far", env: { RELAY_URL: `ws://127.0.0.1:${proxy.port}/ws/agent` } });
  await using client = await connectClient(relay, "streamable-http");
  const counter = `${agent.roots[0]}/runs`;

  // Each run of the command appends a line; it outlives the cut so a replay would show as a second line.
  const pending = call(client, "run_shell_command", { command: `echo ran >> ${counter}; sleep 45; echo finished`, timeout: 120 });
  for (let i = 0; i < 100 && lineCount(counter) === 0; i++) await Bun.sleep(50);
  expect(lineCount(counter)).toBe(1);

  const cutAt = Date.now();
  proxy.cut();
  const failed = await pending;
  const relayNoticedMs = Date.now() - cutAt;
  expect(failed.isError).toBe(true);
  expect(failed.text).toBe("Machine 'far' disconnected before answering; the operation may or may not have completed.");
  expect(relayNoticedMs).toBeLessThan(NOTICE_MS);
  await relay.stderr.waitFor(/agent link silent; closing machine="far"/, 1_000);

  await agent.stderr.waitFor(/agent warn disconnected code=4008 reason="the relay fell silent"/, NOTICE_MS - (Date.now() - cutAt));
  const agentNoticedMs = Date.now() - cutAt;
  await agent.stderr.waitFor(/agent info connected/, 10_000, agent.stderr.lines.findIndex((l) => l.includes("fell silent")));
  expect(proxy.accepted).toBe(2);
  console.log(`link cut: the relay failed the call after ${relayNoticedMs} ms, the agent noticed after ${agentNoticedMs} ms and was back after ${Date.now() - cutAt} ms`);

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

test.concurrent("an agent frozen with SIGSTOP is dropped by the relay within 25 s, fails the call, and reconnects once thawed", async () => {
  await using relay = await startRelay();
  await using agent = await startAgent(relay, { machine: "frozen" });
  await using client = await connectClient(relay, "sse");
  const counter = `${agent.roots[0]}/runs`;
  const pending = call(client, "run_shell_command", { command: `echo ran >> ${counter}; sleep 2; echo finished`, timeout: 120 });
  for (let i = 0; i < 100 && lineCount(counter) === 0; i++) await Bun.sleep(50);

  const stoppedAt = Date.now();
  agent.proc.kill("SIGSTOP");
  try {
    const failed = await pending;
    const noticedMs = Date.now() - stoppedAt;
    console.log(`SIGSTOP: the relay failed the call after ${noticedMs} ms`);
    expect(noticedMs).toBeLessThan(NOTICE_MS);
    expect(failed.text).toBe("Machine 'frozen' disconnected before answering; the operation may or may not have completed.");
    const status = await call(client, "check_agent_status");
    expect(status.data.connected).toBe(0);
  } finally {
    agent.proc.kill("SIGCONT");
  }
  const thawedFrom = agent.stderr.lines.length;
  await agent.stderr.waitFor(/agent warn disconnected/, 15_000, thawedFrom);
  await agent.stderr.waitFor(/agent info connected/, 15_000, thawedFrom);
  const again = await call(client, "run_shell_command", { command: `cat ${counter}` });
  expect(again.data.stdout).toBe("ran\n"); // ran once, before the freeze; not replayed after the reconnect
});
