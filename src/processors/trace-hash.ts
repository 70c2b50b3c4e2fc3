/**
 * Consistent sampling by traceId: a trace's position in [0, 1) is a hash of its id (and an optional
 * salt), so every worker, every replay and every sampler configured with the same salt decides the same
 * for the same trace, without coordination. Hashing (instead of reading the id's low bits, as the OTel
 * TraceIdRatioBased sampler does) keeps the rate right for producers whose ids are not random (sequential
 * or time-prefixed ids). MurmurHash3-style mixing over the id's characters: no allocation per call.
 */

function fmix32(h0: number): number {
  let h = h0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Seed of a salt string (0 for ''), computed once per sampler. */
export function saltSeed(salt: string): number {
  let h = 0x9747b28c;
  for (let i = 0; i < salt.length; i++) h = Math.imul(h ^ salt.charCodeAt(i), 0x5bd1e995);
  return salt === '' ? 0 : fmix32(h);
}

/** The trace's position in [0, 1), uniform for any set of distinct ids; 53 bits of resolution. */
export function traceIdPosition(traceId: string, seed = 0): number {
  let h1 = 0x12345678 ^ seed;
  let h2 = 0x9abcdef0 ^ Math.imul(seed, 0x27d4eb2d);
  for (let i = 0; i < traceId.length; i++) {
    const c = traceId.charCodeAt(i);
    h1 = Math.imul(h1 ^ c, 0xcc9e2d51);
    h1 = (h1 << 15) | (h1 >>> 17);
    h2 = Math.imul(h2 ^ c, 0x1b873593);
    h2 = (h2 << 13) | (h2 >>> 19);
    h2 = (Math.imul(h2, 5) + 0xe6546b64) | 0;
  }
  h1 ^= traceId.length;
  h2 ^= traceId.length;
  h1 = (h1 + h2) | 0;
  h2 = (h2 + h1) | 0;
  const a = fmix32(h1);
  const b = fmix32(h2);
  // 32 bits from a, 21 from b: a uniform double in [0, 1).
  return (a * 2 ** 21 + (b >>> 11)) / 2 ** 53;
}

/** True when a trace falls inside a sample of `probability` (0..1). */
export function inSample(traceId: string, probability: number, seed = 0): boolean {
  if (probability >= 1) return true;
  if (probability <= 0) return false;
  return traceIdPosition(traceId, seed) < probability;
}
