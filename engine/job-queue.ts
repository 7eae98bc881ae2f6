/**
 * At most `concurrency` tasks running at once, the rest waiting in order.
 * What the scheduler needs of a queue and no more: p-queue did the same, but
 * loading it (and its event emitter) was ~4% of a no-op run of a large
 * pipeline, where no task is ever queued.
 */
export class JobQueue {
  private readonly waiting: (() => Promise<void>)[] = [];
  private running = 0;
  private idle: (() => void)[] = [];

  constructor(private readonly concurrency: number) {}

  /** Queues a task; its errors are the task's to handle (it must not reject). */
  add(task: () => Promise<void>): void {
    this.waiting.push(task);
    this.next();
  }

  /** Drops the tasks not yet started. */
  clear(): void {
    this.waiting.length = 0;
    this.settleIdle();
  }

  /** Resolves once nothing runs and nothing waits. */
  onIdle(): Promise<void> {
    if (this.running === 0 && this.waiting.length === 0) return Promise.resolve();
    return new Promise((res) => this.idle.push(res));
  }

  private next(): void {
    while (this.running < this.concurrency && this.waiting.length > 0) {
      const task = this.waiting.shift() as () => Promise<void>;
      this.running++;
      void task()
        .catch(() => {})
        .finally(() => {
          this.running--;
          this.next();
          this.settleIdle();
        });
    }
  }

  private settleIdle(): void {
    if (this.running > 0 || this.waiting.length > 0) return;
    const waiters = this.idle;
    this.idle = [];
    for (const w of waiters) w();
  }
}
