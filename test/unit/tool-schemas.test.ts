// The tools as the SDK lists them from the relay's McpServers (relay/tools.ts). Each tool's JSON Schema is made once
// per process and shared by every McpServer, frozen, so a server made per request costs no conversion; clients see
// what they saw before: strict input schemas that refuse unknown fields, and each tool's output schema.

import { describe, expect, test } from "bun:test";
import { Client } from "@modelcontextprotocol/client";
import { InMemoryTransport } from "@modelcontextprotocol/server";
import { z } from "zod";
import { TOOLS, toolInputSchema, type ToolName } from "../../protocol.ts";
import { convertedOnce, mcpServerFactory, requestStateCodec, type ToolServices } from "../../relay/tools.ts";

/** tools/list from a fresh McpServer of the factory, through the v2 client over an in-memory link. */
async function listedTools(newServer: ReturnType<typeof mcpServerFactory>) {
  const [clientSide, serverSide] = InMemoryTransport.createLinkedPair();
  await newServer().connect(serverSide);
  const client = new Client({ name: "unit", version: "1" });
  await client.connect(clientSide);
  try {
    return (await client.listTools()).tools;
  } finally {
    await client.close();
  }
}

// Listing never runs a tool, so the factory needs none of the relay's services here.
const newServer = mcpServerFactory({} as ToolServices, requestStateCodec(new Uint8Array(32)));

describe("each tool's JSON Schema", () => {
  test("is converted once: the same frozen object every time it is asked for", () => {
    const schema = convertedOnce(z.object({ path: z.string(), nested: z.object({ depth: z.number() }) }).strict());
    const first = schema["~standard"].jsonSchema.input({ target: "draft-2020-12" });
    expect(schema["~standard"].jsonSchema.input({ target: "draft-2020-12" })).toBe(first);
    expect(Object.isFrozen(first)).toBe(true);
    expect(Object.isFrozen((first.properties as Record<string, object>).nested)).toBe(true);
    expect(schema["~standard"].jsonSchema.output({ target: "draft-2020-12" })).not.toBe(first);
  });

  test("validates as the zod schema does", async () => {
    const schema = convertedOnce(toolInputSchema("read_file"));
    expect(JSON.stringify(await schema["~standard"].validate({ path: "/tmp/x" }))).toBe('{"value":{"path":"/tmp/x"}}');
    expect(JSON.stringify((await schema["~standard"].validate({ path: "/tmp/x", sudo: true })).issues)).toContain("sudo");
  });

  test("is listed by every McpServer alike, unchanged from a conversion of the tool's own schema", async () => {
    const [first, second] = [await listedTools(newServer), await listedTools(newServer)];
    expect(first.map((t) => t.name)).toEqual(Object.keys(TOOLS));
    expect(second).toEqual(first);
    for (const tool of first) {
      const fresh = toolInputSchema(tool.name as ToolName)["~standard"].jsonSchema.input({ target: "draft-2020-12" });
      expect(tool.inputSchema).toEqual({ type: "object", ...fresh } as never);
      expect(tool.outputSchema).toMatchObject({ type: "object" });
    }
  });

  test("refuses unknown fields in every tool's input", async () => {
    for (const tool of await listedTools(newServer)) expect(tool.inputSchema).toMatchObject({ type: "object", additionalProperties: false });
  });
});
