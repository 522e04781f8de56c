// Small readers for tool results, so tests state what they expect instead of digging through content arrays.

import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import type { McpClient } from "./processes.ts";

export interface ToolCall {
  result: CallToolResult;
  /** The text rendering (first text block). */
  text: string;
  /** structuredContent, typed loosely for assertions. */
  data: Record<string, any>;
  isError: boolean;
}

export async function call(client: McpClient, name: string, args: Record<string, unknown> = {}, options: { timeout?: number } = {}): Promise<ToolCall> {
  const result = (await client.callTool({ name, arguments: args }, undefined, { timeout: options.timeout ?? 60_000 })) as CallToolResult;
  const first = result.content?.[0];
  return {
    result,
    text: first && first.type === "text" ? first.text : "",
    data: (result.structuredContent ?? {}) as Record<string, any>,
    isError: result.isError === true,
  };
}

/** Characters of the whole result as a client receives it (JSON). */
export const resultSize = (r: ToolCall) => JSON.stringify(r.result).length;
