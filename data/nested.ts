import { createHash } from "node:crypto";

/** The keyed hash that orders items: sha256(seed + ":" + id), as hex. */
export function rankKey(seed: number | string, id: string): string {
  return createHash("sha256").update(`${seed}:${id}`).digest("hex");
}

/**
 * A total order of items by keyed hash. Taking the first N of this order gives
 * nested subsets: N=1000 ⊂ N=10000 for the same seed, since filters do not
 * depend on N.
 */
export function hashOrder<T>(items: T[], id: (t: T) => string, seed: number | string): T[] {
  return items
    .map((t) => ({ t, k: rankKey(seed, id(t)) }))
    .sort((a, b) => (a.k < b.k ? -1 : a.k > b.k ? 1 : 0))
    .map((x) => x.t);
}

/**
 * Stratified order that keeps nesting: strata are each hash-ordered, then
 * interleaved by always taking from the stratum furthest below its share of
 * what has been taken so far. Every prefix is close to proportional, and,
 * because it is one fixed order, smaller prefixes are subsets of larger ones
 * (quota rounding per N would not guarantee that).
 */
export function stratifiedOrder<T>(
  items: T[],
  id: (t: T) => string,
  stratum: (t: T) => string,
  seed: number | string,
): T[] {
  const groups = new Map<string, T[]>();
  for (const t of hashOrder(items, id, seed)) {
    const s = stratum(t);
    if (!groups.has(s)) groups.set(s, []);
    groups.get(s)!.push(t);
  }
  const names = [...groups.keys()].sort();
  const share = new Map(names.map((n) => [n, groups.get(n)!.length / items.length]));
  const taken = new Map(names.map((n) => [n, 0]));
  const out: T[] = [];
  while (out.length < items.length) {
    let best = "";
    let bestDeficit = -Infinity;
    for (const n of names) {
      if (taken.get(n)! >= groups.get(n)!.length) continue;
      const deficit = share.get(n)! * (out.length + 1) - taken.get(n)!;
      if (deficit > bestDeficit) {
        best = n;
        bestDeficit = deficit;
      }
    }
    out.push(groups.get(best)![taken.get(best)!]);
    taken.set(best, taken.get(best)! + 1);
  }
  return out;
}
