// subset.ts: seeded index subsets (kNN monitor bank/queries, training-image subsets). Tested in
// test/eval.test.ts.

/** `count` distinct indices of [0, n) chosen with `seed` (sorted); count 0 or >= n: all of them. */
export function subsetIndices(n: number, count: number, seed: number): Int32Array {
  if (count <= 0 || count >= n) return Int32Array.from({ length: n }, (_, i) => i);
  // partial Fisher-Yates with a small counter-based generator (xorshift-multiply on 32 bits)
  const idx = Int32Array.from({ length: n }, (_, i) => i);
  let s = (seed * 0x9e3779b1 + 0x7f4a7c15) >>> 0;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  for (let i = 0; i < count; i++) {
    const j = i + Math.floor(next() * (n - i));
    const tmp = idx[i];
    idx[i] = idx[j];
    idx[j] = tmp;
  }
  return idx.slice(0, count).sort();
}
