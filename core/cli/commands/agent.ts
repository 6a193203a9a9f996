import { runAgent } from '../../agent.ts';
import { loadHostConfig } from '../../config/host-config.ts';
import { findRawConfig } from '../config-source.ts';
import type { CommandContext } from '../main.ts';

export const agentUsage = `cloudlet agent [--config FILE]
  Runs this host's agent until SIGTERM/SIGINT (a second signal exits at once).`;

export async function agentCommand({ values }: CommandContext): Promise<number> {
  const config = await loadHostConfig(await findRawConfig(values.config));
  return runAgent(config);
}
