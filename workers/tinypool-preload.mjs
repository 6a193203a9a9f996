// Loaded into every pool thread (Worker execArgv `--import`, core/pools.ts) before tinypool's worker entry.
// That entry binds `process.memoryUsage` once, as it loads, and calls it after every task to report heap use
// for a memory-recycling option cloudlet does not set. The real function reads /proc/self/stat for the RSS
// on each call: measured, about a third of a pool's CPU per no-op message (docs/PERFORMANCE.md, F11). So
// tinypool binds this stand-in, which reads nothing, and boot.mjs puts the real function back before any
// handler code runs. Plain JavaScript: it runs before any TypeScript loader is registered.
import process from 'node:process';

const real = process.memoryUsage;
const state = { real, standInCalls: 0 };
globalThis[Symbol.for('cloudlet.tinypoolPreload')] = state;

process.memoryUsage = Object.assign(
  function memoryUsageForTinypool() {
    state.standInCalls++;
    return { rss: 0, heapTotal: 0, heapUsed: 0, external: 0, arrayBuffers: 0 };
  },
  { rss: real.rss },
);
