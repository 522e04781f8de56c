// What the relay hands a client to bring back with a retried 2026-07-28 call (`requestState`): signed with a key from
// its configuration (REQUEST_STATE_KEY, or one derived from AUTH_TOKEN), bound to the method and the principal, for
// ten minutes. A state altered, expired, or brought back by another client is refused; one signed by a relay process
// verifies in another started with the same configuration (a restart, a second instance). The relay's refusal of a
// forged state on the wire is in test/e2e/modern.test.ts.

import { afterEach, describe, expect, setSystemTime, test } from "bun:test";
import * as path from "node:path";
import type { ServerContext } from "@modelcontextprotocol/server";
import { ConfigError, loadConfig } from "../../relay/config.ts";
import { requestStateCodec } from "../../relay/tools.ts";
import { NEUTRAL_CWD, newToken, ROOT } from "../helpers/processes.ts";

const TOKEN = newToken();

/** The part of a handler's context the binding reads: the method and the principal. */
const contextOf = (clientId: string, method = "tools/call") => ({ mcpReq: { method }, http: { authInfo: { clientId, token: "t", scopes: [] } } }) as unknown as ServerContext;

const codecFor = (env: Record<string, string>) => requestStateCodec(loadConfig({ AUTH_TOKEN: TOKEN, ...env }).requestStateKey);

/** A state minted by another relay process (a child `bun`) with the environment `env`. */
function mintedElsewhere(env: Record<string, string>, payload: unknown, clientId: string): string {
  const script = `
    const { loadConfig } = await import(${JSON.stringify(path.join(ROOT, "relay/config.ts"))});
    const { requestStateCodec } = await import(${JSON.stringify(path.join(ROOT, "relay/tools.ts"))});
    const ctx = { mcpReq: { method: "tools/call" }, http: { authInfo: { clientId: ${JSON.stringify(clientId)} } } };
    console.log(await requestStateCodec(loadConfig(process.env).requestStateKey).mint(${JSON.stringify(payload)}, ctx));`;
  const child = Bun.spawnSync([process.execPath, "-e", script], { cwd: NEUTRAL_CWD, env: { PATH: process.env.PATH!, ...env } });
  if (child.exitCode !== 0) throw new Error(child.stderr.toString());
  return child.stdout.toString().trim();
}

afterEach(() => setSystemTime());

describe("a request state", () => {
  const codec = codecFor({});

  test("comes back as it was minted, to the client it was minted for", async () => {
    const state = await codec.mint({ step: 2, command_id: "3f9c0a1b2c3d@laptop" }, contextOf("client-a"));
    expect(await codec.verify(state, contextOf("client-a"))).toEqual({ step: 2, command_id: "3f9c0a1b2c3d@laptop" });
  });

  test("altered in its payload or its signature, or made up, is refused", async () => {
    const state = await codec.mint({ step: 2 }, contextOf("client-a"));
    const [prefix, body, mac] = state.split(".") as [string, string, string];
    const forgedBody = Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(body, "base64url").toString()), p: { step: 9 } })).toString("base64url");
    await expect(codec.verify(`${prefix}.${forgedBody}.${mac}`, contextOf("client-a"))).rejects.toThrow("mac");
    await expect(codec.verify(`${prefix}.${body}.${mac.slice(0, -2)}AA`, contextOf("client-a"))).rejects.toThrow("mac");
    await expect(codec.verify("v1.e30.AAAA", contextOf("client-a"))).rejects.toThrow();
    await expect(codec.verify("anything", contextOf("client-a"))).rejects.toThrow("malformed");
  });

  test("brought back by another client, or to another method, is refused", async () => {
    const state = await codec.mint({ step: 2 }, contextOf("client-a"));
    await expect(codec.verify(state, contextOf("client-b"))).rejects.toThrow("bind");
    await expect(codec.verify(state, contextOf("client-a", "prompts/get"))).rejects.toThrow("bind");
  });

  test("is refused once ten minutes have passed", async () => {
    const state = await codec.mint({ step: 2 }, contextOf("client-a"));
    setSystemTime(new Date(Date.now() + 9 * 60_000));
    expect(await codec.verify(state, contextOf("client-a"))).toEqual({ step: 2 });
    setSystemTime(new Date(Date.now() + 2 * 60_000));
    await expect(codec.verify(state, contextOf("client-a"))).rejects.toThrow("expired");
  });
});

describe("the key", () => {
  test("derived from AUTH_TOKEN: a state minted by one relay process verifies in another, and not under another token", async () => {
    const state = mintedElsewhere({ AUTH_TOKEN: TOKEN }, { step: 1 }, "client-a");
    expect(await codecFor({}).verify(state, contextOf("client-a"))).toEqual({ step: 1 });
    await expect(requestStateCodec(loadConfig({ AUTH_TOKEN: newToken() }).requestStateKey).verify(state, contextOf("client-a"))).rejects.toThrow("mac");
  });

  test("REQUEST_STATE_KEY: shared by two relays with different AUTH_TOKENs, it verifies across them; the derived key does not", async () => {
    const key = newToken();
    const state = mintedElsewhere({ AUTH_TOKEN: newToken(), REQUEST_STATE_KEY: key }, { step: 1 }, "client-a");
    expect(await codecFor({ REQUEST_STATE_KEY: key }).verify(state, contextOf("client-a"))).toEqual({ step: 1 });
    await expect(codecFor({}).verify(state, contextOf("client-a"))).rejects.toThrow("mac");
  });

  test("REQUEST_STATE_KEY shorter than 32 bytes, or repetitive, is refused by name", () => {
    expect(() => codecFor({ REQUEST_STATE_KEY: "too-short" })).toThrow(ConfigError);
    expect(() => codecFor({ REQUEST_STATE_KEY: "too-short" })).toThrow(/REQUEST_STATE_KEY must be at least 32 characters/);
    expect(() => codecFor({ REQUEST_STATE_KEY: "ab".repeat(20) })).toThrow(/REQUEST_STATE_KEY is too repetitive/);
  });
});
