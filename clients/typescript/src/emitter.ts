/** A small typed event emitter, the same in browsers and Node. */

export type Listener<T> = (value: T) => void;

export class Emitter<Map extends object> {
  private readonly listeners = new Map<keyof Map, Set<Listener<never>>>();

  /** Calls `listener` on every `name`; returns the function that stops it. */
  on<K extends keyof Map>(name: K, listener: Listener<Map[K]>): () => void {
    let set = this.listeners.get(name);
    if (!set) this.listeners.set(name, (set = new Set()));
    set.add(listener as Listener<never>);
    return () => set.delete(listener as Listener<never>);
  }

  /** Resolves with the next `name` for which `accept` holds. */
  next<K extends keyof Map>(name: K, accept: (value: Map[K]) => boolean = () => true): Promise<Map[K]> {
    return new Promise((resolve) => {
      const off = this.on(name, (value) => {
        if (!accept(value)) return;
        off();
        resolve(value);
      });
    });
  }

  protected emit<K extends keyof Map>(name: K, value: Map[K]): void {
    for (const listener of [...(this.listeners.get(name) ?? [])]) {
      (listener as Listener<Map[K]>)(value);
    }
  }
}
