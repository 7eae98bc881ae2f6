/**
 * At most `concurrency` tasks running at once, the rest waiting in order.
 * What the scheduler needs of a queue and no more, plus giving a slot back
 * early: p-queue did the rest, but loading it and its event emitter cost
 * 10-20 ms of every run, a no-op one included, where nothing is queued.
 */
export class JobQueue {
  private readonly waiting: ((free: () => void) => Promise<void>)[] = [];
  private running = 0;
  private idle: (() => void)[] = [];

  constructor(private readonly concurrency: number) {}

  /**
   * Queues a task; its errors are the task's to handle. Its slot is freed when
   * it settles, or earlier when it calls the `free` it is given (a job whose
   * program has exited, with only the engine's bookkeeping left).
   */
  add(task: (free: () => void) => Promise<void>): void {
    this.waiting.push(task);
    this.next();
  }

  /** Drops the tasks not yet started. */
  clear(): void {
    this.waiting.length = 0;
    this.settleIdle();
  }

  /** Resolves once no slot is taken and nothing waits. */
  onIdle(): Promise<void> {
    if (this.running === 0 && this.waiting.length === 0) return Promise.resolve();
    return new Promise((res) => this.idle.push(res));
  }

  private next(): void {
    while (this.running < this.concurrency && this.waiting.length > 0) {
      const task = this.waiting.shift() as (free: () => void) => Promise<void>;
      this.running++;
      let freed = false;
      const free = () => {
        if (freed) return;
        freed = true;
        this.running--;
        this.next();
        this.settleIdle();
      };
      void task(free)
        .catch(() => {})
        .finally(free);
    }
  }

  private settleIdle(): void {
    if (this.running > 0 || this.waiting.length > 0) return;
    const waiters = this.idle;
    this.idle = [];
    for (const w of waiters) w();
  }
}
