// A reverse proxy on loopback that adds the bearer token, for outside clients that cannot be told to send a header
// (the MCP conformance suite). Everything else passes through untouched (Host, Origin and streamed bodies
// included): what a client configured with the token sends. The relay runs behind it as behind any proxy, with
// PUBLIC_URL naming the proxy's origin, so nothing in the product knows it is being tested.

export interface TokenProxy {
  /** The proxy's own origin (http://127.0.0.1:PORT): give it to the relay as PUBLIC_URL and to the client. */
  origin: string;
  /** Where requests go: set once the relay is up (it needs the proxy's origin before it starts). */
  forwardTo(url: URL): void;
  stop(): void;
}

/** Adds `Authorization: Bearer <token>` to every request that has no Authorization header. Bodies stream both
 *  ways, and a client that goes away aborts the request upstream. */
export function tokenProxy(token: string): TokenProxy {
  let upstream: URL | undefined;
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    idleTimeout: 0, // SSE streams stay open as long as the relay keeps them
    async fetch(req) {
      if (!upstream) return new Response("token proxy: no upstream yet (call forwardTo first)", { status: 503 });
      const from = new URL(req.url);
      const headers = new Headers(req.headers); // Host and Origin pass as the client sent them
      if (!headers.has("authorization")) headers.set("authorization", `Bearer ${token}`);
      const response = await fetch(new URL(from.pathname + from.search, upstream), {
        method: req.method,
        headers,
        body: req.body,
        signal: req.signal,
        redirect: "manual",
      });
      return new Response(response.body, { status: response.status, statusText: response.statusText, headers: response.headers });
    },
  });
  return {
    origin: server.url.origin,
    forwardTo: (url) => void (upstream = url),
    stop: () => void server.stop(true),
  };
}
