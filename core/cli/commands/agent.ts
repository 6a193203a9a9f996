import { runAgent } from '../../agent.ts';
import { loadHostConfig } from '../../config/host-config.ts';
import { refuseConfigPositionals } from '../args.ts';
import type { Command } from '../command.ts';
import { findRawConfig } from '../config-source.ts';

export const agentCommand: Command = {
  words: ['agent'],
  usage: `cloudlet agent [--config FILE]
  Runs this host's agent until SIGTERM, SIGINT or SIGHUP (a second signal exits at once). Logs go to
  stdout: readable lines on a terminal, pino JSON otherwise (journald under systemd).`,
  flags: [],
  async run({ positionals, values }) {
    refuseConfigPositionals('agent', positionals);
    const config = await loadHostConfig(await findRawConfig(values.config));
    return runAgent(config);
  },
};
