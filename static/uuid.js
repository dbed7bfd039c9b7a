// uuid.js — UUIDv7 (RFC 9562) made in the browser: the id the page gives each message
// when the user presses send, so that every retry of it (after an error, a reconnect or a
// reload) is the same message to the server, which never posts one id twice. No DOM.

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

/** The shape the gateway accepts: lowercase, hyphenated, version 7, RFC 9562 variant. */
export const UUIDV7_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/**
 * A new UUIDv7: 48 bits of Unix time in milliseconds, then version 7, 74 random bits
 * (crypto.getRandomValues) and the variant bits.
 * @param {number} now milliseconds since the epoch (Date.now())
 * @param {(bytes: Uint8Array) => Uint8Array} fill fills an array with random bytes
 */
export function uuidv7(now = Date.now(), fill = (b) => globalThis.crypto.getRandomValues(b)) {
  const b = fill(new Uint8Array(16));
  let t = Math.max(0, Math.floor(now));
  // 48-bit big-endian timestamp; division, since bitwise operators stop at 32 bits.
  for (let i = 5; i >= 0; i -= 1) {
    b[i] = t % 256;
    t = Math.floor(t / 256);
  }
  b[6] = 0x70 | (b[6] & 0x0f);
  b[8] = 0x80 | (b[8] & 0x3f);
  const h = Array.from(b, (x) => HEX[x]);
  return `${h.slice(0, 4).join('')}-${h.slice(4, 6).join('')}-${h.slice(6, 8).join('')}-`
    + `${h.slice(8, 10).join('')}-${h.slice(10).join('')}`;
}

/** The time (ms since the epoch) a UUIDv7 was made, or NaN when `id` is not one. */
export function uuidv7Time(id) {
  if (typeof id !== 'string' || !UUIDV7_RE.test(id)) return NaN;
  return parseInt(id.slice(0, 8) + id.slice(9, 13), 16);
}
