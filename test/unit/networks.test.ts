// The address logic of the private-network gate: parsing networks, matching addresses (IPv4, IPv6, IPv4-mapped),
// which address to believe behind proxies (TRUST_PROXY, TRUSTED_PROXIES), and the key per-address limits count under.

import { describe, expect, test } from "bun:test";
import type { Server } from "bun";
import { ClientAddresses, type TrustProxy } from "../../relay/auth.ts";
import { addressKey } from "../../relay/limits.ts";
import { addressBytes, FLY_PROXY_NETWORKS, inNetworks, LOCAL_PROXY_NETWORKS, parseCidr, TAILSCALE_NETWORKS } from "../../relay/networks.ts";

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

describe("ClientAddresses", () => {
  /** Just enough of a Bun server to ask for the socket's address. */
  const server = (address: string) => ({ requestIP: () => ({ address, family: "IPv4", port: 1 }) }) as unknown as Server<unknown>;
  const request = (headers: Record<string, string>) => new Request("http://relay/ws/agent", { headers });
  const networks = (list: string) => list.split(",").map(parseCidr);
  const addressOf = (trust: TrustProxy, proxies: string, peer: string, headers: Record<string, string>) =>
    new ClientAddresses(trust, networks(proxies)).of(server(peer), request(headers));

  test("none: the socket's address, whatever the headers say", () => {
    const none = new ClientAddresses("none", []);
    expect(none.of(server("203.0.113.9"), request({ "X-Forwarded-For": "100.64.0.1", "Fly-Client-IP": "100.64.0.1" }))).toBe("203.0.113.9");
    expect(none.of(server("::ffff:100.64.0.9"), request({}))).toBe("100.64.0.9");
  });

  test("fly: Fly's header from Fly's proxy (its private IPv4 network or 6PN), or the socket when it is missing", () => {
    expect(addressOf("fly", FLY_PROXY_NETWORKS, "172.16.0.2", { "Fly-Client-IP": "100.64.0.7" })).toBe("100.64.0.7");
    expect(addressOf("fly", FLY_PROXY_NETWORKS, "fdaa:0:1:a7b:1::2", { "Fly-Client-IP": "2001:db8::7" })).toBe("2001:db8::7");
    expect(addressOf("fly", FLY_PROXY_NETWORKS, "172.16.0.2", {})).toBe("172.16.0.2");
  });

  test("fly: the header from any other peer is ignored, so a direct connection cannot claim an address", () => {
    for (const peer of ["203.0.113.9", "127.0.0.1", "::1", "100.64.0.3", "fd7a:115c:a1e0::3"]) {
      expect(addressOf("fly", FLY_PROXY_NETWORKS, peer, { "Fly-Client-IP": "100.64.0.1" })).toBe(peer);
    }
  });

  test("N: the Nth address from the right of X-Forwarded-For; what a client wrote on the left is ignored", () => {
    const forwarded = { "X-Forwarded-For": "100.64.0.1, 203.0.113.9" }; // the client claims 100.64.0.1
    expect(addressOf(1, LOCAL_PROXY_NETWORKS, "10.0.0.2", forwarded)).toBe("203.0.113.9");
    expect(addressOf(2, LOCAL_PROXY_NETWORKS, "10.0.0.2", forwarded)).toBe("100.64.0.1");
    expect(addressOf(3, LOCAL_PROXY_NETWORKS, "10.0.0.2", forwarded)).toBe("10.0.0.2"); // fewer entries than proxies: the socket
  });

  test("N: believed only from TRUSTED_PROXIES (by default this host and private networks), never from a public peer", () => {
    const forwarded = { "X-Forwarded-For": "100.64.0.1" };
    for (const proxy of ["127.0.0.1", "::1", "10.1.2.3", "172.17.0.1", "192.168.1.1", "fd00::1"]) expect(addressOf(1, LOCAL_PROXY_NETWORKS, proxy, forwarded)).toBe("100.64.0.1");
    for (const peer of ["203.0.113.9", "2001:db8::1", "100.64.0.2"]) expect(addressOf(1, LOCAL_PROXY_NETWORKS, peer, forwarded)).toBe(peer);
    expect(addressOf(1, "10.0.0.5/32", "127.0.0.1", forwarded)).toBe("127.0.0.1"); // a narrower list
  });

  test("a forwarded value that is no address is not believed: the socket's address is used", () => {
    expect(addressOf("fly", FLY_PROXY_NETWORKS, "172.16.0.2", { "Fly-Client-IP": "unknown" })).toBe("172.16.0.2");
    expect(addressOf(1, LOCAL_PROXY_NETWORKS, "10.0.0.2", { "X-Forwarded-For": "1.2.3.4, <script>" })).toBe("10.0.0.2");
    expect(addressOf(1, LOCAL_PROXY_NETWORKS, "10.0.0.2", { "X-Forwarded-For": "::ffff:1.2.3.4" })).toBe("1.2.3.4");
  });
});

describe("addressKey: what per-address limits count under", () => {
  test("an IPv4 address is its own key; an IPv6 address counts as its /64", () => {
    expect(addressKey("203.0.113.9")).toBe("203.0.113.9");
    expect(addressKey("::ffff:203.0.113.9")).toBe("203.0.113.9");
    expect(addressKey("2001:db8:1:2::1")).toBe("2001:db8:1:2::/64");
    expect(addressKey("2001:0db8:0001:0002:ffff:ffff:ffff:ffff")).toBe("2001:db8:1:2::/64");
    expect(addressKey("2001:db8:1:3::1")).toBe("2001:db8:1:3::/64");
    expect(addressKey("::1")).toBe("0:0:0:0::/64");
    expect(addressKey("unknown")).toBe("unknown");
  });
});
