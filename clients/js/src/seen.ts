// Bounded sets of what was already handed to the caller: message seqs (so a
// resume overlapping a transport switch, or history followed by the stream,
// shows nothing twice) and retracted ids (long-poll repeats them for a minute).

export class BoundedSet<T> {
  private items = new Set<T>();

  constructor(private readonly max: number) {}

  has(x: T): boolean {
    return this.items.has(x);
  }

  /** Adds `x`; `false` if it was there already. Past `max`, the oldest half goes. */
  add(x: T): boolean {
    if (this.items.has(x)) return false;
    this.items.add(x);
    if (this.items.size > this.max) {
      this.items = new Set([...this.items].slice(-Math.floor(this.max / 2)));
    }
    return true;
  }

  clear(): void {
    this.items.clear();
  }
}
