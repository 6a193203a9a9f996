import { keysUsage, runKeysCommand } from '../../security/keys-command.ts';
import type { Command } from '../command.ts';
import { EXIT } from '../exit-codes.ts';
import { folderError, isMkdirError } from '../folders.ts';

export const keysCommand: Command = {
  words: ['keys'],
  usage: keysUsage,
  flags: ['name', 'out'],
  readsNoConfig: 'keys reads no config; it writes key files to --out DIR, and shows the one FILE names',
  async run({ positionals, values, output }) {
    const { human, machine } = await runKeysCommand({ positionals, ...(values.name ? { name: values.name } : {}), ...(values.out ? { out: values.out } : {}) }).catch(async (error: unknown) => {
      // keys generate makes the --out folder itself: a path through a file is the operator's to fix, not a bug.
      throw isMkdirError(error) ? await folderError(error.path, `--out ${values.out ?? '.'}`, error) : error;
    });
    output.result(human, machine);
    return EXIT.OK;
  },
};
