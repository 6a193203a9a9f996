/**
 * An agent with qemu-backend inside a throw-away network namespace with its own bridge, booting the tiny
 * test guest under TCG. The test talks to the agent over its unix socket from outside the namespace.
 */
import { spawnSync } from 'node:child_process';
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { makeRequest, type ProgressEnvelope, type ReplyEnvelope } from '../../core/envelope.ts';
import { LocalClientTransport } from '../../core/transports/local.ts';
import { cliBin, repoRoot, tempDir } from '../helpers.ts';
import { withNetns, type Netns, type NetnsProcess } from './netns.ts';

export const guestDir = process.env.CLOUDLET_GUEST_DIR ?? join(repoRoot, '.cache/test-guest');

/** Builds the guest once (quick when it exists). */
export function ensureGuest(): void {
  const result = spawnSync('bash', [join(repoRoot, 'scripts/build-test-guest.sh')], { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`scripts/build-test-guest.sh failed:\n${result.stderr}`);
}

export interface QemuHost {
  ns: Netns;
  dir: string;
  stateDir: string;
  configFile: string;
  agent: NetnsProcess;
  agentOutput(): string;
  client: LocalClientTransport;
  call(type: string, payload: unknown, onProgress?: (p: ProgressEnvelope) => void): Promise<ReplyEnvelope>;
  /** Stops the agent (SIGTERM) and waits for it; the VMs keep running. */
  stopAgent(): Promise<void>;
  startAgent(): Promise<void>;
  serialLog(vm: string): Promise<string>;
  /** Waits until `marker` appears on the VM's console (at least `count` times: the log survives reboots). */
  waitForSerial(vm: string, marker: string, timeoutMs?: number, count?: number): Promise<void>;
}

export interface QemuHostOptions {
  limits?: Record<string, number>;
  stopTimeoutMs?: number;
  /** Extra YAML lines under qemu-backend's options (indented 6 spaces). */
  qemuOptionsYaml?: string;
  /** Extra plugin entries (YAML list items, indented 2 spaces), after qemu-backend. */
  pluginsYaml?: (ns: Netns) => string;
  /** Runs before the agent starts (e.g. dnsmasq on the bridge, a broker relay). */
  beforeAgent?: (ns: Netns) => Promise<void>;
  /** Replaces the local-transport section (e.g. RabbitMQ through test/support/broker-relay.ts). */
  transportYaml?: (socket: string) => string;
  hostId?: string;
  /** A top-level `security:` section (and anything else top-level), whole lines. */
  securityYaml?: string;
}

export async function startQemuHost(t: TestContext, options: QemuHostOptions = {}): Promise<QemuHost> {
  ensureGuest();
  const ns = await withNetns(t);
  const dir = ns.dir;
  const images = join(dir, 'images');
  // `tiny`: the busybox guest; `tiny-qga`: the same with qemu-guest-agent running.
  for (const [name, initrd] of [
    ['tiny', 'initrd.img'],
    ['tiny-qga', 'initrd-qga.img'],
  ] as const) {
    await mkdir(join(images, name), { recursive: true });
    await copyFile(join(guestDir, 'vmlinuz'), join(images, name, 'vmlinuz'));
    await copyFile(join(guestDir, initrd), join(images, name, 'initrd.img'));
    await writeFile(join(images, name, 'cmdline'), 'console=ttyS0 quiet panic=-1');
  }
  await options.beforeAgent?.(ns);
  const stateDir = join(dir, 'state', 'qemu');
  const socket = join(dir, 'agent.sock');
  const configFile = join(dir, 'cloudlet.yaml');
  const limits = { maxVms: 4, maxTotalMemoryMiB: 1024, maxMemoryMiB: 512, maxVcpus: 2, ...options.limits };
  await writeFile(
    configFile,
    `host:\n  id: ${options.hostId ?? 'qhost'}\n${options.transportYaml?.(socket) ?? `transport:\n  kind: local\n  socket: ${socket}\n`}${options.securityYaml ?? ''}state:\n  dir: ${join(dir, 'state')}\nlog:\n  level: debug\n  format: json\nplugins:\n  - use: qemu-backend\n    options:\n      imagesDir: ${images}\n      stateDir: ${stateDir}\n      accel: tcg\n      network:\n        mode: bridge\n        bridge: ${ns.bridge}\n      stopTimeoutMs: ${options.stopTimeoutMs ?? 20000}\n      limits: ${JSON.stringify(limits)}\n${options.qemuOptionsYaml ?? ''}${options.pluginsYaml?.(ns) ?? ''}`,
    { mode: 0o600 },
  );
  let output = '';
  const client = new LocalClientTransport({ socketPath: socket, inactivityTimeoutMs: 120_000 });
  t.after(() => client.close());

  const host: QemuHost = {
    ns,
    dir,
    stateDir,
    configFile,
    agent: undefined as unknown as NetnsProcess,
    agentOutput: () => output,
    client,
    call: (type, payload, onProgress) => client.request(makeRequest({ type, payload }), onProgress ? { onProgress } : {}),
    async stopAgent() {
      host.agent.kill('SIGTERM');
      await host.agent.exited;
    },
    async startAgent() {
      output = '';
      const agent = ns.spawn([process.execPath, cliBin, 'agent', '--config', configFile], { env: { ...process.env, CLOUDLET_LOG_FORMAT: 'json' } });
      agent.child.stdout?.on('data', (d) => (output += d));
      agent.child.stderr?.on('data', (d) => (output += d));
      host.agent = agent;
      const deadline = Date.now() + 30_000;
      while (!output.includes('ready as host')) {
        if (agent.child.exitCode !== null) throw new Error(`agent exited early:\n${output}`);
        if (Date.now() > deadline) throw new Error(`agent not ready:\n${output}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    serialLog: (vm) => readFile(join(stateDir, vm, 'serial.log'), 'utf8').catch(() => ''),
    async waitForSerial(vm, marker, timeoutMs = 60_000, count = 1) {
      const deadline = Date.now() + timeoutMs;
      while ((await host.serialLog(vm)).split(marker).length - 1 < count) {
        if (Date.now() > deadline) throw new Error(`"${marker}" not on ${vm}'s console within ${timeoutMs} ms:\n${await host.serialLog(vm)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
  };
  await host.startAgent();
  return host;
}

/**
 * A QEMU binary that waits until `release()` (or `opensAfterS`, a minute by default) before it starts the
 * real one: a create held at its QEMU's start. The wrapper `exec`s QEMU, so it carries QEMU's arguments all
 * along. It runs in the test's namespace, which ends it with everything else inside.
 */
export async function gatedQemu(t: TestContext, { opensAfterS = 60 }: { opensAfterS?: number } = {}): Promise<{ binary: string; release: () => Promise<void> }> {
  const tools = await tempDir(t, 'cloudlet-gated-qemu-');
  const binary = join(tools, 'qemu');
  const gate = join(tools, 'go');
  const polls = Math.ceil(opensAfterS / 0.05);
  await writeFile(binary, `#!/bin/sh\nn=0\nwhile [ ! -e '${gate}' ] && [ $n -lt ${polls} ]; do sleep 0.05; n=$((n+1)); done\nexec qemu-system-x86_64 "$@"\n`, { mode: 0o755 });
  return { binary, release: () => writeFile(gate, '') };
}
