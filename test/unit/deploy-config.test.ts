// The deployment files say what the code does: fly.toml keeps one always-on Machine with its volume, health
// check and long idle timeout; docker-compose.yml wires the sandbox to the relay with a token the relay makes (the
// user sets AUTH_TOKEN only) and a health check; .env.example documents every variable that `--help` lists. The
// images themselves are built and run by test/containers.sh.

import { describe, expect, test } from "bun:test";
import * as path from "node:path";
import { ROOT } from "../helpers/processes.ts";

const read = (file: string) => Bun.file(path.join(ROOT, file)).text();

/** The variable names in the "Configuration" table of an entry point's --help. */
function helpVariables(entry: string): string[] {
  const out = Bun.spawnSync([process.execPath, "run", path.join(ROOT, entry), "--help"], { cwd: ROOT, env: { PATH: process.env.PATH! } });
  const table = out.stdout.toString().split(/^Configuration.*$/m)[1] ?? "";
  return [...table.matchAll(/^ {2}([A-Z][A-Z0-9_]+) {2,}/gm)].map((m) => m[1]!);
}

const fly = Bun.TOML.parse(await read("fly.toml")) as Record<string, any>;
const compose = Bun.YAML.parse(await read("docker-compose.yml")) as Record<string, any>;
const example = await read(".env.example");
const dockerfile = await read("Dockerfile");
/** The text of one stage of the Dockerfile, from its FROM line to the next. */
const stage = (name: string) => dockerfile.split(/^FROM /m).find((part) => new RegExp(`^\\S+ AS ${name}$`, "m").test(part)) ?? "";

describe("fly.toml", () => {
  test("builds the server target and stops it with SIGTERM and a grace period", () => {
    expect(fly.build).toMatchObject({ dockerfile: "Dockerfile", "build-target": "server" });
    expect(fly.kill_signal).toBe("SIGTERM");
    expect(fly.kill_timeout).toBeGreaterThanOrEqual(5);
    expect(fly.kill_timeout).toBeLessThanOrEqual(300);
  });

  test("keeps one Machine running with the audit database on a volume at /data", () => {
    expect(fly.mounts).toEqual([{ source: "code_remote_data", destination: "/data" }]);
    expect(fly.env.DATABASE_PATH).toStartWith("/data/");
    expect(fly.http_service).toMatchObject({ internal_port: 8080, force_https: true, auto_stop_machines: "off", min_machines_running: 1 });
  });

  test("checks /health and lets quiet connections live for minutes, not Fly's default 60 s", () => {
    expect(fly.http_service.checks).toContainEqual(expect.objectContaining({ method: "GET", path: "/health" }));
    expect(fly.http_service.http_options.idle_timeout).toBeGreaterThanOrEqual(300);
  });
});

describe("docker-compose.yml", () => {
  const { server, agent } = compose.services;

  test("runs the relay by default, on loopback port 8080, with its data in a named volume", () => {
    expect(server.profiles).toBeUndefined();
    expect(server.build.target).toBe("server");
    expect(server.ports).toEqual(["127.0.0.1:${PORT:-8080}:8080"]);
    expect(server.environment).toMatchObject({ AUTH_TOKEN: "${AUTH_TOKEN:-}", HOST: "0.0.0.0", DATABASE_PATH: "/data/code-remote.db" });
    expect(server.volumes).toContain("data:/data");
  });

  test("adds the sandboxed agent under the full profile, connected over the compose network", () => {
    expect(agent.profiles).toEqual(["full"]);
    expect(agent.build.target).toBe("agent");
    expect(agent.environment).toMatchObject({
      RELAY_URL: "ws://server:8080/ws/agent",
      MACHINE_NAME: "sandbox",
      ALLOWED_ROOTS: "/home/agent/workspace:/tmp",
    });
    // The client token never enters the sandbox, where commands could read it.
    expect(Object.keys(agent.environment)).not.toContain("AUTH_TOKEN");
    expect(agent.cap_drop).toEqual(["ALL"]);
  });

  test("the sandbox gets a token of its own from the relay, through a volume: nothing but AUTH_TOKEN to set", () => {
    // The seed passed AGENT_TOKEN from .env, so a .env with AUTH_TOKEN only left the agent crash-looping.
    expect(Object.keys(agent.environment)).not.toContain("AGENT_TOKEN");
    const [machine, file] = String(server.environment.PROVISION_AGENT_TOKEN).split(":");
    expect(machine).toBe(agent.environment.MACHINE_NAME);
    expect(agent.environment.AGENT_TOKEN_FILE).toBe(file!);
    const dir = path.dirname(file!);
    expect(server.volumes).toContain(`agent-token:${dir}`);
    expect(agent.volumes).toContain(`agent-token:${dir}:ro`);
    expect(Object.keys(compose.volumes)).toContain("agent-token");
    // The relay writes it 0640 as its own user and group (the server stage's 10001); the agent joins that group.
    expect(stage("server")).toContain("groupadd --gid 10001 relay");
    expect(agent.group_add.map(String)).toEqual(["10001"]);
    // The volume's mount point exists in both images with the relay's owner, whichever container mounts it first.
    for (const name of ["server", "agent"]) expect(stage(name)).toMatch(new RegExp(`chown (relay:relay|10001:10001)[^\\n]* ${dir}`));
    expect(stage("agent")).toContain("/usr/local/bin/code-remote-agent-entrypoint");
  });

  test("the sandbox's state (the key that proves it is 'sandbox', its commands' output) is on a volume, so it survives restarts", () => {
    expect(agent.volumes).toContain("agent-state:/home/agent/.local/state/code-remote");
    expect(Object.keys(compose.volumes)).toContain("agent-state");
  });

  test("the agent image has a health check that fails unless the agent is connected (code-remote-agent status)", () => {
    const healthcheck = /^HEALTHCHECK .*\\\n\s*CMD (\[.*\])$/m.exec(stage("agent"));
    expect(JSON.parse(healthcheck![1]!)).toEqual(["/usr/local/bin/code-remote-agent-entrypoint", "status"]);
    expect(agent.healthcheck?.disable).not.toBe(true);
  });
});

describe("docker-compose.yml and .env.example agree", () => {
  const section = (title: string) => example.split(/^# -+ /m).find((part) => part.startsWith(title)) ?? "";
  const variablesIn = (text: string) => [...text.matchAll(/^#?([A-Z][A-Z0-9_]+)=/gm)].map((m) => m[1]!);
  /** Relay variables compose sets itself inside the container, or uses for the host's port or the build. */
  const FIXED_FOR_THE_SERVER = ["HOST", "DATABASE_PATH", "PORT", "INSTALL_TAILSCALE", "PROVISION_AGENT_TOKEN"];
  /** Settings for the project's own tests, which a deployment must never pass on. */
  const TESTS_ONLY = ["CIMD_TEST_CA_FILE"];

  test("every relay variable in .env.example reaches the server container (a setting in .env is never silently lost)", () => {
    const relayVariables = variablesIn(section("relay"));
    expect(relayVariables.length).toBeGreaterThan(8);
    const passed = compose.services.server.environment as Record<string, string>;
    for (const name of relayVariables.filter((v) => !FIXED_FOR_THE_SERVER.includes(v) && !TESTS_ONLY.includes(v))) {
      expect(passed[name], name).toStartWith(`\${${name}:-`);
    }
    expect(compose.services.server.ports[0]).toContain("${PORT:-");
    expect(compose.services.server.build.args.INSTALL_TAILSCALE).toStartWith("${INSTALL_TAILSCALE:-");
  });

  test("the sandboxed agent takes the command limits from .env, and nothing else the header does not say", () => {
    const passed = compose.services.agent.environment as Record<string, string>;
    const fromEnv = Object.entries(passed).filter(([, value]) => String(value).includes("${")).map(([name]) => name);
    expect(fromEnv.sort()).toEqual(["MAX_BACKGROUND_COMMANDS", "MAX_CONCURRENT_COMMANDS"]);
  });
});

describe(".env.example", () => {
  const documented = new Set([...example.matchAll(/^#?([A-Z][A-Z0-9_]+)=/gm)].map((m) => m[1]!));

  test.each(["server.ts", "agent.ts"])("documents every variable that %s --help lists", (entry) => {
    const variables = helpVariables(entry);
    expect(variables.length).toBeGreaterThan(4);
    expect(variables.filter((v) => !documented.has(v))).toEqual([]);
  });

  test("leaves both tokens empty: no default secret to forget to change", () => {
    expect(example).toMatch(/^AUTH_TOKEN=$/m);
    expect(example).toMatch(/^AGENT_TOKEN=$/m);
  });
});
