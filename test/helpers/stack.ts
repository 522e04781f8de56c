// The fixture most suites share: a relay, an agent registered with it, and an MCP client connected to it, started
// before a file's tests and stopped after them. `startStack` gives one stack to a single test (`await using`);
// `useStack` gives one to every test of a file, through beforeAll and afterAll.

import { afterAll, beforeAll } from "bun:test";
import { connectClient, startAgent, startRelay, type Agent, type AgentOptions, type McpClient, type Relay, type RelayOptions, type TransportKind } from "./processes.ts";

export interface StackOptions {
  relay?: RelayOptions;
  /** The agent's options; `false` for a relay alone (default: an agent with a fresh temporary root). */
  agent?: AgentOptions | false;
  /** Connect an MCP client over this transport (default: none, for suites that open their own clients). */
  client?: TransportKind;
}

export interface Stack {
  relay: Relay;
  agent: Agent;
  client: McpClient & AsyncDisposable;
}

/** Starts the relay, then the agent, then the client; disposing stops them in the opposite order. When a later
 *  part fails to start, the parts already started are stopped before the error is thrown. */
export async function startStack(options: StackOptions = {}): Promise<Stack & AsyncDisposable> {
  const parts = new AsyncDisposableStack();
  try {
    const relay = parts.use(await startRelay(options.relay));
    const agent = options.agent === false ? undefined : parts.use(await startAgent(relay, options.agent));
    const client = options.client ? parts.use(await connectClient(relay, options.client)) : undefined;
    const stopped = parts.move();
    return {
      relay,
      get agent() {
        return agent ?? missing("an agent: leave out `agent: false`");
      },
      get client() {
        return client ?? missing("a client: pass `client: \"streamable-http\"` (or \"sse\")");
      },
      [Symbol.asyncDispose]: () => stopped.disposeAsync(),
    };
  } catch (e) {
    await parts.disposeAsync();
    throw e;
  }
}

/** One stack for all the tests of a file: started in beforeAll, stopped in afterAll. Options may be a function,
 *  called in beforeAll, for values that earlier beforeAll hooks prepare (hooks run in the order they are made). */
export function useStack(options: StackOptions | (() => StackOptions) = {}): Stack {
  let started: (Stack & AsyncDisposable) | undefined;
  beforeAll(async () => {
    started = await startStack(typeof options === "function" ? options() : options);
  });
  afterAll(async () => {
    await started?.[Symbol.asyncDispose]();
  });
  const running = () => started ?? missing("a running stack yet: use it inside a test or a later hook");
  return {
    get relay() {
      return running().relay;
    },
    get agent() {
      return running().agent;
    },
    get client() {
      return running().client;
    },
  };
}

function missing(what: string): never {
  throw new Error(`This stack has no ${what}.`);
}
