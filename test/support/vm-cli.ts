/** What the `cloudlet vm …` end-to-end tests share: the VM as the CLI prints it, and hosts on RabbitMQ. */
import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import { runCli, type CliResult } from '../helpers.ts';
import { relayBrokerIntoNetns } from './broker-relay.ts';
import { startQemuHost, type QemuHost, type QemuHostOptions } from './qemu-host.ts';

export interface Vm {
  id: string;
  host: string;
  name: string | null;
  state: string;
  how?: string;
  qmpStatus?: string | null;
  addresses: { address: string; family: string; source: string }[];
}

export function json<T>(result: CliResult): T {
  assert.ok(result.stdout.trim().startsWith('{'), `not JSON (exit ${result.code}):\n${result.stdout}\n${result.stderr}`);
  return JSON.parse(result.stdout) as T;
}

/** A qemu-backend host ("qnode" unless named) on RabbitMQ, reaching the broker from its namespace through a relay. */
export async function startBrokerQemuHost(t: TestContext, transport: (url: string) => string, options: QemuHostOptions): Promise<QemuHost> {
  let brokerUrl = '';
  return startQemuHost(t, {
    hostId: 'qnode',
    ...options,
    beforeAgent: async (ns) => {
      brokerUrl = (await relayBrokerIntoNetns(t, ns)).url;
    },
    transportYaml: () => transport(brokerUrl),
  });
}

export const vmCli = (config: string) => (args: string[], timeoutMs = 120_000) => runCli([...args, '--config', config], { timeoutMs });
