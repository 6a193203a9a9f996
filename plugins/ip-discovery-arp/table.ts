/**
 * Reads the bridge's neighbour table with `ip -s -j neigh show dev BRIDGE nud all` (`nud all`: the default
 * filter hides NOARP entries). Falls back to /proc/net/arp (IPv4 only, no states or ages) when `ip` is missing
 * or too old for `-j`.
 */
import { readFile } from 'node:fs/promises';
import type { PluginLogger } from '../../core/plugin-api.ts';
import { arpError } from './errors.ts';
import { parseIpNeighJson, parseProcNetArp, type NeighbourEntry, type TableSource } from './neighbours.ts';
import { runProgram } from './run.ts';

export interface NeighbourTable {
  entries: NeighbourEntry[];
  source: TableSource;
}

export interface ReadTableOptions {
  ipBinary: string;
  bridge: string;
  signal: AbortSignal;
  log: PluginLogger;
  /** Only tests point this elsewhere. */
  procArpPath?: string;
}

const COMMAND_TIMEOUT_MS = 10_000;

export async function readNeighbourTable(options: ReadTableOptions): Promise<NeighbourTable> {
  const argv = [options.ipBinary, '-s', '-j', 'neigh', 'show', 'dev', options.bridge, 'nud', 'all'];
  let fallbackReason: string;
  try {
    const result = await runProgram(argv, { timeoutMs: COMMAND_TIMEOUT_MS, signal: options.signal });
    if (result.code === 0) {
      try {
        return { entries: parseIpNeighJson(result.stdout), source: 'ip-neigh' };
      } catch (error) {
        fallbackReason = `its output is not JSON (${(error as Error).message})`;
      }
    } else if (/option "-j(son)?" is unknown/i.test(result.stderr)) {
      fallbackReason = `it does not know -j: ${result.stderr.trim()}`;
    } else {
      throw arpError('ARP_READ_FAILED', `"${argv.join(' ')}" exited ${result.code ?? 'on a timeout'}: ${result.stderr.trim() || 'no message'}`, {
        bridge: options.bridge,
      });
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    fallbackReason = `"${options.ipBinary}" was not found`;
  }
  options.log.warn({ bridge: options.bridge, ipBinary: options.ipBinary }, `ip-discovery-arp: reading /proc/net/arp (IPv4 only) because ${fallbackReason}`);
  return { entries: await readProcNetArp(options), source: 'proc-net-arp' };
}

async function readProcNetArp(options: ReadTableOptions): Promise<NeighbourEntry[]> {
  const path = options.procArpPath ?? '/proc/net/arp';
  try {
    return parseProcNetArp(await readFile(path, { encoding: 'utf8', signal: options.signal }), options.bridge);
  } catch (error) {
    throw arpError('ARP_READ_FAILED', `cannot read ${path}: ${(error as Error).message}`, { bridge: options.bridge }, error);
  }
}
