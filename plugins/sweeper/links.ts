/**
 * Tap devices named like qemu-backend's (`<tapPrefix>` + the 8 letters of a VM id), from
 * `ip -d -j link show type tun`; and the `ip` commands that detach or delete one. argv arrays, no shell.
 */
import { runProgram } from '../qemu-backend/run.ts';

export interface TapInfo {
  name: string;
  master: string | null;
  up: boolean;
  /** Made by `ip tuntap add` (outlives its user) rather than by the process that opened it. */
  persist: boolean;
}

const COMMAND_TIMEOUT_MS = 10_000;

export function tapPattern(prefix: string): RegExp {
  return new RegExp(`^${prefix}[a-z]{8}$`);
}

/** Pure: the taps in iproute2's JSON whose names fit the pattern. */
export function parseTapLinks(json: string, pattern: RegExp): TapInfo[] {
  const parsed: unknown = JSON.parse(json.trim() === '' ? '[]' : json);
  if (!Array.isArray(parsed)) throw new TypeError('ip -j link printed something other than a JSON array');
  const taps: TapInfo[] = [];
  for (const raw of parsed as Record<string, unknown>[]) {
    const name = raw?.ifname;
    const linkinfo = raw?.linkinfo as { info_kind?: unknown; info_data?: { type?: unknown; persist?: unknown } } | undefined;
    if (typeof name !== 'string' || !pattern.test(name)) continue;
    if (linkinfo?.info_kind !== 'tun' || linkinfo.info_data?.type !== 'tap') continue;
    const flags = Array.isArray(raw.flags) ? (raw.flags as unknown[]) : [];
    taps.push({ name, master: typeof raw.master === 'string' ? raw.master : null, up: flags.includes('UP'), persist: linkinfo.info_data.persist === true });
  }
  return taps;
}

export async function listTaps(ipBinary: string, prefix: string, signal?: AbortSignal): Promise<TapInfo[]> {
  const argv = [ipBinary, '-d', '-j', 'link', 'show', 'type', 'tun'];
  const result = await runProgram(argv, { timeoutMs: COMMAND_TIMEOUT_MS, ...(signal ? { signal } : {}) });
  if (result.code !== 0) throw new Error(`"${argv.join(' ')}" exited ${result.code ?? 'on a timeout'}: ${result.stderr.trim() || 'no message'}`);
  return parseTapLinks(result.stdout, tapPattern(prefix));
}

/** `stop` of a tap: down and off the bridge, kept. */
export async function detachTap(ipBinary: string, tap: string): Promise<void> {
  await ip([ipBinary, 'link', 'set', 'dev', tap, 'down']);
  await ip([ipBinary, 'link', 'set', 'dev', tap, 'nomaster']);
}

/** `reap` of a tap. Already gone counts as done. */
export async function deleteTap(ipBinary: string, tap: string): Promise<void> {
  const result = await runProgram([ipBinary, 'link', 'delete', 'dev', tap], { timeoutMs: COMMAND_TIMEOUT_MS });
  if (result.code === 0) return;
  const still = await runProgram([ipBinary, 'link', 'show', 'dev', tap], { timeoutMs: COMMAND_TIMEOUT_MS });
  if (still.code === 0) throw new Error(`ip link delete dev ${tap} failed: ${result.stderr.trim()}`);
}

async function ip(argv: string[]): Promise<void> {
  const result = await runProgram(argv, { timeoutMs: COMMAND_TIMEOUT_MS });
  if (result.code !== 0) throw new Error(`"${argv.join(' ')}" failed: ${result.stderr.trim() || `exit ${result.code}`}`);
}
