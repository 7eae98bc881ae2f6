import { readFileSync, statfsSync, lstatSync, readdirSync } from "node:fs";
import { dirname, resolve } from "node:path";

/** A write failed because its filesystem is full (ENOSPC) or the user's quota is (EDQUOT). */
export function isDiskFull(e: unknown): boolean {
  for (let x = e as { code?: unknown; cause?: unknown } | undefined, i = 0; x && i < 5; i++) {
    if (x.code === "ENOSPC" || x.code === "EDQUOT") return true;
    if (x instanceof DiskFull) return true;
    x = x.cause as typeof x;
  }
  return /\b(ENOSPC|EDQUOT)\b|No space left on device|Disk quota exceeded/.test(
    String((e as Error)?.message ?? ""),
  );
}

/**
 * Saves memos (the stat cache, key history, results memo): each is only a
 * speed-up, so on a full disk it is skipped and the run's results still stand.
 */
export function saveMemos(saves: (() => void)[]): void {
  for (const save of saves) {
    try {
      save();
    } catch (e) {
      if (!isDiskFull(e)) throw e;
    }
  }
}

export interface Filesystem {
  mount: string;
  type: string;
  source: string;
}

/** The mount holding `path` (longest mount point that prefixes it), from /proc/self/mountinfo. */
export function filesystemOf(path: string): Filesystem {
  let abs = resolve(path);
  let best: Filesystem = { mount: "/", type: "?", source: "?" };
  try {
    for (const line of readFileSync("/proc/self/mountinfo", "utf8").split("\n")) {
      // id parent maj:min root mount-point options [optional…] - type source super-options
      const f = line.split(" ");
      const dash = f.indexOf("-");
      if (f.length < 5 || dash < 0) continue;
      const mount = f[4].replace(/\\(\d{3})/g, (_, o: string) =>
        String.fromCharCode(parseInt(o, 8)),
      );
      const under = mount === "/" || abs === mount || abs.startsWith(mount + "/");
      if (under && mount.length >= best.mount.length)
        best = { mount, type: f[dash + 1] ?? "?", source: f[dash + 2] ?? "?" };
    }
  } catch {
    // no /proc: name the path's folder instead
    abs = dirname(abs);
    best = { mount: abs, type: "?", source: "?" };
  }
  return best;
}

/** Bytes available to this user on the filesystem holding `path` (nearest existing folder). */
export function freeBytes(path: string): { free: number; total: number } | undefined {
  let p = resolve(path);
  for (;;) {
    try {
      const s = statfsSync(p);
      return { free: s.bavail * s.bsize, total: s.blocks * s.bsize };
    } catch {
      const up = dirname(p);
      if (up === p) return undefined;
      p = up;
    }
  }
}

/** Bytes of the files under `path`, by lstat (never by reading them). */
export function bytesUnder(path: string): number {
  let n = 0;
  const walk = (p: string) => {
    let st;
    try {
      st = lstatSync(p);
    } catch {
      return;
    }
    if (st.isDirectory()) {
      let names: string[];
      try {
        names = readdirSync(p);
      } catch {
        return;
      }
      for (const c of names) walk(p + "/" + c);
    } else n += st.size;
  };
  walk(path);
  return n;
}

export const human = (n: number): string =>
  n >= 1 << 30
    ? `${(n / (1 << 30)).toFixed(1)} GiB`
    : n >= 1 << 20
      ? `${(n / (1 << 20)).toFixed(1)} MiB`
      : n >= 1024
        ? `${(n / 1024).toFixed(1)} KiB`
        : `${n} bytes`;

/**
 * A write failed on a full filesystem: names the filesystem, what is free
 * and, when known, how much was needed. Exit 1 (not bad input).
 */
export class DiskFull extends Error {
  override name = "DiskFull";
  constructor(
    readonly path: string,
    opts: { needed?: number; doing?: string; cause?: unknown; note?: string } = {},
  ) {
    const fs = filesystemOf(path);
    const space = freeBytes(path);
    super(
      `no space left on ${fs.mount} (${fs.type} ${fs.source}) ${opts.doing ?? `writing ${path}`}: ` +
        `${space ? `${human(space.free)} free of ${human(space.total)}` : "free space unknown"}` +
        (opts.needed !== undefined ? `, at least ${human(opts.needed)} needed` : "") +
        (opts.note ? ` (${opts.note})` : "") +
        `; free space there (valley gc removes unreferenced results and leftovers)`,
      { cause: opts.cause },
    );
  }
}

/** A DiskFull for an ENOSPC/EDQUOT error (its path when the error names one), else the error itself. */
export function asDiskFull(e: unknown, fallbackPath: string, needed?: number): unknown {
  if (e instanceof DiskFull || !isDiskFull(e)) return e;
  const p = (e as NodeJS.ErrnoException).path ?? fallbackPath;
  return new DiskFull(p, { needed, cause: e });
}
