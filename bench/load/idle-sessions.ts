// Session holder for scenario 11: opens SESSION_COUNT 2025 Streamable HTTP sessions (the v1 SDK client) with the
// relay at RELAY_URL using TOKEN, then holds them idle. Prints "ready N" on stdout once all are open, and exits on
// SIGTERM or by itself after LIFETIME_MS. A process of its own because each such session keeps a GET stream open,
// and Bun's fetch runs at most 256 requests at once per process (BUN_CONFIG_MAX_HTTP_REQUESTS): hundreds of
// sessions in the bench process would leave its later requests queued behind the streams for ever.

import { openSessions } from "../scenarios/scale.ts";

const DEFAULT_LIFETIME_MS = 10 * 60 * 1000;

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

const relay = { url: new URL(required("RELAY_URL")), token: required("TOKEN") };
const lifetimeMs = Number(process.env.LIFETIME_MS ?? DEFAULT_LIFETIME_MS);
setTimeout(() => process.exit(0), lifetimeMs).unref();

try {
  const sessions = await openSessions(relay, Number(required("SESSION_COUNT")));
  const stop = () => void Promise.all(sessions.map((s) => s.close())).finally(() => process.exit(0));
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  console.log(`ready ${sessions.length}`);
} catch (e) {
  console.log(`failed: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
}
