/**
 * The tiny test guest (scripts/build-test-guest.sh) booted by QEMU directly — without qemu-backend — on a new
 * tap of a namespace's bridge, for tests of what sits next to a VM (IP discovery, the guest itself). QEMU is
 * spawned through the namespace, so it dies with it at the latest.
 */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Netns, NetnsProcess } from './netns.ts';
import { guestDir } from './qemu-host.ts';

export const GUEST_BOOT_TIMEOUT_MS = 120_000;

export interface TestGuest {
  name: string;
  qemu: NetnsProcess;
  tap: string;
  mac: string;
  serialLog: string;
  qmpSocket: string;
  qgaSocket: string;
  /** performance.now() when QEMU was spawned. */
  startedAt: number;
}

export interface BootOptions {
  /** Boot the initrd that runs qemu-guest-agent, with its virtio-serial port. */
  qga?: boolean;
  /** Where the kernel and initrds are (default: the built test guest). */
  dir?: string;
}

export async function bootTestGuest(ns: Netns, name: string, options: BootOptions = {}): Promise<TestGuest> {
  const dir = options.dir ?? guestDir;
  const tap = await ns.addTap();
  // 52:54:00 is QEMU's own prefix: never one of qemu-backend's (02:…), so a sweeper or a test can tell them apart.
  const mac = `52:54:00:${randomBytes(3).toString('hex').match(/../g)!.join(':')}`;
  const serialLog = join(ns.dir, `${name}.serial.log`);
  const qmpSocket = join(ns.dir, `${name}.qmp.sock`);
  const qgaSocket = join(ns.dir, `${name}.qga.sock`);
  const argv = [
    'qemu-system-x86_64',
    ...['-machine', 'pc', '-accel', 'tcg', '-cpu', 'max', '-m', '128', '-smp', '1'],
    ...['-kernel', join(dir, 'vmlinuz'), '-initrd', join(dir, options.qga ? 'initrd-qga.img' : 'initrd.img')],
    ...['-append', 'console=ttyS0 quiet panic=-1', '-no-reboot'],
    ...['-netdev', `tap,id=n0,ifname=${tap},script=no,downscript=no`, '-device', `virtio-net-pci,netdev=n0,mac=${mac}`],
    ...['-display', 'none', '-monitor', 'none', '-serial', `file:${serialLog}`, '-qmp', `unix:${qmpSocket},server=on,wait=off`],
  ];
  if (options.qga) {
    argv.push(
      ...['-device', 'virtio-serial-pci', '-chardev', `socket,id=qga0,path=${qgaSocket},server=on,wait=off`],
      ...['-device', 'virtserialport,chardev=qga0,name=org.qemu.guest_agent.0'],
    );
  }
  const startedAt = performance.now();
  return { name, qemu: ns.spawn(argv), tap, mac, serialLog, qmpSocket, qgaSocket, startedAt };
}

/**
 * Polls the guest's serial console until `marker` (a literal string or a pattern) is there; resolves with the match and the ms since QEMU
 * started. Fails at once when QEMU exits, and with the console's text after `timeoutMs`.
 */
export async function waitForSerial(guest: TestGuest, marker: string | RegExp, timeoutMs = GUEST_BOOT_TIMEOUT_MS): Promise<{ match: RegExpExecArray; afterMs: number }> {
  const pattern = typeof marker === 'string' ? new RegExp(marker.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')) : marker;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const log = await readFile(guest.serialLog, 'utf8').catch(() => '');
    const match = pattern.exec(log);
    if (match) return { match, afterMs: performance.now() - guest.startedAt };
    if (guest.qemu.child.exitCode !== null) throw new Error(`qemu of ${guest.name} exited ${guest.qemu.child.exitCode} before ${pattern}; console:\n${log}`);
    if (Date.now() > deadline) throw new Error(`${guest.name}: no ${pattern} on the console within ${timeoutMs} ms; console:\n${log}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** The address the guest configured itself, from its `cloudlet-guest: lease <ip>` console line. */
export async function guestLease(guest: TestGuest, timeoutMs = GUEST_BOOT_TIMEOUT_MS): Promise<string> {
  return (await waitForSerial(guest, /cloudlet-guest: lease (\d+\.\d+\.\d+\.\d+)/, timeoutMs)).match[1]!;
}
