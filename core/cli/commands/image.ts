import { cloudletError } from '../../errors.ts';
import { CLIENT_FLAGS, timeoutFlag } from '../args.ts';
import { deadlineAfter, hostOutcomes, openClient, noteDownHosts, untrustedField, whyMissing } from '../client.ts';
import type { Command } from '../command.ts';
import { EXIT } from '../exit-codes.ts';
import { table } from '../output.ts';

interface Image {
  name: string;
  kind: 'disk' | 'kernel';
  format?: string;
}

export const imageListCommand: Command = {
  words: ['image', 'list'],
  usage: `cloudlet image list [--host HOST] [--timeout MS] [--json]
  Lists the base images VMs can be created from, per host (on RabbitMQ every live host answers, or --host).`,
  flags: [...CLIENT_FLAGS],
  async run({ positionals, values, output }) {
    if (positionals.length > 0) throw cloudletError('USAGE', `image list takes no positional arguments, found "${positionals.join(' ')}"`);
    const timeoutMs = timeoutFlag(values);
    const client = await openClient(values, { inactivityTimeoutMs: timeoutMs ?? 30_000 });
    try {
      const gathered = await client.gather('list-images', {}, { target: values.host, deadline: deadlineAfter(timeoutMs ?? 30_000) });
      const hosts = hostOutcomes<{ images: Image[] }>(gathered);
      const images = hosts.flatMap((h) => (h.result?.images ?? []).map((image) => ({ host: h.host, ...image })));
      const failed = hosts.filter((h) => !h.ok && h.error?.code !== 'UNKNOWN_TYPE');
      for (const h of failed) output.note(`warning: ${h.host} answered [${h.error?.code}] ${h.error?.message}`);
      for (const host of gathered.missing) output.note(`warning: ${host} ${whyMissing(gathered, host)}`);
      const down = noteDownHosts(gathered, output, 'images');
      const ok = failed.length === 0 && gathered.missing.length === 0;
      const rows = images.map((i) => [i.host, i.name, i.kind, i.format ?? '-']);
      output.result(images.length === 0 ? 'no images' : table(['HOST', 'IMAGE', 'KIND', 'FORMAT'], rows), {
        ok,
        images,
        hosts: hosts.map((h) => (h.ok ? { host: h.host, ok: true, images: h.result?.images.length ?? 0 } : { host: h.host, ok: false, error: h.error })),
        missing: gathered.missing,
        ...down,
        ...untrustedField(gathered),
      });
      return ok ? EXIT.OK : EXIT.ERROR_REPLY;
    } finally {
      await client.close();
    }
  },
};
