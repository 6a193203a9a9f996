import { checkHostConfig } from '../../config/host-config.ts';
import { readConfigFile } from '../../config/load.ts';
import { cloudletError } from '../../errors.ts';
import { formatProblem } from '../../config/problems.ts';
import type { Command } from '../command.ts';
import { EXIT } from '../exit-codes.ts';

const usage = `cloudlet config check FILE [--json]
  Validates FILE: syntax, the core schema, every plugin (load checks and options), and the key files it
  names (read as this user). Prints every problem with its file, path, what was found and what is allowed;
  exits 3 when there is any.`;

export const configCheckCommand: Command = {
  words: ['config', 'check'],
  usage,
  flags: [],
  async run({ positionals, output }) {
    const file = positionals[0];
    if (!file || positionals.length > 1) throw cloudletError('USAGE', `expected exactly one FILE\n${usage}`);
    const checked = await checkHostConfig(await readConfigFile(file));
    if (!checked.ok) {
      output.result(
        `${file}: ${checked.problems.length} problem(s)\n${checked.problems.map(formatProblem).join('\n')}`,
        { ok: false, file, problems: checked.problems },
      );
      return EXIT.CONFIG_INVALID;
    }
    const { config } = checked;
    output.result(
      `${file}: ok — host "${config.hostId}", transport ${config.core.transport.kind}, ${config.plugins.length} plugin(s), ${config.messages.size} message type(s)`,
      {
        ok: true,
        file,
        host: config.hostId,
        transport: config.core.transport.kind,
        plugins: config.plugins.map((p) => p.plugin.name),
        messageTypes: [...config.messages.keys()],
      },
    );
    return EXIT.OK;
  },
};
