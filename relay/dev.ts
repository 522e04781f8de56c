// `bun run dev`: the relay on loopback with a generated token and a local agent as its child process, so one
// command gives a working setup to try with Claude Code or the MCP Inspector. The agent is started as a process
// (agent.ts beside server.ts), never imported: the relay's code and the agent's stay apart.

import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { VERSION } from "../protocol.ts";
import { logger } from "../log.ts";

const log = logger("server");

/** The URL to reach a relay listening on every address (0.0.0.0 or ::) from this machine. */
export function loopbackUrl(url: URL): URL {
  const local = new URL(url);
  if (local.hostname === "0.0.0.0" || local.hostname === "[::]") local.hostname = "127.0.0.1";
  return local;
}

/** The dev token: AUTH_TOKEN if it is set, else one kept in ./data/dev-token (made on first run, mode 0600). */
export function devToken(env: Record<string, string | undefined>, dataDir: string): { token: string; source: string } {
  if (env.AUTH_TOKEN) return { token: env.AUTH_TOKEN, source: "from AUTH_TOKEN" };
  const file = path.join(dataDir, "dev-token");
  if (fs.existsSync(file)) return { token: fs.readFileSync(file, "utf8").trim(), source: `kept in ${file}` };
  fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const token = randomBytes(32).toString("hex");
  fs.writeFileSync(file, `${token}\n`, { mode: 0o600 });
  return { token, source: `new, kept in ${file}` };
}

export function devBanner(url: URL, token: string, source: string): string {
  const mcp = new URL("/mcp", url).toString();
  const header = `"Authorization: Bearer ${token}"`;
  return `
Code Remote ${VERSION} (dev): a relay and a local agent, data in ./data/. Ctrl-C stops both.

  MCP URL      ${mcp}   (legacy SSE: ${new URL("/sse", url)})
  Token        ${token}   (${source})

  Claude Code:
    claude mcp add --transport http code-remote ${mcp} --header ${header}
  MCP Inspector:
    npx -y @modelcontextprotocol/inspector@2.12.0 --cli ${mcp} --header ${header} --method tools/list

  From Claude.ai or a phone: put it behind HTTPS (e.g. ngrok http ${url.port}) and set PUBLIC_URL; see README.
`;
}


/** The local agent, with the relay's agent token; it stops with this process even if this one is killed. */
export function startLocalAgent(url: URL, agentToken: string, env: Record<string, string | undefined>) {
  const agent = Bun.spawn([process.execPath, "run", path.join(import.meta.dir, "..", "agent.ts")], {
    env: {
      ...process.env,
      RELAY_URL: new URL("/ws/agent", url).toString().replace(/^http/, "ws"),
      AGENT_TOKEN: agentToken,
      MACHINE_NAME: env.MACHINE_NAME ?? os.hostname().split(".")[0],
      CODE_REMOTE_PARENT_PID: String(process.pid), // the agent stops if this process dies without stopping it
    },
    stdio: ["ignore", "inherit", "inherit"],
  });
  void agent.exited.then((code) => log(code === 0 ? "info" : "warn", "local agent exited", { code }));
  return agent;
}
