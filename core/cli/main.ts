/**
 * The `cloudlet` command. Each subcommand lives in ./commands and says which words name it and which flags
 * it takes; this file parses the command line, finds the command, runs it and turns any error into its
 * message and exit code.
 */
import process from 'node:process';
import { CloudletError, cloudletError, toCloudletError } from '../errors.ts';
import { AGENT_VERSION } from '../version.ts';
import { checkHostFlag } from './args.ts';
import { ErrorReply } from './client.ts';
import type { Command } from './command.ts';
import { EXIT, exitCodeFor, exitCodeForReply } from './exit-codes.ts';
import { createOutput } from './output.ts';
import { checkFlags, nearestCommand, readCommandLine, unknownCommand } from './parse.ts';
import { agentCommand } from './commands/agent.ts';
import { callCommand } from './commands/call.ts';
import { configCheckCommand } from './commands/config-check.ts';
import { doctorCommand } from './commands/doctor.ts';
import { hostsCommand } from './commands/hosts.ts';
import { hostsForgetCommand } from './commands/hosts-forget.ts';
import { imageListCommand } from './commands/image.ts';
import { initCommand } from './commands/init.ts';
import { installServiceCommand } from './commands/install-service.ts';
import { keysCommand } from './commands/keys.ts';
import { pluginsCommand } from './commands/plugins.ts';
import { sweepCommand } from './commands/sweep.ts';
import { vmCommands } from './commands/vm.ts';

export type { CommandContext } from './command.ts';

const COMMANDS: readonly Command[] = [
  agentCommand,
  configCheckCommand,
  pluginsCommand,
  hostsCommand,
  hostsForgetCommand,
  callCommand,
  ...vmCommands,
  imageListCommand,
  sweepCommand,
  doctorCommand,
  initCommand,
  installServiceCommand,
  keysCommand,
];

/** A command's usage lines before its description (indented two spaces): all its forms, wrapped lines included. */
const synopsis = (command: Command) => {
  const lines = command.usage.split('\n');
  const description = lines.findIndex((line) => /^ {2}\S/.test(line));
  return lines.slice(0, description === -1 ? undefined : description).join('\n');
};

const USAGE = `cloudlet ${AGENT_VERSION} — a small cloud of QEMU hosts

${COMMANDS.map(synopsis).join('\n')}

"cloudlet COMMAND --help" describes a command; docs/CLI.md has the full reference.
Common flags: --config FILE (else $CLOUDLET_CONFIG, ./cloudlet.yaml, /etc/cloudlet/cloudlet.yaml), --json.
Exit codes: 0 ok, 1 error reply (doctor: a check failed), 2 usage, 3 config invalid, 4 agent unreachable,
5 timeout, 70 internal.`;

/** The command named by the leading positionals: the longest match of its words. */
function findCommand(positionals: string[]): { command: Command; rest: string[] } | undefined {
  const matches = COMMANDS.filter((c) => c.words.every((word, i) => positionals[i] === word));
  const command = matches.sort((a, b) => b.words.length - a.words.length)[0];
  return command ? { command, rest: positionals.slice(command.words.length) } : undefined;
}

/** Usage of every command starting with `word` (`cloudlet vm` alone), or undefined. */
function groupUsage(word: string | undefined): string | undefined {
  const group = COMMANDS.filter((c) => c.words.length > 1 && c.words[0] === word);
  return group.length > 0 ? group.map((c) => c.usage).join('\n\n') : undefined;
}

export async function main(argv: string[]): Promise<number> {
  const json = argv.includes('--json');
  const output = createOutput(json);
  try {
    const line = readCommandLine(argv);
    const { positionals, values } = line;
    const found = findCommand(positionals);
    // Help first: someone asking how a command works should get that, whatever else is wrong on the line.
    if (found && values.help === true) {
      process.stdout.write(`${found.command.usage}\n`);
      return EXIT.OK;
    }
    const group = groupUsage(positionals[0]);
    // The command decides which flags exist, so an unknown one is reported before its flags are judged.
    if (!found && positionals.length > (group ? 1 : 0)) {
      throw unknownCommand(positionals.slice(0, group ? 2 : 1).join(' '), COMMANDS, group ? positionals[0] : undefined);
    }
    // `hosts forgte h3` found `hosts`, which takes no arguments: the typo of a longer command is the likelier story.
    if (found && group && found.command.words.length === 1 && found.rest.length > 0) {
      const typed = positionals.slice(0, 2).join(' ');
      if (nearestCommand(typed, COMMANDS, positionals[0]) !== undefined) throw unknownCommand(typed, COMMANDS, positionals[0]);
    }
    if (!found && values.help === true) {
      process.stdout.write(`${group ?? USAGE}\n`);
      return EXIT.OK;
    }
    checkFlags(line.flags, found?.command);
    if (values.version) {
      output.result(AGENT_VERSION, { version: AGENT_VERSION });
      return EXIT.OK;
    }
    if (!found) {
      process.stdout.write(`${group ?? USAGE}\n`);
      return EXIT.USAGE;
    }
    const { command, rest } = found;
    checkHostFlag(values);
    return await command.run({ positionals: rest, values, output });
  } catch (thrown) {
    if (thrown instanceof ErrorReply) {
      output.error(thrown.error, thrown.host);
      return exitCodeForReply(thrown.error);
    }
    const error = thrown instanceof CloudletError ? thrown : toCloudletError(thrown, 'INTERNAL');
    output.error(error);
    return exitCodeFor(error);
  }
}
