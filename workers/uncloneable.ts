/**
 * Where a value holds something that cannot cross to a worker thread. Structured clone refuses functions,
 * symbols and objects with internals it cannot copy (a Promise, a WeakMap), and its DataCloneError names
 * only the value's source text; a plugin author needs the path. Used only once a clone has failed, so
 * cloning every branch again on the way down costs nothing that matters.
 */

/** The first part of `value` that structured clone refuses, as a path from the root (`""`) and what it is. */
export function findUncloneable(value: unknown): { path: string; what: string } | undefined {
  return find(value, '', new Set(), 0);
}

/** Deeper than this, the object that holds the rest is named instead. */
const MAX_DEPTH = 64;

function find(value: unknown, path: string, seen: Set<object>, depth: number): { path: string; what: string } | undefined {
  if (cloneable(value)) return undefined;
  if (typeof value === 'function') return { path, what: value.name ? `a function (${value.name})` : 'a function' };
  if (typeof value === 'symbol') return { path, what: 'a symbol' };
  if (typeof value !== 'object' || value === null || seen.has(value)) return undefined;
  seen.add(value);
  if (depth < MAX_DEPTH) {
    for (const [step, child] of childrenOf(value)) {
      const found = find(child, `${path}${step}`, seen, depth + 1);
      if (found) return found;
    }
  }
  return { path, what: describeObject(value) };
}

function cloneable(value: unknown): boolean {
  try {
    structuredClone(value);
    return true;
  } catch {
    return false;
  }
}

/** The parts structured clone copies one by one, each with the step of the path that leads to it. */
function childrenOf(value: object): Array<[string, unknown]> {
  try {
    if (Array.isArray(value)) return value.map((child, index) => [`[${index}]`, child]);
    if (value instanceof Map) return [...value].map(([key, child]) => [`.get(${stepName(key)})`, child]);
    if (value instanceof Set) return [...value].map((child, index) => [`(set member ${index})`, child]);
    return Object.keys(value).map((key) => [/^[A-Za-z_$][\w$]*$/.test(key) ? `.${key}` : `[${JSON.stringify(key)}]`, (value as Record<string, unknown>)[key]]);
  } catch {
    return []; // a getter or a Proxy that throws: the object itself is named
  }
}

function stepName(key: unknown): string {
  return typeof key === 'string' ? JSON.stringify(key) : typeof key === 'number' || typeof key === 'boolean' ? String(key) : typeof key;
}

function describeObject(value: object): string {
  try {
    const name = (Object.getPrototypeOf(value) as { constructor?: { name?: unknown } } | null)?.constructor?.name;
    return typeof name === 'string' && name !== '' && name !== 'Object' ? `an instance of ${name}` : 'an object';
  } catch {
    return 'an object';
  }
}
