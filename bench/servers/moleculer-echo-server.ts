/**
 * The Moleculer side of the RPC benchmark: one node with an `echo.echo` action that returns its params,
 * on Moleculer's AMQP transporter. Runs as its own process, like an agent.
 *
 *   node --import tsx bench/servers/moleculer-echo-server.ts URL NAMESPACE NODE_ID SETTINGS_JSON
 */
import { ServiceBroker, moleculerBrokerOptions, type MoleculerTransportSettings } from '../lib/moleculer.ts';

const [url, namespace, nodeID, settingsJson] = process.argv.slice(2);
if (!url || !namespace || !nodeID || !settingsJson) {
  console.error('usage: moleculer-echo-server.ts URL NAMESPACE NODE_ID SETTINGS_JSON');
  process.exit(2);
}
const settings = JSON.parse(settingsJson) as MoleculerTransportSettings;
const broker = new ServiceBroker(moleculerBrokerOptions(url, namespace, nodeID, settings));
broker.createService({
  name: 'echo',
  actions: {
    echo: (ctx) => ctx.params,
  },
});
await broker.start();
console.log(`moleculer echo server ready as ${nodeID}`);

const stop = async () => {
  await broker.stop().catch(() => undefined);
  process.exit(0);
};
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
