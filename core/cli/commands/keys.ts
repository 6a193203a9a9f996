import { keysUsage, runKeysCommand } from '../../security/keys-command.ts';
import type { Command } from '../command.ts';
import { EXIT } from '../exit-codes.ts';

export const keysCommand: Command = {
  words: ['keys'],
  usage: keysUsage,
  flags: ['name', 'out'],
  async run({ positionals, values, output }) {
    const { human, machine } = await runKeysCommand({ positionals, ...(values.name ? { name: values.name } : {}), ...(values.out ? { out: values.out } : {}) });
    output.result(human, machine);
    return EXIT.OK;
  },
};
