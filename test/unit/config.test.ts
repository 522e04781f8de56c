// Reading settings from the environment: an empty value is the same as an unset one (what `PORT=` in a .env file
// or compose's `${NAME:-}` produce), and a wrong value is refused with the variable's name, for both processes.

import { describe, expect, test } from "bun:test";
import { loadConfig as loadAgentConfig, ConfigError as AgentConfigError } from "../../agent/config.ts";
import { loadConfig as loadServerConfig, ConfigError as ServerConfigError } from "../../relay/config.ts";
import { FLY_PROXY_NETWORKS, LOCAL_PROXY_NETWORKS, parseCidr } from "../../relay/networks.ts";

const TOKEN = "0123456789abcdef0123456789abcdef0123456789abcdef";

describe("the relay's settings", () => {
  const load = (env: Record<string, string>) => loadServerConfig({ AUTH_TOKEN: TOKEN, ...env });

  test("empty numbers and networks take their defaults", () => {
    const config = load({ PORT: "", CLIENT_MAX_CALLS_IN_FLIGHT: " ", CLIENT_CALLS_PER_MINUTE: "", AUDIT_RETENTION_DAYS: "", REQUIRE_PRIVATE_NETWORK: "true", PRIVATE_NETWORKS: "" });
    expect(config.port).toBe(8080);
    expect(config.callLimits).toEqual({ maxInFlight: 32, perMinute: 1200 });
    expect(config.auditRetentionDays).toBe(90);
    expect(config.privateNetworks).toHaveLength(2); // Tailscale's IPv4 and IPv6 ranges
  });

  test("set values are used, and wrong ones are refused by name", () => {
    expect(load({ PORT: "9000", AUDIT_RETENTION_DAYS: "0" })).toMatchObject({ port: 9000, auditRetentionDays: 0 });
    expect(() => load({ PORT: "eighty" })).toThrow(ServerConfigError);
    expect(() => load({ PORT: "eighty" })).toThrow(/PORT must be a whole number/);
    expect(() => load({ CLIENT_MAX_CALLS_IN_FLIGHT: "0" })).toThrow(/CLIENT_MAX_CALLS_IN_FLIGHT/);
  });

  test("TRUSTED_PROXIES: defaults by TRUST_PROXY, a list replaces them, and a list without TRUST_PROXY is refused", () => {
    const networks = (list: string) => list.split(",").map(parseCidr);
    expect(load({}).trustedProxies).toEqual([]);
    expect(load({ TRUST_PROXY: "fly" }).trustedProxies).toEqual(networks(FLY_PROXY_NETWORKS));
    expect(load({ TRUST_PROXY: "1", TRUSTED_PROXIES: "" }).trustedProxies).toEqual(networks(LOCAL_PROXY_NETWORKS));
    expect(load({ TRUST_PROXY: "2", TRUSTED_PROXIES: "10.0.0.5, fd00::/8" }).trustedProxies).toEqual(networks("10.0.0.5,fd00::/8"));
    expect(() => load({ TRUSTED_PROXIES: "10.0.0.5" })).toThrow(/TRUSTED_PROXIES is set but TRUST_PROXY is none/);
    expect(() => load({ TRUST_PROXY: "fly", TRUSTED_PROXIES: "10.0.0.0/99" })).toThrow(/TRUSTED_PROXIES: '10.0.0.0\/99' is not a network/);
  });
});

describe("the agent's settings", () => {
  const load = (env: Record<string, string>) => loadAgentConfig({ RELAY_URL: "ws://127.0.0.1:8080/ws/agent", AGENT_TOKEN: TOKEN, MACHINE_NAME: "box", ALLOWED_ROOTS: "/tmp", ...env });

  test("empty numbers take their defaults", () => {
    const config = load({ MAX_CONCURRENT_COMMANDS: "", MAX_BACKGROUND_COMMANDS: "", LOG_MAX_BYTES: "", LOG_FILES: "" });
    expect(config.maxConcurrentCommands).toBe(8);
    expect(config.maxBackgroundCommands).toBe(16);
    expect(config.log).toMatchObject({ maxBytes: 10 * 1024 * 1024, files: 5 });
  });

  test("wrong numbers are refused by name", () => {
    expect(() => load({ MAX_CONCURRENT_COMMANDS: "many" })).toThrow(AgentConfigError);
    expect(() => load({ MAX_CONCURRENT_COMMANDS: "many" })).toThrow(/MAX_CONCURRENT_COMMANDS must be a whole number/);
  });
});
