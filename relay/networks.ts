// Addresses and networks: reading IPv4 and IPv6 addresses (and networks in CIDR form) into bytes, and telling
// whether an address lies in a network. The private-network gate (auth.ts), the proxies whose forwarding headers
// are believed (auth.ts, config.ts) and the per-address limits (limits.ts) all work from these.

/** A network in CIDR form: its address bytes (4 or 16) and how many leading bits must match. */
export interface Cidr {
  bytes: Uint8Array;
  prefix: number;
}

/** Tailscale's address ranges: the gate's default (a second layer, not an identity: see docs/ARCHITECTURE.md). */
export const TAILSCALE_NETWORKS = "100.64.0.0/10,fd7a:115c:a1e0::/48";
/** Where Fly's proxy reaches an app from: the Machine's private IPv4 network, and the organization's private IPv6
 *  network (6PN). Other apps of the same organization also reach it over 6PN, so they are believed too. */
export const FLY_PROXY_NETWORKS = "172.16.0.0/12,fdaa::/16";
/** Where a reverse proxy of your own runs: this host, or a private network (a Docker network, a LAN). */
export const LOCAL_PROXY_NETWORKS = "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7";

/** "::ffff:1.2.3.4" is the IPv4 address 1.2.3.4 seen through an IPv6 socket. */
export const normalizeAddress = (address: string) => address.replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/i, "$1");

/** The bytes of an IPv4 or IPv6 address ("::ffff:1.2.3.4" counts as the IPv4 address), or null. */
export function addressBytes(text: string): Uint8Array | null {
  const address = normalizeAddress(text.replace(/^\[|\]$/g, "").replace(/%.*$/, ""));
  const v4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(address);
  if (v4) {
    const parts = v4.slice(1).map(Number);
    return parts.every((p) => p <= 255) ? Uint8Array.from(parts) : null;
  }
  return address.includes(":") ? ipv6Bytes(address) : null;
}

function ipv6Bytes(address: string): Uint8Array | null {
  const halves = address.split("::");
  if (halves.length > 2) return null;
  const groups = (part: string) => (part === "" ? [] : part.split(":"));
  let head = groups(halves[0]!);
  let tail = halves.length === 2 ? groups(halves[1]!) : [];
  const last = (halves.length === 2 ? tail : head).at(-1);
  const embedded = last?.includes(".") ? addressBytes(last) : null; // e.g. 64:ff9b::1.2.3.4
  if (last?.includes(".") && !embedded) return null;
  if (embedded) {
    const words = [((embedded[0]! << 8) | embedded[1]!).toString(16), ((embedded[2]! << 8) | embedded[3]!).toString(16)];
    if (halves.length === 2) tail = [...tail.slice(0, -1), ...words];
    else head = [...head.slice(0, -1), ...words];
  }
  const missing = 8 - head.length - tail.length;
  if ((halves.length === 2 && missing < 1) || (halves.length === 1 && missing !== 0)) return null;
  const words = [...head, ...Array(halves.length === 2 ? missing : 0).fill("0"), ...tail];
  if (!words.every((w) => /^[0-9a-f]{1,4}$/i.test(w))) return null;
  return Uint8Array.from(words.flatMap((w) => [parseInt(w, 16) >> 8, parseInt(w, 16) & 0xff]));
}

/** Parses "100.64.0.0/10" or "fd7a:115c:a1e0::/48" (a bare address is a /32 or /128); throws on nonsense. */
export function parseCidr(text: string): Cidr {
  const [address, prefixText] = text.trim().split("/");
  const bytes = addressBytes(address ?? "");
  const prefix = prefixText === undefined ? (bytes?.length ?? 0) * 8 : Number(prefixText);
  if (!bytes || !Number.isInteger(prefix) || prefix < 0 || prefix > bytes.length * 8) throw new Error(`'${text.trim()}' is not a network (e.g. 100.64.0.0/10)`);
  return { bytes, prefix };
}

/** Whether `address` lies in one of `networks` (an IPv4 address never matches an IPv6 network, or the reverse). */
export function inNetworks(address: string, networks: readonly Cidr[]): boolean {
  const bytes = addressBytes(address);
  if (!bytes) return false;
  return networks.some(({ bytes: net, prefix }) => {
    if (net.length !== bytes.length) return false;
    for (let bit = 0; bit < prefix; bit++) {
      const mask = 0x80 >> (bit % 8);
      if ((net[bit >> 3]! & mask) !== (bytes[bit >> 3]! & mask)) return false;
    }
    return true;
  });
}
