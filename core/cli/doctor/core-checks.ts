/** Checks for what every host needs: Node, the state folder, the transport (socket or broker). */
import { createConnection } from 'node:net';
import process from 'node:process';
import amqplib from 'amqplib';
import type { CoreConfig } from '../../config/schema.ts';
import { defaultStateDir } from '../../config/schema.ts';
import { redactUrlCredentials } from '../../logger.ts';
import { defaultSocketPath } from '../../transports/socket-path.ts';
import { explainConnectFailure } from '../../transports/amqp/connect-failure.ts';
import { dirname } from 'node:path';
import { fail, folderState, ok, warn, type CheckResult } from './check.ts';

export function nodeCheck(): CheckResult {
  const major = Number(process.versions.node.split('.')[0]);
  return major >= 20
    ? ok('node', null, `node ${process.versions.node}`)
    : fail('node', null, `node ${process.versions.node} is too old`, 'install Node.js 20 or newer (e.g. from nodesource or the distribution backports)');
}

/** A folder the agent writes to: must exist (or be creatable) and be writable. */
export async function writableFolderCheck(id: string, plugin: string | null, dir: string, what: string): Promise<CheckResult> {
  const state = await folderState(dir);
  if (state.kind === 'not-a-folder') return fail(id, plugin, `${what} ${dir} is not a folder`, `remove or rename ${dir}, or point the config elsewhere`);
  if (state.kind === 'missing') {
    return state.creatable
      ? warn(id, plugin, `${what} ${dir} does not exist yet (it will be created under ${state.parent})`, `mkdir -p ${dir}`)
      : fail(id, plugin, `${what} ${dir} does not exist and ${state.parent} is not writable`, `mkdir -p ${dir} and give the agent's user write access (chown)`);
  }
  if (!state.writable) return fail(id, plugin, `${what} ${dir} is not writable by this user`, `chown the folder to the agent's user, or run the agent as that owner`);
  return ok(id, plugin, `${what} ${dir} is writable`);
}

export function stateDirOf(core: CoreConfig): string {
  return core.state.dir ?? defaultStateDir();
}

export async function transportCheck(core: CoreConfig): Promise<CheckResult[]> {
  if (core.transport.kind === 'amqp') return [await brokerCheck(core.transport.url)];
  const socket = core.transport.socket ?? defaultSocketPath();
  const folder = await writableFolderCheck('socket-dir', null, dirname(socket), 'the socket folder');
  const answers = await new Promise<boolean>((resolve) => {
    const probe = createConnection(socket);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  const agent = answers
    ? ok('agent', null, `an agent listens on ${socket}`)
    : warn('agent', null, `no agent listens on ${socket}`, 'start it: "systemctl start cloudlet" (see "cloudlet install-service") or "cloudlet agent --config FILE"');
  return [folder, agent];
}

/** Connects with the configured URL and credentials, opens a channel, and says why it could not. */
export async function brokerCheck(url: string, timeoutMs = 5_000): Promise<CheckResult> {
  const shown = redactUrlCredentials(url);
  try {
    const connection = await amqplib.connect(url, { timeout: timeoutMs });
    try {
      const channel = await connection.createChannel();
      await channel.close();
    } finally {
      await connection.close().catch(() => undefined);
    }
    return ok('broker', null, `connected to ${shown} with the configured credentials`);
  } catch (error) {
    const message = redactUrlCredentials((error as Error).message ?? String(error));
    const known = explainConnectFailure(error, message, shown);
    if (known) return fail('broker', null, known.reason, known.fix);
    return fail('broker', null, `cannot connect to ${shown}: ${message}`, 'check that RabbitMQ runs and that transport.url is right; "rabbitmq-diagnostics status" on the broker');
  }
}
