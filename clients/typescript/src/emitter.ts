/** A small typed event emitter (no dependency, works in browsers and Node). */

type Listener<A extends unknown[]> = (...args: A) => void;
// Listeners of every event live in one map; each is called only with its own event's arguments.
type AnyListener = (...args: never[]) => void;

export class Emitter<E extends { [K in keyof E]: unknown[] }> {
  private readonly listeners = new Map<keyof E, Set<AnyListener>>();

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof E>(event: K, listener: Listener<E[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener as unknown as AnyListener);
    return () => this.off(event, listener);
  }

  /** Adds a listener called at most once. */
  once<K extends keyof E>(event: K, listener: Listener<E[K]>): () => void {
    const off = this.on(event, ((...args: E[K]) => {
      off();
      listener(...args);
    }) as Listener<E[K]>);
    return off;
  }

  off<K extends keyof E>(event: K, listener: Listener<E[K]>): void {
    this.listeners.get(event)?.delete(listener as unknown as AnyListener);
  }

  /** Number of listeners of `event`. */
  listenerCount<K extends keyof E>(event: K): number {
    return this.listeners.get(event)?.size ?? 0;
  }

  /**
   * Calls the listeners of `event`. A listener that throws does not stop
   * the others; its error goes to `onListenerError`.
   */
  protected emit<K extends keyof E>(event: K, ...args: E[K]): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        (listener as unknown as Listener<E[K]>)(...args);
      } catch (e) {
        this.onListenerError(e);
      }
    }
  }

  /** Where errors thrown by listeners go; by default reported asynchronously. */
  protected onListenerError(error: unknown): void {
    setTimeout(() => {
      throw error;
    }, 0);
  }
}
