// The private-network gate with real agent connections on loopback: refused from outside PRIVATE_NETWORKS,
// admitted from inside, and a client-written X-Forwarded-For or Fly-Client-IP never gets anyone in unless TRUST_PROXY
// says a proxy of ours wrote it and the connection comes from that proxy (TRUSTED_PROXIES).

import { describe, expect, test } from "bun:test";
import { eventsOf } from "../helpers/audit.ts";
import { startAgent, startRelay, type Relay } from "../helpers/processes.ts";

/** Opens the agent WebSocket with the relay's token and `headers`: "open" or "refused". */
function dial(relay: Relay, headers: Record<string, string> = {}): Promise<"open" | "refused"> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${relay.port}/ws/agent`, { headers: { Authorization: `Bearer ${relay.token}`, ...headers } });
    ws.addEventListener("open", () => (ws.close(), resolve("open")));
    ws.addEventListener("error", () => resolve("refused"));
  });
}

describe("REQUIRE_PRIVATE_NETWORK with Tailscale's ranges (the default)", () => {
  test("a real agent on loopback is refused, and the refusal is logged and audited with address and reason", async () => {
    await using relay = await startRelay({ env: { REQUIRE_PRIVATE_NETWORK: "true" } });
    await relay.stderr.waitFor(/private-network gate on/);
    await using agent = await startAgent(relay, { machine: "outsider", waitConnected: false });
    await agent.stderr.waitFor(/could not register with the relay/);
    await relay.stderr.waitFor(/agent refused path="\/ws\/agent" address="127.0.0.1" reason="not from a private network/);
    expect(eventsOf(relay.databasePath).find((e) => e.kind === "agent_refused_network")?.detail.address).toBe("127.0.0.1");
  });

  test("an address that keeps dialing is recorded once, not once per refusal", async () => {
    await using relay = await startRelay({ env: { REQUIRE_PRIVATE_NETWORK: "true" } });
    for (let i = 0; i < 20; i++) expect(await dial(relay)).toBe("refused");
    expect(eventsOf(relay.databasePath).filter((e) => e.kind === "agent_refused_network")).toHaveLength(1);
    expect(relay.stderr.text.match(/agent refused/g)).toHaveLength(1);
  });

  test("TRUST_PROXY=none: X-Forwarded-For: 100.64.0.1 from a non-private socket is refused", async () => {
    await using relay = await startRelay({ env: { REQUIRE_PRIVATE_NETWORK: "true" } });
    expect(await dial(relay, { "X-Forwarded-For": "100.64.0.1" })).toBe("refused");
  });

  test("TRUST_PROXY=1: the address our proxy appended counts; one the client wrote to its left does not", async () => {
    await using relay = await startRelay({ env: { REQUIRE_PRIVATE_NETWORK: "true", TRUST_PROXY: "1" } });
    expect(await dial(relay, { "X-Forwarded-For": "203.0.113.9, 100.64.0.1" })).toBe("open");
    expect(await dial(relay, { "X-Forwarded-For": "100.64.0.1, 203.0.113.9" })).toBe("refused");
  });

  test("TRUST_PROXY=1 with TRUSTED_PROXIES naming another host: X-Forwarded-For from here is ignored", async () => {
    await using relay = await startRelay({ env: { REQUIRE_PRIVATE_NETWORK: "true", TRUST_PROXY: "1", TRUSTED_PROXIES: "10.0.0.5" } });
    expect(await dial(relay, { "X-Forwarded-For": "100.64.0.1" })).toBe("refused");
  });

  test("TRUST_PROXY=fly: from Fly's proxy (played here by loopback, named in TRUSTED_PROXIES), Fly-Client-IP decides", async () => {
    await using relay = await startRelay({ env: { REQUIRE_PRIVATE_NETWORK: "true", TRUST_PROXY: "fly", TRUSTED_PROXIES: "127.0.0.1" } });
    expect(await dial(relay, { "Fly-Client-IP": "fd7a:115c:a1e0::42" })).toBe("open");
    expect(await dial(relay, { "Fly-Client-IP": "198.51.100.4", "X-Forwarded-For": "100.64.0.1" })).toBe("refused");
    expect(await dial(relay)).toBe("refused"); // no header: the loopback socket, not private
  });

  // Found by review: Fly-Client-IP was believed from any peer, so a direct connection passed the gate and put a false
  // address in the audit log.
  test("TRUST_PROXY=fly: a connection that does not come from Fly's proxy cannot claim an address", async () => {
    await using relay = await startRelay({ env: { REQUIRE_PRIVATE_NETWORK: "true", TRUST_PROXY: "fly" } });
    expect(await dial(relay, { "Fly-Client-IP": "100.64.0.1" })).toBe("refused");
    await relay.stderr.waitFor(/fly-client-ip ignored: the peer is not a trusted proxy.* peer="127.0.0.1"/);
    expect(eventsOf(relay.databasePath).find((e) => e.kind === "agent_refused_network")?.detail.address).toBe("127.0.0.1");
  });
});

test("PRIVATE_NETWORKS can admit other networks: loopback here, and a real agent works", async () => {
  await using relay = await startRelay({ env: { REQUIRE_PRIVATE_NETWORK: "true", PRIVATE_NETWORKS: "100.64.0.0/10, 127.0.0.0/8" } });
  await using agent = await startAgent(relay, { machine: "insider" });
  expect(agent.stderr.text).toContain("connected relay=");
});

test("without REQUIRE_PRIVATE_NETWORK (and no TAILSCALE_AUTHKEY) the gate is off", async () => {
  await using relay = await startRelay();
  expect(await dial(relay)).toBe("open");
  expect(relay.stderr.text).not.toContain("private-network gate on");
});

test("a bad PRIVATE_NETWORKS stops the relay with a clear message", async () => {
  const result = Bun.spawnSync([process.execPath, "run", `${import.meta.dir}/../../server.ts`], {
    env: { PATH: process.env.PATH!, AUTH_TOKEN: "f".repeat(16) + "0123456789abcdef", REQUIRE_PRIVATE_NETWORK: "true", PRIVATE_NETWORKS: "10.0.0.0/99" },
  });
  expect(result.exitCode).toBe(2);
  expect(result.stderr.toString()).toContain("PRIVATE_NETWORKS: '10.0.0.0/99' is not a network");
});
