/** What every `cloudlet` subcommand is: the words that name it, its usage, the flags it takes, and its run. */
import type { CliValues, FlagName } from './args.ts';
import type { Output } from './output.ts';

export interface CommandContext {
  /** Positional arguments after the command's words (`vm show ID` → [ID]). */
  positionals: string[];
  values: CliValues;
  output: Output;
}

export interface Command {
  /** e.g. ['vm', 'create']; the first word groups commands in the help. */
  words: readonly string[];
  /** Usage lines and a short description; the first line is the synopsis. */
  usage: string;
  /** Flags beyond the common ones (--config, --json, --help). */
  flags: readonly FlagName[];
  /**
   * Set by a command that reads no config (init writes one, keys works on key files): --config is then
   * refused with this as the reason and the way, instead of taken and ignored.
   */
  readsNoConfig?: string;
  /** Resolves with the exit code. */
  run(context: CommandContext): Promise<number>;
}
