/**
 * Self-test of the QEMU test environment: the tiny guest from scripts/build-test-guest.sh boots under TCG inside
 * a throw-away network namespace, takes a lease from dnsmasq on the bridge, answers QMP and qemu-guest-agent,
 * and powers off on `system_powerdown`. Prints boot→lease timings as test diagnostics.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { createConnection, type Socket } from 'node:net';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { startDnsmasq, withNetns } from './netns.ts';
import { bootTestGuest, waitForSerial, type TestGuest } from './test-guest.ts';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
const BOOT_TIMEOUT_MS = 90_000;

interface BuiltGuest {
  dir: string;
  kernelVersion: string;
}

let guestBuild: Promise<BuiltGuest> | undefined;

/** Runs the build script once per test file (it is quick when the guest is up to date). */
function testGuest(): Promise<BuiltGuest> {
  guestBuild ??= (async () => {
    const dir = process.env.CLOUDLET_GUEST_DIR ?? join(repoRoot, '.cache/test-guest');
    try {
      await promisify(execFile)('bash', [join(repoRoot, 'scripts/build-test-guest.sh')], { env: { ...process.env, CLOUDLET_GUEST_DIR: dir } });
    } catch (error) {
      const stderr = (error as { stderr?: string }).stderr ?? '';
      throw new Error(`scripts/build-test-guest.sh failed: ${stderr.trim()}`, { cause: error });
    }
    const manifest = JSON.parse(await readFile(join(dir, 'guest.json'), 'utf8')) as { kernelVersion: string };
    return { dir, kernelVersion: manifest.kernelVersion };
  })();
  return guestBuild;
}

/** A newline-delimited JSON connection (QMP and qemu-guest-agent both speak it). */
class JsonLines {
  readonly #socket: Socket;
  readonly #queue: unknown[] = [];
  #wake: (() => void) | undefined;
  #closed = false;

  private constructor(socket: Socket) {
    this.#socket = socket;
    let buffer = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      for (let nl = buffer.indexOf('\n'); nl >= 0; nl = buffer.indexOf('\n')) {
        const line = buffer.slice(0, nl).trim();
        buffer = buffer.slice(nl + 1);
        // qemu-ga may emit a 0xFF sync byte or garbage from before it was synced: skip what is not JSON.
        try {
          if (line !== '') this.#queue.push(JSON.parse(line));
        } catch {
          continue;
        }
      }
      this.#wake?.();
    });
    socket.on('close', () => {
      this.#closed = true;
      this.#wake?.();
    });
    socket.on('error', () => {});
  }

  static async connect(path: string): Promise<JsonLines> {
    const socket = createConnection(path);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new JsonLines(socket);
  }

  get closed(): boolean {
    return this.#closed;
  }

  send(message: unknown): void {
    this.#socket.write(`${JSON.stringify(message)}\n`);
  }

  /** The next message matching `accept` (others are dropped), or undefined after timeoutMs or on close. */
  async next(accept: (message: Record<string, unknown>) => boolean, timeoutMs: number): Promise<Record<string, unknown> | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      while (this.#queue.length > 0) {
        const message = this.#queue.shift() as Record<string, unknown>;
        if (accept(message)) return message;
      }
      const left = deadline - Date.now();
      if (left <= 0 || this.#closed) return undefined;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = undefined;
    }
  }

  close(): void {
    this.#socket.destroy();
  }
}

async function qmpConnect(t: TestContext, socketPath: string): Promise<JsonLines> {
  const qmp = await JsonLines.connect(socketPath);
  t.after(() => qmp.close());
  assert.ok(await qmp.next((m) => 'QMP' in m, 5_000), 'QMP greeting');
  qmp.send({ execute: 'qmp_capabilities' });
  assert.ok(await qmp.next((m) => 'return' in m || 'error' in m, 5_000).then((m) => m && 'return' in m), 'qmp_capabilities');
  return qmp;
}

/** Asks for an ACPI power-off and waits for qemu to exit; returns the ms it took. */
async function powerDown(t: TestContext, guest: TestGuest): Promise<number> {
  const qmp = await qmpConnect(t, guest.qmpSocket);
  const asked = performance.now();
  qmp.send({ execute: 'system_powerdown' });
  const reply = await qmp.next((m) => 'return' in m || 'error' in m, 5_000);
  assert.deepEqual(reply, { return: {} });
  let timer: NodeJS.Timeout | undefined;
  const exit = await Promise.race([guest.qemu.exited, new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), 30_000)))]);
  clearTimeout(timer);
  assert.ok(exit, 'qemu exits within 30 s of system_powerdown');
  assert.equal(exit.code, 0);
  return performance.now() - asked;
}

async function guestAgent(t: TestContext, socketPath: string): Promise<JsonLines> {
  const qga = await JsonLines.connect(socketPath);
  t.after(() => qga.close());
  // The agent has no greeting and drops what arrives before it opened the port: sync until it answers.
  for (let id = 1; id <= 30; id++) {
    qga.send({ execute: 'guest-sync', arguments: { id } });
    if (await qga.next((m) => m.return === id, 1_000)) return qga;
  }
  throw new Error('qemu-guest-agent did not answer guest-sync within 30 attempts');
}

function ms(value: number): string {
  return `${(value / 1000).toFixed(2)} s`;
}

test('guest — boots, takes a DHCP lease on the bridge and powers off on system_powerdown', { timeout: 180_000 }, async (t) => {
  const guest = await testGuest();
  const ns = await withNetns(t);
  const dnsmasq = await startDnsmasq(ns);
  const vm = await bootTestGuest(ns, 'vm1', { dir: guest.dir });

  const [{ afterMs: atInit }, lease] = await Promise.all([waitForSerial(vm, 'cloudlet-guest: init'), dnsmasq.waitForLease(vm.mac, BOOT_TIMEOUT_MS)]);
  const atLease = performance.now() - vm.startedAt;
  assert.match(lease.ip, /^10\.77\.0\.\d+$/);
  await waitForSerial(vm, `cloudlet-guest: lease ${lease.ip}`, 10_000);
  await waitForSerial(vm, 'cloudlet-guest: power button armed', 10_000);

  const powerOff = await powerDown(t, vm);
  await waitForSerial(vm, 'cloudlet-guest: poweroff', 1_000);
  t.diagnostic(`kernel ${guest.kernelVersion}: qemu start → /init ${ms(atInit)}, → lease ${ms(atLease)} (${lease.ip}); system_powerdown → exit ${ms(powerOff)}`);
});

test('guest — qemu-guest-agent reports the leased address', { timeout: 180_000 }, async (t) => {
  const guest = await testGuest();
  const ns = await withNetns(t);
  const dnsmasq = await startDnsmasq(ns);
  const vm = await bootTestGuest(ns, 'vm-qga', { dir: guest.dir, qga: true });

  const lease = await dnsmasq.waitForLease(vm.mac, BOOT_TIMEOUT_MS);
  const atLease = performance.now() - vm.startedAt;
  await waitForSerial(vm, 'cloudlet-guest: qga started', 10_000);
  // The lease file is written before the guest has configured the address: wait for the guest's own marker.
  await waitForSerial(vm, `cloudlet-guest: lease ${lease.ip}`, 10_000);

  const qga = await guestAgent(t, vm.qgaSocket);
  const asked = performance.now();
  qga.send({ execute: 'guest-network-get-interfaces' });
  const reply = await qga.next((m) => 'return' in m || 'error' in m, 5_000);
  const took = performance.now() - asked;
  assert.ok(reply && Array.isArray(reply.return), `guest-network-get-interfaces answered: ${JSON.stringify(reply)}`);
  const interfaces = reply.return as { name: string; 'hardware-address'?: string; 'ip-addresses'?: { 'ip-address': string }[] }[];
  const eth0 = interfaces.find((i) => i['hardware-address'] === vm.mac);
  assert.ok(eth0, `an interface with MAC ${vm.mac} in ${JSON.stringify(interfaces)}`);
  assert.ok(eth0['ip-addresses']?.some((a) => a['ip-address'] === lease.ip), `${lease.ip} on ${JSON.stringify(eth0)}`);

  const powerOff = await powerDown(t, vm);
  t.diagnostic(`qga guest: qemu start → lease ${ms(atLease)} (${lease.ip}); guest-network-get-interfaces ${took.toFixed(0)} ms; system_powerdown → exit ${ms(powerOff)}`);
});
