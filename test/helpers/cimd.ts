// A web site of the test's own that publishes OAuth client metadata documents over https, as claude.ai and chatgpt.com
// do: a test CA and a server certificate for localhost made with openssl in a temporary directory (a relay trusts the
// CA through CIMD_TEST_CA_FILE, the test-only setting), and Bun.serve with that certificate on loopback, one route per
// document. It counts the requests per path, so a test can see what the relay fetched and what it took from its cache.

import * as fs from "node:fs";
import * as path from "node:path";
import { tempDir } from "./processes.ts";

export interface DocumentSite extends AsyncDisposable {
  /** https://localhost:PORT */
  origin: string;
  /** The CA's certificate (PEM), for CIMD_TEST_CA_FILE. */
  caFile: string;
  /** Serves `handler` at `route` (a path), replacing what was there; returns the full URL. */
  serve(route: string, handler: (req: Request) => Response | Promise<Response>): string;
  /** Publishes a metadata document at `route` whose client_id is its own URL, plus `fields`; returns that URL. */
  publish(route: string, fields: Record<string, unknown>, headers?: Record<string, string>): string;
  /** How many requests `route` has had. */
  hits(route: string): number;
}

/** Runs openssl with `args` in `dir`, failing with its output. */
function openssl(dir: string, ...args: string[]): void {
  const run = Bun.spawnSync(["openssl", ...args], { cwd: dir, stderr: "pipe", stdout: "pipe" });
  if (run.exitCode !== 0) throw new Error(`openssl ${args[0]} failed: ${run.stderr.toString()}`);
}

/** A CA and a certificate it signed for localhost and 127.0.0.1, in `dir`: ca.pem, site.pem, site.key. */
function makeCertificates(dir: string): void {
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  openssl(dir, "req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Code Remote test CA", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign");
  openssl(dir, "req", ...ec, "-keyout", "site.key", "-out", "site.csr", "-subj", "/CN=localhost");
  fs.writeFileSync(path.join(dir, "site.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
  openssl(dir, "x509", "-req", "-in", "site.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "site.pem", "-days", "2", "-extfile", "site.ext");
}

export function startDocumentSite(): DocumentSite {
  const dir = tempDir("cr-cimd-");
  makeCertificates(dir.path);
  const routes = new Map<string, (req: Request) => Response | Promise<Response>>();
  const hits = new Map<string, number>();
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert: fs.readFileSync(path.join(dir.path, "site.pem"), "utf8"), key: fs.readFileSync(path.join(dir.path, "site.key"), "utf8") },
    fetch(req) {
      const route = new URL(req.url).pathname;
      hits.set(route, (hits.get(route) ?? 0) + 1);
      return routes.get(route)?.(req) ?? new Response("not found", { status: 404 });
    },
  });
  const origin = `https://localhost:${server.port}`;
  const serve = (route: string, handler: (req: Request) => Response | Promise<Response>) => {
    routes.set(route, handler);
    return `${origin}${route}`;
  };
  return {
    origin,
    caFile: path.join(dir.path, "ca.pem"),
    serve,
    publish: (route, fields, headers = {}) => serve(route, () => Response.json({ client_id: `${origin}${route}`, ...fields }, { headers })),
    hits: (route) => hits.get(route) ?? 0,
    [Symbol.asyncDispose]: async () => {
      await server.stop(true);
      dir[Symbol.dispose]();
    },
  };
}
