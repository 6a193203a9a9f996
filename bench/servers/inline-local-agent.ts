/**
 * Benchmark 4's baseline server: the agent's request path on the local transport (unix socket, dispatcher,
 * validation) with every handler called inline instead of in a worker pool. Its own process, like the agent.
 *
 *   node --import tsx bench/servers/inline-local-agent.ts CONFIG_FILE
 */
import { Dispatcher } from '../../core/dispatcher.ts';
import { loadHostConfig } from '../../core/config/host-config.ts';
import { readConfigFile } from '../../core/config/load.ts';
import { createLogger } from '../../core/logger.ts';
import { LocalAgentTransport } from '../../core/transports/local.ts';
import { AGENT_VERSION } from '../../core/version.ts';
import { InlinePools } from '../lib/inline-pools.ts';

const [configFile] = process.argv.slice(2);
if (!configFile) {
  console.error('usage: inline-local-agent.ts CONFIG_FILE');
  process.exit(2);
}
const config = await loadHostConfig(await readConfigFile(configFile));
if (config.core.transport.kind !== 'local' || !config.core.transport.socket) throw new Error('the inline agent needs transport.kind local with a socket');
const log = createLogger({ level: config.core.log.level, format: 'json' });
const pools = new InlinePools(config.messages, { id: config.hostId, agentVersion: AGENT_VERSION, startedAt: Date.now() }, config.plugins);
const dispatcher = new Dispatcher({
  hostId: config.hostId,
  maxMessageBytes: config.core.limits.maxMessageBytes,
  keepaliveMs: config.core.limits.keepaliveMs,
  routes: config.messages,
  pools,
  log,
});
const transport = new LocalAgentTransport({ socketPath: config.core.transport.socket, hostId: config.hostId, maxMessageBytes: config.core.limits.maxMessageBytes });
await transport.listen(dispatcher.handle);
console.log(`inline agent ready on ${config.core.transport.socket}`);

const stop = async () => {
  await transport.close().catch(() => undefined);
  process.exit(0);
};
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
