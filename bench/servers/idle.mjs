/** A floor for benchmark 7: a Node process that does nothing, to tell what Node (and a loader) takes alone. */
setInterval(() => undefined, 60_000);
console.log('idle');
