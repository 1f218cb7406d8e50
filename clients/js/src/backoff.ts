// Reconnect delays: exponential with jitter, so that a room's viewers who
// lost the same server do not all come back in the same instant.

export class Backoff {
  private attempt = 0;

  constructor(
    private readonly baseMs: number,
    private readonly capMs: number,
    private readonly random: () => number = Math.random,
  ) {}

  /** The next delay: uniformly within [½, 1] of min(cap, base·2^attempt). */
  next(): number {
    const ceiling = Math.min(this.capMs, this.baseMs * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 30);
    return Math.round(ceiling * (0.5 + this.random() / 2));
  }

  /** A connection worked for a while: start over from the base. */
  reset(): void {
    this.attempt = 0;
  }

  get attempts(): number {
    return this.attempt;
  }
}
