/**
 * A `cloudlet agent` inside a throw-away network namespace (test/support/netns.ts), on a local socket the
 * bench reaches from outside. Everything in the namespace dies with it when the scope closes.
 */
import { join } from 'node:path';
import { LocalClientTransport } from '../../core/transports/local.ts';
import { withNetns, type Netns, type NetnsProcess } from '../../test/support/netns.ts';
import { writeLocalConfig, socketAccepts } from './local.ts';
import { cliBin } from './processes.ts';
import type { CleanupScope } from './scope.ts';

export async function benchNetns(scope: CleanupScope): Promise<Netns> {
  return withNetns(scope.asTestContext());
}

export interface NetnsAgent {
  agent: NetnsProcess;
  client: LocalClientTransport;
  output(): string;
  stateDir: string;
}

/** Starts an agent in `ns` with these plugin entries; resolves when its socket accepts, rejects if it exits. */
export async function startNetnsAgent(scope: CleanupScope, ns: Netns, hostId: string, pluginsYaml: string[], timeoutMs = 60_000): Promise<NetnsAgent> {
  const { file, socket } = await writeLocalConfig({ dir: ns.dir, hostId, pluginsYaml });
  const agent = ns.spawn([process.execPath, cliBin, 'agent', '--config', file], { env: { ...process.env, CLOUDLET_LOG_FORMAT: 'json' } });
  let output = '';
  agent.child.stdout?.on('data', (d: Buffer) => (output += d.toString('utf8')));
  agent.child.stderr?.on('data', (d: Buffer) => (output += d.toString('utf8')));
  scope.after(async () => {
    agent.kill('SIGKILL');
    await agent.exited.catch(() => undefined);
  });
  const deadline = Date.now() + timeoutMs;
  while (!(await socketAccepts(socket))) {
    if (agent.child.exitCode !== null) throw new Error(`agent ${hostId} exited (${agent.child.exitCode}) before it listened:\n${output.slice(-3_000)}`);
    if (Date.now() > deadline) throw new Error(`agent ${hostId} did not listen within ${timeoutMs} ms:\n${output.slice(-3_000)}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  const client = new LocalClientTransport({ socketPath: socket, inactivityTimeoutMs: 120_000 });
  scope.after(() => client.close());
  return { agent, client, output: () => output, stateDir: join(ns.dir, 'state', hostId) };
}
