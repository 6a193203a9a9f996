/**
 * The `cloudlet` command. Each subcommand lives in ./commands; this file parses the shared flags, runs the
 * command and turns any error into its message and exit code.
 */
import process from 'node:process';
import { parseArgs } from 'node:util';
import { CloudletError, cloudletError, toCloudletError } from '../errors.ts';
import { AGENT_VERSION } from '../version.ts';
import { EXIT, exitCodeFor } from './exit-codes.ts';
import { createOutput, type Output } from './output.ts';
import { agentCommand, agentUsage } from './commands/agent.ts';
import { callCommand, callUsage } from './commands/call.ts';
import { configCheckCommand, configCheckUsage } from './commands/config-check.ts';
import { pluginsCommand, pluginsUsage } from './commands/plugins.ts';
import { hostsCommand, hostsUsage } from './commands/hosts.ts';

const OPTIONS = {
  config: { type: 'string', short: 'c' },
  json: { type: 'boolean' },
  payload: { type: 'string', short: 'p' },
  'payload-file': { type: 'string' },
  host: { type: 'string' },
  timeout: { type: 'string' },
  socket: { type: 'string' },
  'wait-ip': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean' },
} as const;

export interface CommandContext {
  positionals: string[];
  values: {
    config?: string;
    json?: boolean;
    payload?: string;
    'payload-file'?: string;
    host?: string;
    timeout?: string;
    socket?: string;
    'wait-ip'?: boolean;
  };
  output: Output;
}

interface Command {
  usage: string;
  run(context: CommandContext): Promise<number>;
}

const COMMANDS: Record<string, Command> = {
  agent: { usage: agentUsage, run: agentCommand },
  'config check': { usage: configCheckUsage, run: configCheckCommand },
  plugins: { usage: pluginsUsage, run: pluginsCommand },
  call: { usage: callUsage, run: callCommand },
  hosts: { usage: hostsUsage, run: hostsCommand },
};

const USAGE = `cloudlet ${AGENT_VERSION} — a small cloud of QEMU hosts

${Object.values(COMMANDS)
  .map((c) => c.usage)
  .join('\n\n')}

Common flags: --config FILE (else $CLOUDLET_CONFIG, ./cloudlet.yaml, /etc/cloudlet/cloudlet.yaml), --json.
Exit codes: 0 ok, 1 error reply, 2 usage, 3 config invalid, 4 agent unreachable, 5 timeout, 70 internal.`;

export async function main(argv: string[]): Promise<number> {
  const json = argv.includes('--json');
  const output = createOutput(json);
  try {
    let parsed;
    try {
      parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
    } catch (error) {
      throw cloudletError('USAGE', `${(error as Error).message}\n\n${USAGE}`);
    }
    const { positionals, values } = parsed;
    if (values.version) {
      output.result(AGENT_VERSION, { version: AGENT_VERSION });
      return EXIT.OK;
    }
    const [first, second, ...rest] = positionals;
    const name = first === 'config' ? `config ${second ?? ''}`.trim() : first;
    const command = name ? COMMANDS[name] : undefined;
    if (values.help || !command) {
      if (!values.help && name) throw cloudletError('USAGE', `unknown command "${name}"\n\n${USAGE}`);
      process.stdout.write(`${command?.usage ?? USAGE}\n`);
      return values.help ? EXIT.OK : EXIT.USAGE;
    }
    const commandPositionals = first === 'config' ? rest : [second, ...rest].filter((p): p is string => p !== undefined);
    return await command.run({ positionals: commandPositionals, values, output });
  } catch (thrown) {
    const error = thrown instanceof CloudletError ? thrown : toCloudletError(thrown, 'INTERNAL');
    output.error(error);
    return exitCodeFor(error);
  }
}
