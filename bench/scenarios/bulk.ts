// Scenario 5: an 8 MiB file of random bytes written through write_file (base64, in appended chunks of the
// per-call cap, one after another as appends must be) and read back through read_file (base64 byte ranges,
// several in flight, and one at a time for reference). Every round checks the bytes that came back.

import * as path from "node:path";
import { randomBytes } from "node:crypto";
import { MB, median, progress, round } from "../harness.ts";
import type { Figures, Results } from "../results.ts";
import { callOk, type BenchClient, type Rig } from "../rig.ts";
import { BULK_READ_CHUNK_BYTES, BULK_READ_WINDOW, BULK_WRITE_CHUNK_BYTES, type Settings } from "../settings.ts";

async function writeInChunks(client: BenchClient, file: string, data: Buffer): Promise<void> {
  for (let offset = 0; offset < data.length; offset += BULK_WRITE_CHUNK_BYTES) {
    const chunk = data.subarray(offset, offset + BULK_WRITE_CHUNK_BYTES);
    await callOk(client, "write_file", { path: file, content: chunk.toString("base64"), encoding: "base64", append: offset > 0 });
  }
}

async function readRange(client: BenchClient, file: string, offset: number): Promise<Buffer> {
  const result = await callOk(client, "read_file", { path: file, offset, limit: BULK_READ_CHUNK_BYTES, encoding: "base64" });
  return Buffer.from(result.content as string, "base64");
}

/** Reads `size` bytes as byte ranges, `window` calls in flight; the ranges are known in advance from the size. */
async function readInChunks(client: BenchClient, file: string, size: number, window: number): Promise<Buffer> {
  const offsets = Array.from({ length: Math.ceil(size / BULK_READ_CHUNK_BYTES) }, (_, i) => i * BULK_READ_CHUNK_BYTES);
  const chunks: Buffer[] = new Array(offsets.length);
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < offsets.length; i = next++) chunks[i] = await readRange(client, file, offsets[i]!);
  };
  await Promise.all(Array.from({ length: window }, worker));
  return Buffer.concat(chunks);
}

const mbPerS = (bytes: number, ms: number) => round(bytes / MB / (ms / 1000), 1);

async function timed<T>(work: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const started = performance.now();
  const value = await work();
  return { value, ms: performance.now() - started };
}

/** Writes `data` to `file`, reads it back with BULK_READ_WINDOW calls in flight and then one at a time, checks the
 *  bytes, `rounds` times; the median MB/s of each. Scenario 5 runs it on loopback, scenario 12 over delayed links. */
export async function bulkRounds(client: BenchClient, file: string, { fileBytes, rounds }: Settings["bulk"]): Promise<Figures> {
  const data = randomBytes(fileBytes);
  const rates = { write: [] as number[], read: [] as number[], readSequential: [] as number[] };
  for (let i = 0; i < rounds; i++) {
    const write = await timed(() => writeInChunks(client, file, data));
    const read = await timed(() => readInChunks(client, file, fileBytes, BULK_READ_WINDOW));
    const readSequential = await timed(() => readInChunks(client, file, fileBytes, 1));
    if (!read.value.equals(data) || !readSequential.value.equals(data)) throw new Error("the bytes read back differ from those written");
    rates.write.push(mbPerS(fileBytes, write.ms));
    rates.read.push(mbPerS(fileBytes, read.ms));
    rates.readSequential.push(mbPerS(fileBytes, readSequential.ms));
    progress(`   round ${i + 1}/${rounds}: write ${rates.write.at(-1)} MB/s, read ${rates.read.at(-1)} MB/s`);
  }
  return {
    file_bytes: fileBytes,
    write_mb_per_s: median(rates.write),
    read_mb_per_s: median(rates.read),
    read_sequential_mb_per_s: median(rates.readSequential),
    write_calls: Math.ceil(fileBytes / BULK_WRITE_CHUNK_BYTES),
    read_calls: Math.ceil(fileBytes / BULK_READ_CHUNK_BYTES),
    read_window: BULK_READ_WINDOW,
  };
}

export async function bulkTransfer(rig: Rig, settings: Settings, results: Results): Promise<void> {
  results.record("5_bulk", await bulkRounds(rig.client, path.join(rig.root, "bulk.bin"), settings.bulk));
}
