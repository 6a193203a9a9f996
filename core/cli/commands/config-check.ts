import { resolve } from 'node:path';
import { checkHostConfig } from '../../config/host-config.ts';
import { defaultConfigCandidates, readConfigFile } from '../../config/load.ts';
import { cloudletError } from '../../errors.ts';
import { formatProblem } from '../../config/problems.ts';
import type { Command } from '../command.ts';
import { findConfigFile } from '../config-source.ts';
import { EXIT } from '../exit-codes.ts';

const usage = `cloudlet config check [FILE | --config FILE] [--json]
  Validates FILE: syntax, the core schema, every plugin (load checks and options), and the key files it
  names (read as this user). Prints every problem with its file, path, what was found and what is allowed;
  exits 3 when there is any. Without FILE it checks the config "cloudlet agent" would use: $CLOUDLET_CONFIG,
  ./cloudlet.yaml or /etc/cloudlet/cloudlet.yaml.`;

export const configCheckCommand: Command = {
  words: ['config', 'check'],
  usage,
  flags: [],
  async run({ positionals, values, output }) {
    const file = await fileToCheck(positionals, values.config);
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

/**
 * FILE, or --config FILE as every other command names its config, or the one the agent would find. Never
 * the built-in defaults: a check of "no file" would say ok about a config that is not there.
 */
async function fileToCheck(positionals: readonly string[], flag: string | undefined): Promise<string> {
  if (positionals.length > 1) throw cloudletError('USAGE', `config check takes one FILE, found ${positionals.length}: ${positionals.map((p) => JSON.stringify(p)).join(' ')}\n${usage}`);
  const [given] = positionals;
  if (given !== undefined && flag !== undefined && resolve(given) !== resolve(flag)) {
    throw cloudletError('USAGE', `config check was given two files, ${JSON.stringify(given)} and --config ${JSON.stringify(flag)}; give one`);
  }
  const file = given ?? flag ?? (await findConfigFile());
  if (file === undefined) {
    throw cloudletError('USAGE', `no config to check: give FILE, or set CLOUDLET_CONFIG; neither ${defaultConfigCandidates().map((c) => resolve(c)).join(' nor ')} exists\n${usage}`);
  }
  return file;
}
