import type { RunEvent } from "./scheduler.js";

/**
 * Progress for humans on stderr: one redrawn status line on a TTY
 * (done/running/left, elapsed), plain lines otherwise.
 */
export class Progress {
  private done = 0;
  private running = new Map<string, string>();
  private readonly t0 = Date.now();
  private lastDraw = 0;
  private readonly tty: boolean;
  private pending = "";
  private flushTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly total: number,
    private readonly out: NodeJS.WriteStream = process.stderr,
    private readonly quiet = false,
  ) {
    this.tty = !!out.isTTY && !process.env.CI;
  }

  private elapsed(): string {
    return `${((Date.now() - this.t0) / 1000).toFixed(1)}s`;
  }

  private line(s: string): void {
    if (this.quiet) return;
    if (this.tty) {
      this.out.write("\r\x1b[K" + s + "\n");
      this.draw(true);
      return;
    }
    // Not a terminal (a log, a pipe): lines go out in batches every 100 ms. A
    // write per line cost more than a tiny stage itself on a busy machine
    // (stderr writes are synchronous; test/bench/engine.mjs).
    this.pending += s + "\n";
    this.flushTimer ??= setTimeout(() => this.flush(), 100).unref();
  }

  private flush(): void {
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    if (this.pending) this.out.write(this.pending);
    this.pending = "";
  }

  private draw(force = false): void {
    if (!this.tty || this.quiet) return;
    const now = Date.now();
    if (!force && now - this.lastDraw < 100) return;
    this.lastDraw = now;
    const left = this.total - this.done - this.running.size;
    const names = [...this.running.entries()]
      .slice(0, 3)
      .map(([id, note]) => (note ? `${id} ${note}` : id));
    const s = `[${this.done}/${this.total} done, ${this.running.size} running, ${left} left, ${this.elapsed()}] ${names.join("  ")}`;
    this.out.write("\r\x1b[K" + s.slice(0, (this.out.columns ?? 120) - 1));
  }

  event(e: RunEvent): void {
    switch (e.type) {
      case "cached":
        this.done++;
        if (e.waited) this.line(`cached  ${e.id} (computed by another run)`);
        else this.draw();
        break;
      case "start":
        this.running.set(e.id, "");
        this.line(`run     ${e.id}${e.attempt > 1 ? ` (attempt ${e.attempt})` : ""}`);
        break;
      case "done":
        this.running.delete(e.id);
        this.done++;
        this.line(
          `done    ${e.id} (${e.seconds.toFixed(1)}s)` +
            (e.incomplete ? `: INCOMPLETE, ${e.incomplete}` : ""),
        );
        break;
      case "failed":
        this.running.delete(e.id);
        if (!e.willRetry) this.done++;
        this.line(
          `${e.willRetry ? "retry  " : "FAILED "} ${e.id}: ${e.error.message.split("\n")[0]}` +
            (e.logFile && !e.willRetry ? `\n        log: ${e.logFile}` : ""),
        );
        break;
      case "waiting":
        this.line(`wait    ${e.id}: computed by ${e.holder.host} pid ${e.holder.pid}`);
        break;
      case "progress": {
        // A note without a count is a state (e.g. "slurm job 12 PENDING"): shown as
        // it is, and printed as a line when it changes if there is no status line.
        const state = !e.total && !e.done && e.note;
        if (state && !this.tty && this.running.get(e.id) !== state)
          this.line(`state   ${e.id}: ${state}`);
        this.running.set(
          e.id,
          state || (e.total ? `${e.done}/${e.total}` : `${e.done}`) + (e.note ? ` ${e.note}` : ""),
        );
        this.draw();
        break;
      }
    }
  }

  finish(): void {
    this.flush();
    if (this.tty && !this.quiet) this.out.write("\r\x1b[K");
  }
}
