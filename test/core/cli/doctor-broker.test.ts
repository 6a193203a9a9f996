/** doctor's broker check against the real broker on loopback: each failure named for what it is. */
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { join } from 'node:path';
import test from 'node:test';
import { brokerCheck } from '../../../core/cli/doctor/core-checks.ts';
import { SHARED_BROKER } from '../../support/cloud.ts';
import { runCli, tempDir, writeConfig } from '../../helpers.ts';

/** A loopback port with "403" in its number that nothing listens on (it was free a moment ago). */
async function closedPortWith403(): Promise<number> {
  for (const port of [4031, 4032, 4033, 14030, 14031, 24030, 34030, 40300, 40301, 40302]) {
    const server = createServer();
    const free = await new Promise<boolean>((resolve) => {
      server.once('error', () => resolve(false));
      server.listen(port, '127.0.0.1', () => resolve(true));
    });
    if (free) {
      await new Promise((resolve) => server.close(resolve));
      return port;
    }
  }
  throw new Error('no free port with 403 in it');
}

test('doctor — broker: nothing listening, refused credentials and an unknown vhost are told apart', { timeout: 60_000 }, async () => {
  // Before, the message was matched for "403" and "vhost" before the error code: a refused connection to
  // a port with 403 in it (":4031") read as refused credentials, a host named vhost-… as a missing vhost.
  const url = new URL(SHARED_BROKER);
  const port = await closedPortWith403();
  const nobody = await brokerCheck(`amqp://guest:guest@127.0.0.1:${port}`);
  assert.match(nobody.summary, /nothing listens at/, JSON.stringify(nobody));
  // amqplib's own wording of the broker's refusals, as the check sees them.
  const badPassword = await brokerCheck(`amqp://guest:not-the-password@${url.host}`);
  assert.match(badPassword.summary, /refused the credentials/, JSON.stringify(badPassword));
  const noVhost = await brokerCheck(`amqp://${url.username}:${url.password}@${url.host}/no-such-vhost-4031`);
  assert.match(noVhost.summary, /does not allow this virtual host/, JSON.stringify(noVhost));
  assert.equal((await brokerCheck(SHARED_BROKER)).status, 'ok');
});

test('transport — the CLI and the agent say a refused virtual host or login is that, with the fix, as doctor does', { timeout: 60_000 }, async (t) => {
  // Before, both printed amqplib's "Expected ConnectionOpenOk; got <ConnectionClose channel:0>", which names
  // neither the vhost nor what to do; only doctor translated it.
  const url = new URL(SHARED_BROKER);
  const dir = await tempDir(t);
  // state.dir: the agent below makes its outcomes folder there before it connects (else /var/lib/cloudlet, as root).
  const config = await writeConfig(dir, 'cloudlet.yaml', `host: { id: vhost-test }\ntransport: { kind: amqp, url: "amqp://127.0.0.1:1/" }\nstate: { dir: ${JSON.stringify(join(dir, 'state'))} }\nplugins: []\n`);
  const noVhost = await runCli(['hosts', '--config', config], { env: { CLOUDLET_AMQP_URL: `amqp://${url.username}:${url.password}@${url.host}/no-such-vhost` } });
  assert.equal(noVhost.code, 4, noVhost.stderr);
  assert.match(noVhost.stderr, /^error \[BROKER_UNAVAILABLE\]: cannot connect to the broker: the broker at amqp:\/\/guest:\*+@[^ ]+\/no-such-vhost does not allow this virtual host \(it does not exist, or the user may not use it\)$/m);
  assert.match(noVhost.stderr, /^hint: create it and grant the user access: rabbitmqctl add_vhost VHOST; /m);
  assert.doesNotMatch(noVhost.stderr, /ConnectionOpenOk/);
  const badLogin = await runCli(['hosts', '--config', config], { env: { CLOUDLET_AMQP_URL: `amqp://guest:not-the-password@${url.host}` } });
  assert.equal(badLogin.code, 4, badLogin.stderr);
  assert.match(badLogin.stderr, /^error \[BROKER_UNAVAILABLE\]: cannot connect to the broker: the broker at [^ ]+ refused the credentials$/m);
  assert.doesNotMatch(badLogin.stderr, /not-the-password/);
  const agent = await runCli(['agent', '--config', config], { env: { CLOUDLET_AMQP_URL: `amqp://${url.username}:${url.password}@${url.host}/no-such-vhost`, CLOUDLET_LOG_FORMAT: 'json' } });
  assert.equal(agent.code, 1, agent.stdout + agent.stderr);
  assert.match(agent.stdout + agent.stderr, /agent failed to start.*cannot connect to the broker: the broker at [^ ]+\/no-such-vhost does not allow this virtual host/);
});
