// Behaviour that only shows over tens of seconds: quiet streams and long silent calls outlive Bun's idle timeout
// (30 s here; Bun's default of 10 s would cut them), and a dead link is noticed within 30 s on either side.
// An OAuth authorization code expires after 60 s. The tests run concurrently, so the file takes about a minute.

import { describe, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { approve } from "../helpers/oauth.ts";
import { connectClient, startAgent, startRelay } from "../helpers/processes.ts";
import { call } from "../helpers/tools.ts";

const LONG = 40_000;
const TEST_TIMEOUT = 60_000;

describe.concurrent("over tens of seconds", () => {
  test(
    "an authorization code not redeemed within 60 s is refused with invalid_grant",
    async () => {
      await using relay = await startRelay();
      const redirect = "http://127.0.0.1:1/callback";
      const registered = (await (
        await fetch(new URL("/register", relay.url), {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ redirect_uris: [redirect], token_endpoint_auth_method: "none" }),
        })
      ).json()) as { client_id: string };
      const verifier = randomBytes(32).toString("base64url");
      const url = new URL("/authorize", relay.url);
      const params = { response_type: "code", client_id: registered.client_id, redirect_uri: redirect, code_challenge_method: "S256" };
      for (const [key, value] of Object.entries(params)) url.searchParams.set(key, value);
      url.searchParams.set("code_challenge", createHash("sha256").update(verifier).digest("base64url"));
      const code = await approve(url, relay.token);
      await Bun.sleep(61_000);
      const response = await fetch(new URL("/token", relay.url), {
        method: "POST",
        headers: { "Content-Type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({ grant_type: "authorization_code", code, redirect_uri: redirect, code_verifier: verifier, client_id: registered.client_id }),
      });
      expect(response.status).toBe(400);
      expect(((await response.json()) as { error: string }).error).toBe("invalid_grant");
    },
    90_000,
  );

  test(
    "a command silent for 35 s completes over both transports",
    async () => {
      await using relay = await startRelay();
      await using agent = await startAgent(relay, { machine: "patient" });
      await using http = await connectClient(relay, "streamable-http");
      await using sse = await connectClient(relay, "sse");
      const [a, b] = await Promise.all(
        [http, sse].map((client) => call(client, "run_shell_command", { command: "sleep 35; echo done", timeout: 60 }, { timeout: LONG + 5_000 })),
      );
      expect(a!.data.stdout).toBe("done\n");
      expect(b!.data.stdout).toBe("done\n");
      expect(agent.stderr.text).not.toContain("disconnected");
    },
    TEST_TIMEOUT,
  );

  test(
    "an idle /sse stream stays open past the idle timeout, kept alive by comments",
    async () => {
      await using relay = await startRelay();
      const response = await fetch(new URL("/sse", relay.url), { headers: { Authorization: `Bearer ${relay.token}` } });
      const reader = response.body!.getReader();
      const started = Date.now();
      let text = "";
      while (Date.now() - started < 35_000) {
        const { done, value } = await reader.read();
        expect(done).toBe(false);
        text += new TextDecoder().decode(value);
      }
      expect(text).toContain("event: endpoint");
      expect(text.split(": keepalive").length - 1).toBeGreaterThanOrEqual(3);
      await reader.cancel();
    },
    TEST_TIMEOUT,
  );

  test(
    "the relay drops a frozen agent within 30 s and fails its pending call",
    async () => {
      await using relay = await startRelay();
      await using agent = await startAgent(relay, { machine: "frozen" });
      await using client = await connectClient(relay, "streamable-http");
      const pending = call(client, "run_shell_command", { command: "sleep 50", timeout: 120 }, { timeout: LONG + 20_000 });
      await Bun.sleep(200);
      process.kill(agent.proc.pid, "SIGSTOP");
      const frozenAt = Date.now();
      try {
        const r = await pending;
        expect(Date.now() - frozenAt).toBeLessThan(30_000);
        expect(r.isError).toBe(true);
        expect(r.text).toContain("Machine 'frozen' disconnected");
        await relay.stderr.waitFor(/agent link silent; closing machine="frozen"/, 1_000);
      } finally {
        process.kill(agent.proc.pid, "SIGCONT");
      }
    },
    TEST_TIMEOUT,
  );

  test(
    "an agent notices a frozen relay within 30 s and reconnects when it is back",
    async () => {
      await using relay = await startRelay();
      await using agent = await startAgent(relay, { machine: "watchful" });
      process.kill(relay.proc.pid, "SIGSTOP");
      const frozenAt = Date.now();
      try {
        await agent.stderr.waitFor(/disconnected code=4008 reason="the relay fell silent"/, 30_000);
        expect(Date.now() - frozenAt).toBeLessThan(30_000);
      } finally {
        process.kill(relay.proc.pid, "SIGCONT");
      }
      const connected = () => agent.stderr.lines.filter((l) => l.includes("agent info connected")).length;
      while (connected() < 2) await Bun.sleep(100);
    },
    TEST_TIMEOUT,
  );
});
