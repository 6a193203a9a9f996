/**
 * Runs ip-discovery-arp's strategy in this process — started inside a test network namespace (ns.exec /
 * ns.spawn) so it sees that namespace's neighbour table — and prints one JSON line with the outcome:
 *
 *   node --import tsx in-namespace.ts discover '{"vm":{…},"options":{…}}'
 *     → {"ok":true,"addresses":[…],"elapsedMs":…,"logs":[…]}  or  {"ok":false,"error":{"code","message"},…}
 *   node --import tsx in-namespace.ts wait '{"vm":{…},"options":{…},"timeoutMs":…}'
 *     → prints "watching" on stderr once waitForChange is called, then {"ok":true,"elapsedMs":…,"logs":[…]}
 */
import type { VmNetworkIdentity } from '../../../core/capabilities/ip-discovery.ts';
import type { PluginLogger } from '../../../core/plugin-api.ts';
import strategy from '../../../plugins/ip-discovery-arp/strategy.ts';

export interface LogLine {
  level: string;
  obj: object | string;
  msg?: string;
}

interface Request {
  vm: VmNetworkIdentity;
  options?: unknown;
  timeoutMs?: number;
}

const logs: LogLine[] = [];
const log: PluginLogger = Object.fromEntries(
  (['trace', 'debug', 'info', 'warn', 'error'] as const).map((level) => [level, (obj: object | string, msg?: string) => logs.push({ level, obj, msg })]),
) as unknown as PluginLogger;

async function main(command: string | undefined, json: string | undefined): Promise<Record<string, unknown>> {
  const request = JSON.parse(json ?? '{}') as Request;
  const context = { options: request.options ?? {}, signal: AbortSignal.timeout(120_000), log };
  const started = performance.now();
  if (command === 'discover') {
    const addresses = await strategy.discover(request.vm, context);
    return { ok: true, addresses, elapsedMs: performance.now() - started };
  }
  if (command === 'wait') {
    process.stderr.write('watching\n');
    await strategy.waitForChange!(request.vm, { ...context, timeoutMs: request.timeoutMs ?? 10_000 });
    return { ok: true, elapsedMs: performance.now() - started };
  }
  throw new Error(`usage: in-namespace.ts discover|wait JSON (got "${command}")`);
}

try {
  const result = await main(process.argv[2], process.argv[3]);
  process.stdout.write(`${JSON.stringify({ ...result, logs })}\n`);
} catch (error) {
  const { code, message } = error as { code?: string; message?: string };
  process.stdout.write(`${JSON.stringify({ ok: false, error: { code, message }, logs })}\n`);
  process.exitCode = 1;
}
