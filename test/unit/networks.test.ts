// The address logic of the private-network gate: parsing networks, matching addresses (IPv4, IPv6, IPv4-mapped),
// and which address to believe behind proxies (TRUST_PROXY).

import { describe, expect, test } from "bun:test";
import type { Server } from "bun";
import { addressBytes, clientAddress, inNetworks, parseCidr, TAILSCALE_NETWORKS } from "../../relay/auth.ts";

const tailscale = TAILSCALE_NETWORKS.split(",").map(parseCidr);

describe("inNetworks with Tailscale's ranges", () => {
  const cases: [string, boolean][] = [
    ["100.64.0.1", true],
    ["100.127.255.254", true],
    ["100.63.255.255", false],
    ["100.128.0.0", false],
    ["::ffff:100.100.1.2", true], // IPv4-mapped IPv6: the IPv4 address it carries
    ["::ffff:8.8.8.8", false],
    ["fd7a:115c:a1e0::1", true],
    ["fd7a:115c:a1e0:ab12:4843:cd96:6258:b240", true],
    ["[fd7a:115c:a1e0::1]", true],
    ["fd7a:115c:a1e1::1", false],
    ["127.0.0.1", false],
    ["::1", false],
    ["10.0.0.1", false],
    ["not an address", false],
    ["", false],
    ["100.64.0.256", false],
    ["1:2:3:4:5:6:7:8:9", false],
  ];
  for (const [address, inside] of cases) test(`${JSON.stringify(address)} is ${inside ? "inside" : "outside"}`, () => expect(inNetworks(address, tailscale)).toBe(inside));
});

describe("parseCidr", () => {
  test("reads IPv4, IPv6 and bare addresses", () => {
    expect(parseCidr("10.0.0.0/8")).toEqual({ bytes: Uint8Array.from([10, 0, 0, 0]), prefix: 8 });
    expect(parseCidr("::1").prefix).toBe(128);
    expect(parseCidr("192.168.1.7").prefix).toBe(32);
    expect(inNetworks("192.168.1.7", [parseCidr("192.168.1.7")])).toBe(true);
    expect(inNetworks("192.168.1.8", [parseCidr("192.168.1.7")])).toBe(false);
    expect(inNetworks("172.20.3.4", [parseCidr("172.16.0.0/12")])).toBe(true);
    expect(inNetworks("64:ff9b::1.2.3.4", [parseCidr("64:ff9b::/96")])).toBe(true);
    expect(inNetworks("anything", [parseCidr("0.0.0.0/0")])).toBe(false);
    expect(inNetworks("203.0.113.5", [parseCidr("0.0.0.0/0")])).toBe(true);
  });

  test("refuses nonsense with what was wrong", () => {
    for (const bad of ["10.0.0.0/33", "fd7a::/129", "10.0.0/8", "example.com/24", "10.0.0.0/x", "::1::2/64"]) {
      expect(() => parseCidr(bad)).toThrow(/is not a network/);
    }
  });

  test("addressBytes reads compressed IPv6", () => {
    expect(addressBytes("::")).toEqual(new Uint8Array(16));
    expect(addressBytes("fd7a::1")?.[15]).toBe(1);
  });
});

describe("clientAddress", () => {
  /** Just enough of a Bun server to ask for the socket's address. */
  const server = (address: string) => ({ requestIP: () => ({ address, family: "IPv4", port: 1 }) }) as unknown as Server<unknown>;
  const request = (headers: Record<string, string>) => new Request("http://relay/ws/agent", { headers });

  test("none: the socket's address, whatever the headers say", () => {
    expect(clientAddress(server("203.0.113.9"), request({ "X-Forwarded-For": "100.64.0.1", "Fly-Client-IP": "100.64.0.1" }), "none")).toBe("203.0.113.9");
    expect(clientAddress(server("::ffff:100.64.0.9"), request({}), "none")).toBe("100.64.0.9");
  });

  test("fly: Fly's header, or the socket when it is missing", () => {
    expect(clientAddress(server("172.16.0.2"), request({ "Fly-Client-IP": "100.64.0.7" }), "fly")).toBe("100.64.0.7");
    expect(clientAddress(server("172.16.0.2"), request({}), "fly")).toBe("172.16.0.2");
  });

  test("N: the Nth address from the right of X-Forwarded-For; what a client wrote on the left is ignored", () => {
    const forwarded = request({ "X-Forwarded-For": "100.64.0.1, 203.0.113.9" }); // the client claims 100.64.0.1
    expect(clientAddress(server("10.0.0.2"), forwarded, 1)).toBe("203.0.113.9");
    expect(clientAddress(server("10.0.0.2"), forwarded, 2)).toBe("100.64.0.1");
    expect(clientAddress(server("10.0.0.2"), forwarded, 3)).toBe("10.0.0.2"); // fewer entries than proxies: the socket
  });
});
