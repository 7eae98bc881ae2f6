import type { Readable } from "node:stream";

/**
 * The whole contract a remote kind implements: five operations on relative
 * paths ("objects/ab/cdef…", "actions/<hex>.json", "pins/<name>.json").
 * What the paths mean (objects by digest, action records by key) lives one
 * layer up, in RemoteStore, so file://, ssh:// and s3:// share it — as
 * wireit's local and remote caches share one interface.
 */
export interface Backend {
  /** The URL the user gave, credentials removed, for messages. */
  readonly url: string;
  /** Sizes of those paths that exist (complete: a write appears only once finished). */
  stat(paths: string[]): Promise<Map<string, number>>;
  /** Every file under a top-level folder, as relative paths with sizes. */
  list(dir: string): Promise<{ path: string; size: number }[]>;
  /** The file's bytes; rejects with RemoteNotFound if it does not exist. */
  read(path: string): Promise<Readable>;
  /**
   * Uploads a local file so that it appears under `path` only once complete
   * (temporary name, then rename; S3 objects appear whole), and checks the
   * size that arrived. Rejects if the transfer was cut short.
   */
  upload(localFile: string, path: string, size: number): Promise<void>;
  /** Downloads to a local file (the caller hashes it before trusting it). */
  download(path: string, localFile: string): Promise<void>;
  delete(path: string): Promise<void>;
  close(): Promise<void>;
}

export class RemoteNotFound extends Error {
  override name = "RemoteNotFound";
  constructor(
    readonly path: string,
    url: string,
  ) {
    super(`${url}: ${path} does not exist`);
  }
}

/** A remote that cannot be used as configured (bad URL, refused login, unknown host key): exit 2. */
export class RemoteConfigError extends Error {
  override name = "RemoteConfigError";
}

/** Runs `fn` over `items` with at most `n` in flight; results in input order. */
export async function mapLimit<T, R>(
  items: readonly T[],
  n: number,
  fn: (item: T, i: number) => Promise<R>,
): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= items.length) return;
      out[i] = await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
  return out;
}
