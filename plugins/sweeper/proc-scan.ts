/**
 * The process table, read from /proc. A QEMU is this host's only when all of these hold:
 *  - its `-name` is exactly `cloudlet-<hostId>.<8 letters>` (qemu-backend's processes.ts naming),
 *  - its program is QEMU (`qemu-system-*`, or the configured binary's name), both as it calls itself
 *    (argv[0]) and as it really runs (/proc/<pid>/exe, which it cannot choose),
 *  - its `-pidfile` is `<stateDir>/<that id>/qemu.pid`, i.e. it was started for this host's state folder.
 * Processes with a `cloudlet-…` name that fail a check are reported as ignored and never touched. An
 * orphan's monitor is asked only on its VM's own QMP socket (ownMonitorSocket). Every process's command
 * line also tells which MACs and taps are in use, whoever started it.
 */
import { readdir, readFile, readlink } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { vmPaths } from '../qemu-backend/state.ts';
import { ownsVmId } from './state-dir.ts';

export interface OurProcess {
  pid: number;
  vmId: string;
  /** /proc/<pid>/stat start time, to tell a recycled pid apart. */
  startTicks: number;
  ageMs: number;
  tap: string | null;
  mac: string | null;
  qmpSocket: string | null;
}

export interface Lookalike {
  pid: number;
  name: string;
  reason: string;
}

export interface ProcessScan {
  ours: OurProcess[];
  lookalikes: Lookalike[];
  /** MACs on any process's command line (`mac=…`), lowercase. */
  macsInUse: Set<string>;
  /** Interface names on any process's command line (`ifname=…`). */
  tapsInUse: Set<string>;
}

export interface ProcessIdentity {
  stateDir: string;
  hostId: string;
  qemuBinary: string;
}

/** Linux's USER_HZ: /proc times are in these ticks on every mainstream architecture. */
const TICKS_PER_SECOND = 100;
const MAC_ARG = /(?:^|,)mac=([0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5})(?:,|$)/;
const IFNAME_ARG = /(?:^|,)ifname=([^,]+)/;
const QMP_UNIX = /^unix:([^,]+)/;

export type Classified = { ours: true; vmId: string } | { ours: false; name: string; reason: string } | undefined;

/** Pure: what a command line says about ownership. Undefined for processes with no `cloudlet-` name. */
export function classifyCommandLine(argv: readonly string[], identity: ProcessIdentity): Classified {
  const nameAt = argv.indexOf('-name');
  const name = nameAt >= 0 ? argv[nameAt + 1] : undefined;
  if (name === undefined || !name.startsWith('cloudlet-')) return undefined;
  const vmId = name.slice('cloudlet-'.length);
  if (!ownsVmId(identity.hostId, vmId)) return { ours: false, name, reason: `not this host's naming (cloudlet-${identity.hostId}.<8 letters>)` };
  const program = basename(argv[0] ?? '');
  if (!isQemuProgram(program, identity)) return { ours: false, name, reason: `not a QEMU process (${program || 'no program name'})` };
  const pidfileAt = argv.indexOf('-pidfile');
  if (pidfileAt < 0 || argv[pidfileAt + 1] !== join(identity.stateDir, vmId, 'qemu.pid')) {
    return { ours: false, name, reason: `its -pidfile is not in this host's state folder ${identity.stateDir}` };
  }
  return { ours: true, vmId };
}

/** Pure: whether a program (a path or a name) is QEMU: `qemu-system-*`, or the configured binary's name. */
export function isQemuProgram(program: string, identity: ProcessIdentity): boolean {
  const name = basename(program);
  return name.startsWith('qemu-system-') || name === basename(identity.qemuBinary);
}

/**
 * The program a process really runs (/proc/<pid>/exe), which unlike argv[0] it cannot choose; undefined
 * when it is gone. A binary replaced since it started (a QEMU upgrade) reads "<path> (deleted)".
 */
async function executableOf(pid: number): Promise<string | undefined> {
  const target = await readlink(`/proc/${pid}/exe`).catch(() => undefined);
  return target?.replace(/ \(deleted\)$/, '');
}

/**
 * Pure: the QMP socket the sweeper may use for VM `vmId`'s process: the VM's own (qemu-backend's path), and
 * only when the command line has QEMU serve it. Never a path taken from the arguments alone: anyone can
 * start a process whose arguments name another, healthy VM's monitor.
 */
export function ownMonitorSocket(argv: readonly string[], stateDir: string, vmId: string): string | null {
  const own = vmPaths(stateDir, vmId).qmp;
  return argValue(argv, QMP_UNIX) === own ? own : null;
}

export function argValue(argv: readonly string[], pattern: RegExp): string | null {
  for (const arg of argv) {
    const match = pattern.exec(arg);
    if (match?.[1] !== undefined) return match[1];
  }
  return null;
}

/** Pure: state letter and start time from /proc/<pid>/stat (the name field may hold spaces and parentheses). */
export function parseStat(text: string): { state: string; startTicks: number } | undefined {
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // After the name: field 3 (state) is fields[0], field 22 (starttime) is fields[19].
  const state = fields[0];
  const startTicks = Number(fields[19]);
  return state && Number.isFinite(startTicks) ? { state, startTicks } : undefined;
}

export async function bootTimeMs(): Promise<number> {
  const text = await readFile('/proc/stat', 'utf8');
  const match = /^btime (\d+)$/m.exec(text);
  if (!match) throw new Error('no btime line in /proc/stat');
  return Number(match[1]) * 1000;
}

async function pids(): Promise<number[]> {
  return (await readdir('/proc')).filter((name) => /^\d+$/.test(name)).map(Number);
}

export async function readCommandLine(pid: number): Promise<string[] | undefined> {
  const text = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => undefined);
  if (!text) return undefined; // gone, or a kernel thread
  const argv = text.split('\0');
  if (argv.at(-1) === '') argv.pop();
  return argv;
}

export async function readStat(pid: number): Promise<{ state: string; startTicks: number } | undefined> {
  const text = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  return text === undefined ? undefined : parseStat(text);
}

export async function scanProcesses(identity: ProcessIdentity, nowMs: number): Promise<ProcessScan> {
  const scan: ProcessScan = { ours: [], lookalikes: [], macsInUse: new Set(), tapsInUse: new Set() };
  const bootMs = await bootTimeMs();
  for (const pid of await pids()) {
    const argv = await readCommandLine(pid);
    if (!argv) continue;
    const mac = argValue(argv, MAC_ARG)?.toLowerCase() ?? null;
    const tap = argValue(argv, IFNAME_ARG);
    if (mac) scan.macsInUse.add(mac);
    if (tap) scan.tapsInUse.add(tap);
    const classified = classifyCommandLine(argv, identity);
    if (!classified) continue;
    if (!classified.ours) {
      scan.lookalikes.push({ pid, name: classified.name, reason: classified.reason });
      continue;
    }
    // argv[0] is whatever the process's starter chose: a process of any user can claim to be QEMU.
    const executable = await executableOf(pid);
    // Gone meanwhile, or another user's process that this agent may neither inspect nor signal.
    if (executable === undefined) continue;
    if (!isQemuProgram(executable, identity)) {
      scan.lookalikes.push({ pid, name: `cloudlet-${classified.vmId}`, reason: `not a QEMU process (its program is ${executable})` });
      continue;
    }
    const stat = await readStat(pid);
    // A zombie has exited already; whoever started it reaps it.
    if (!stat || stat.state === 'Z' || stat.state === 'X') continue;
    scan.ours.push({
      pid,
      vmId: classified.vmId,
      startTicks: stat.startTicks,
      ageMs: Math.max(0, nowMs - (bootMs + (stat.startTicks / TICKS_PER_SECOND) * 1000)),
      tap,
      mac,
      qmpSocket: ownMonitorSocket(argv, identity.stateDir, classified.vmId),
    });
  }
  return scan;
}

/** Whether `pid` is still the very process that was found (same start time, not a zombie). */
export async function isSameProcess(pid: number, startTicks: number): Promise<boolean> {
  const stat = await readStat(pid);
  return stat !== undefined && stat.startTicks === startTicks && stat.state !== 'Z' && stat.state !== 'X';
}

/**
 * Taps held open by any process: a tun/tap file descriptor's fdinfo names its interface (`iff:`). Only the
 * given names are looked for; an empty set costs nothing.
 */
export async function tapHolders(names: ReadonlySet<string>): Promise<Map<string, number[]>> {
  const holders = new Map<string, number[]>();
  if (names.size === 0) return holders;
  for (const pid of await pids()) {
    const fds = await readdir(`/proc/${pid}/fd`).catch(() => [] as string[]);
    for (const fd of fds) {
      const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
      if (target !== '/dev/net/tun') continue;
      const info = await readFile(`/proc/${pid}/fdinfo/${fd}`, 'utf8').catch(() => '');
      const iff = /^iff:\s*(\S+)/m.exec(info)?.[1];
      if (iff !== undefined && names.has(iff)) holders.set(iff, [...(holders.get(iff) ?? []), pid]);
    }
  }
  return holders;
}
