/**
 * Concurrency, requests-per-minute and tokens-per-minute limits for calls to a
 * model server. RPM/TPM use a sliding 60 s window; a request reserves its
 * estimated tokens when it starts and settles to the real count when it ends.
 * Every HTTP attempt acquires (a retry is a request to the server too), and
 * `pause` holds every caller back when the server says 429.
 */
export interface LimitOptions {
  concurrency: number;
  rpm?: number;
  tpm?: number;
  signal?: AbortSignal;
  /** The rate window; 60 s except in tests. */
  windowMs?: number;
}

interface Entry {
  t: number;
  tokens: number;
}

export class Limiter {
  private active = 0;
  private waiters: (() => void)[] = [];
  private window: Entry[] = [];
  private pausedUntil = 0;

  private readonly win: number;

  constructor(private o: LimitOptions) {
    this.win = o.windowMs ?? 60_000;
  }

  /** Waits for a slot and for room in the rate windows; returns a release function. */
  async acquire(estTokens: number): Promise<(actualTokens?: number) => void> {
    while (this.active >= this.o.concurrency) await new Promise<void>((r) => this.waiters.push(r));
    this.active++;
    try {
      for (;;) {
        const wait = Math.max(this.waitMs(estTokens), this.pausedUntil - Date.now());
        if (wait <= 0) break;
        await sleep(wait, this.o.signal);
      }
    } catch (e) {
      this.release();
      throw e;
    }
    const entry: Entry = { t: Date.now(), tokens: estTokens };
    this.window.push(entry);
    let done = false;
    return (actual?: number) => {
      if (done) return;
      done = true;
      if (actual !== undefined) entry.tokens = actual;
      this.release();
    };
  }

  /** Holds every acquire back for `ms` (a shared back-off: the server said slow down). */
  pause(ms: number): void {
    this.pausedUntil = Math.max(this.pausedUntil, Date.now() + ms);
  }

  private release() {
    this.active--;
    this.waiters.shift()?.();
  }

  private waitMs(est: number): number {
    const now = Date.now();
    while (this.window.length && now - this.window[0].t >= this.win) this.window.shift();
    let wait = 0;
    if (this.o.rpm && this.window.length >= this.o.rpm) wait = this.window[0].t + this.win - now;
    if (this.o.tpm) {
      let used = this.window.reduce((a, e) => a + e.tokens, 0);
      // A single request larger than the budget may go alone, or it would never run.
      if (used > 0 && used + est > this.o.tpm) {
        for (const e of this.window) {
          used -= e.tokens;
          if (used + est <= this.o.tpm) {
            wait = Math.max(wait, e.t + this.win - now);
            break;
          }
        }
      }
    }
    return wait > 0 ? wait + 5 : 0;
  }
}

/** An Error saying why `signal` was aborted (reasons may be strings, or missing). */
export function abortError(signal: AbortSignal | undefined, what = "stopped"): Error {
  const r: unknown = signal?.reason;
  if (r instanceof Error && r.message) return r;
  const why = r instanceof Error ? r.name : r === undefined ? "" : String(r);
  return new Error(`${what}: ${why || "aborted without a reason"}`);
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal));
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(abortError(signal));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
