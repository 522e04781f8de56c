// .ci/run restarts podman's API service when it wedges. It must end that service only, found by the socket it
// listens on: the original `pkill -f "podman system service"` also ended any process whose command line matched.
// Here a stand-in service (a process named podman listening on a unix socket in a temp directory) sits beside a
// decoy whose command line says "podman system service", and a listener that is not podman at all.

import { expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import { eventually, ROOT, spawnProgram, tempDir, type ChildProcess } from "../helpers/processes.ts";

/** A process listening on the unix socket `socket`, running under the name `name` (a symlink to bun: the process
 *  name ss shows is the name it was started by). */
async function listener(dir: string, name: string, socket: string): Promise<ChildProcess> {
  const binary = path.join(dir, name);
  fs.symlinkSync(process.execPath, binary);
  const child = spawnProgram([binary, "-e", `Bun.listen({ unix: ${JSON.stringify(socket)}, socket: { data() {} } }); console.log("listening"); setInterval(() => {}, 1e9)`]);
  await child.stdout.waitFor(/listening/);
  return child;
}

const alive = (child: ChildProcess) => child.proc.exitCode === null && child.proc.signalCode === null;

/** `stop_podman_api SOCKET` from .ci/podman-api.sh, as .ci/run calls it. Not spawnSync: this process must go on
 *  reaping its children meanwhile, or the ended service would linger as a zombie that still answers kill -0. */
async function stopPodmanApi(socket: string) {
  const script = spawnProgram(["bash", "-c", 'source .ci/podman-api.sh && stop_podman_api "$1"', "stop", socket], { cwd: ROOT });
  const code = await script.proc.exited;
  await Bun.sleep(20); // let the output reader take the last line
  return { code, stderr: script.stderr.text };
}

test("ends the podman service listening on the socket, by its pid, and leaves a process that only looks like it", async () => {
  using dir = tempDir("cr-ci-");
  const socket = path.join(dir.path, "docker.sock");
  await using service = await listener(dir.path, "podman", socket);
  await using decoy = spawnProgram(["bash", "-c", 'exec -a "podman system service --time=0 unix:///elsewhere.sock" sleep 60']);
  expect(await stopPodmanApi(socket)).toEqual({ code: 0, stderr: "" });
  await eventually(() => !alive(service), 2_000, "the service ended");
  expect(alive(decoy)).toBe(true);
});

test("leaves a socket served by something other than podman alone, and says so", async () => {
  using dir = tempDir("cr-ci-");
  const socket = path.join(dir.path, "docker.sock");
  await using dockerd = await listener(dir.path, "dockerd", socket);
  const r = await stopPodmanApi(socket);
  expect(r.code).toBe(1);
  expect(r.stderr).toContain(`no podman API service listens on ${socket}`);
  await Bun.sleep(200);
  expect(alive(dockerd)).toBe(true);
});

test(".ci/run ends the service only through stop_podman_api, never with a pattern", async () => {
  const run = await Bun.file(path.join(ROOT, ".ci/run")).text();
  expect(run).toContain("stop_podman_api /var/run/docker.sock");
  expect(run).not.toMatch(/pkill|killall/);
});
