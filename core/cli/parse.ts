/**
 * The command line read into positionals and flag values, and each flag judged against the command it was
 * given to. Node's strict parseArgs would judge flags too, but before the command is known and in words
 * about its own API ("argument is ambiguous", "To specify a positional argument starting with a '-'…"), and
 * it cannot say which flags the command does take. So argv is read loosely here (never an error), and every
 * flag is then checked with our own message and a hint.
 */
import { parseArgs } from 'node:util';
import { cloudletError, type CloudletError } from '../errors.ts';
import { COMMON_FLAGS, FLAGS, type CliValues, type FlagName } from './args.ts';
import type { Command } from './command.ts';
import { nearest } from '../nearest.ts';

/** One flag as written: `--image x`, `--image=x`, `-c FILE`, `-x`. */
export interface FlagUse {
  /** The name parseArgs resolved (`config` for `-c`); for an unknown flag, what followed the dashes. */
  name: string;
  /** As written: `--image`, `-c`. */
  written: string;
  value?: string;
  /** True for `--image=x` and `-cFILE`: the value was part of the flag's own word. */
  inline: boolean;
}

export interface CommandLine {
  positionals: string[];
  /** Only meaningful once `checkFlags` accepted every flag (a string flag without its value reads `true`). */
  values: CliValues;
  flags: FlagUse[];
}

/** Reads argv without judging it; `--` ends the flags, as usual. */
export function readCommandLine(argv: string[]): CommandLine {
  const { values, positionals, tokens } = parseArgs({ args: argv, options: FLAGS, allowPositionals: true, strict: false, tokens: true });
  const flags: FlagUse[] = [];
  for (const token of tokens) {
    if (token.kind !== 'option') continue;
    flags.push({ name: token.name, written: token.rawName, ...(token.value !== undefined && { value: token.value }), inline: token.inlineValue === true });
  }
  return { positionals, values: values as CliValues, flags };
}

const isFlagName = (name: string): name is FlagName => Object.hasOwn(FLAGS, name);

/** The flags a command takes, as written in its usage: its own first, then --config, --json, --help. */
export function flagsOf(command: Command): string[] {
  return [...commonFlagsOf(command)].map((flag) => `--${flag}`);
}

/** The command's own flags and the common ones it takes (all but --config for one that reads no config). */
function commonFlagsOf(command: Command): Set<FlagName> {
  return new Set<FlagName>([...command.flags, ...COMMON_FLAGS.filter((flag) => !(flag === 'config' && command.readsNoConfig))]);
}

const helpHint = (command: Command | undefined) =>
  command ? `"cloudlet ${command.words.join(' ')}" takes ${flagsOf(command).join(', ')}; "cloudlet ${command.words.join(' ')} --help" describes them` : '"cloudlet --help" lists the commands, "cloudlet COMMAND --help" the flags of one';

/**
 * Every flag exists, has a (non-empty) value if it takes one and none if it does not, and belongs to `command` (any
 * command's flag passes when none was found: the caller reports the command first). `--version` goes with
 * any command. Throws the first mistake as USAGE, with `details.flag` and a hint.
 */
export function checkFlags(flags: readonly FlagUse[], command: Command | undefined): void {
  const where = command ? ` for "cloudlet ${command.words.join(' ')}"` : '';
  for (const flag of flags) {
    if (!isFlagName(flag.name)) {
      const candidates = command ? flagsOf(command) : Object.keys(FLAGS).map((name) => `--${name}`);
      const guess = nearest(flag.written.startsWith('--') ? flag.written : `--${flag.name}`, candidates);
      throw usage(`unknown flag "${flag.written}"${where}`, flag, `${guess ? `did you mean ${guess}? ` : ''}${helpHint(command)}`);
    }
    const kind = FLAGS[flag.name].type;
    if (kind === 'boolean' && flag.value !== undefined) {
      throw usage(`${flag.written} takes no value, found "${flag.written}=${flag.value}"`, flag, `write ${flag.written} alone`);
    }
    if (kind === 'string' && flag.value === undefined) {
      throw usage(`${flag.written} needs a value, found nothing after it`, flag, `write ${flag.written} VALUE; ${helpHint(command)}`);
    }
    // An empty one (`--config ""`, often an unset shell variable) must not quietly become the default,
    // $CLOUDLET_CONFIG or the current directory.
    if (kind === 'string' && flag.value === '') {
      throw usage(`${flag.written} needs a value, found an empty one ("")`, flag, `write ${flag.written} VALUE, or leave the flag out for its default`);
    }
    // `--request-id --host h1`: the next word is a flag, not this one's value. A value that really starts
    // with "-" is written in the flag's own word. A lone "-" (stdin, by convention) is a value.
    if (kind === 'string' && !flag.inline && flag.value !== undefined && flag.value.length > 1 && flag.value.startsWith('-')) {
      const joined = flag.written.startsWith('--') ? `${flag.written}=-VALUE` : `${flag.written}-VALUE`;
      throw usage(`${flag.written} needs a value, found "${flag.value}", which reads as a flag`, flag, `give ${flag.written} its value before the next flag; a value that starts with "-" is written ${joined}`);
    }
  }
  if (!command) return;
  const config = command.readsNoConfig && flags.find((flag) => flag.name === 'config');
  if (config) throw usage(`${config.written} is not a flag of "cloudlet ${command.words.join(' ')}": ${command.readsNoConfig}`, config, helpHint(command));
  const taken = new Set<string>([...commonFlagsOf(command), 'version']);
  const foreign = [...new Set(flags.filter((flag) => !taken.has(flag.name)).map((flag) => `--${flag.name}`))];
  if (foreign.length > 0) {
    const message = `${foreign.join(', ')} ${foreign.length > 1 ? 'are not flags' : 'is not a flag'} of "cloudlet ${command.words.join(' ')}"`;
    throw cloudletError('USAGE', message, { flag: foreign[0], command: command.words.join(' '), hint: helpHint(command) });
  }
}

function usage(message: string, flag: FlagUse, hint: string): CloudletError {
  return cloudletError('USAGE', message, { flag: flag.written, hint });
}

/** The command `typed` most likely meant (`vm craete` → `vm create`), among those of `group` if given. */
export function nearestCommand(typed: string, commands: readonly Command[], group: string | undefined): string | undefined {
  return nearest(typed, commands.filter((c) => group === undefined || c.words[0] === group).map((c) => c.words.join(' ')));
}

/** `cloudlet vm craete`: the command meant, if one is near, and where the commands are listed. */
export function unknownCommand(typed: string, commands: readonly Command[], group: string | undefined): CloudletError {
  const guess = nearestCommand(typed, commands, group);
  // `cloudlet hosts --help` describes `hosts` itself, not the group: there only the overview lists them all.
  const groupListed = group !== undefined && !commands.some((c) => c.words.length === 1 && c.words[0] === group);
  const list = groupListed ? `"cloudlet ${group} --help" lists the ${group} commands` : '"cloudlet --help" lists the commands';
  return cloudletError('USAGE', `unknown command "${typed}"`, { command: typed, hint: `${guess ? `did you mean "cloudlet ${guess}"? ` : ''}${list}` });
}
