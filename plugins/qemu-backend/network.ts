/** MAC addresses and tap devices for bridged VMs. Interface names are validated; `ip` runs without a shell. */
import { randomBytes } from 'node:crypto';
import { qemuError } from './errors.ts';
import { runProgram } from './run.ts';

/** Locally administered (bit 1 set) unicast (bit 0 clear): 02:xx:xx:xx:xx:xx, 40 random bits. */
export function randomMac(taken: ReadonlySet<string> = new Set()): string {
  for (;;) {
    const bytes = randomBytes(5);
    const mac = ['02', ...[...bytes].map((b) => b.toString(16).padStart(2, '0'))].join(':');
    if (!taken.has(mac)) return mac;
  }
}

const INTERFACE_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}$/;

export function tapName(prefix: string, vmId: string): string {
  const name = `${prefix}${vmId.slice(vmId.lastIndexOf('.') + 1)}`;
  if (!INTERFACE_NAME.test(name)) throw qemuError('NETWORK_FAILED', `"${name}" is not a valid interface name (at most 15 characters)`);
  return name;
}

export async function tapExists(ip: string, tap: string): Promise<boolean> {
  const result = await runProgram([ip, '-o', 'link', 'show', 'dev', tap], { timeoutMs: 10_000, failCode: 'NETWORK_FAILED' });
  return result.code === 0;
}

/** Creates the tap (if missing), attaches it to the bridge and brings it up. */
export async function ensureTap(ip: string, tap: string, bridge: string): Promise<void> {
  if (!INTERFACE_NAME.test(tap) || !INTERFACE_NAME.test(bridge)) throw qemuError('NETWORK_FAILED', `invalid interface name "${tap}" or "${bridge}"`);
  const steps: string[][] = [];
  if (!(await tapExists(ip, tap))) steps.push([ip, 'tuntap', 'add', 'dev', tap, 'mode', 'tap']);
  steps.push([ip, 'link', 'set', 'dev', tap, 'master', bridge], [ip, 'link', 'set', 'dev', tap, 'up']);
  for (const argv of steps) {
    const result = await runProgram(argv, { timeoutMs: 10_000, failCode: 'NETWORK_FAILED' });
    if (result.code !== 0) throw qemuError('NETWORK_FAILED', `"${argv.join(' ')}" failed: ${result.stderr.trim()}`, { tap, bridge });
  }
}

export async function removeTap(ip: string, tap: string): Promise<void> {
  if (!INTERFACE_NAME.test(tap)) return;
  if (!(await tapExists(ip, tap))) return;
  const result = await runProgram([ip, 'link', 'delete', 'dev', tap], { timeoutMs: 10_000, failCode: 'NETWORK_FAILED' });
  if (result.code !== 0 && (await tapExists(ip, tap))) throw qemuError('NETWORK_FAILED', `could not remove tap ${tap}: ${result.stderr.trim()}`);
}
