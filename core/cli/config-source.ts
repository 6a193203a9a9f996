/** Finds and reads the config a CLI command should use. */
import { access } from 'node:fs/promises';
import process from 'node:process';
import { defaultConfigCandidates, rawConfigFrom, readConfigFile, validateCoreConfig, type RawConfig } from '../config/load.ts';
import { configInvalidError } from '../config/problems.ts';
import type { CoreConfig } from '../config/schema.ts';

/** `--config`, then CLOUDLET_CONFIG, ./cloudlet.yaml, /etc/cloudlet/cloudlet.yaml; else built-in defaults. */
export async function findRawConfig(explicit: string | undefined): Promise<RawConfig> {
  // Not `if (explicit)`: an empty --config is refused as USAGE, never read as "none given".
  if (explicit !== undefined) return readConfigFile(explicit);
  const found = await findConfigFile();
  return found === undefined ? rawConfigFrom({}, '(defaults)', process.env) : readConfigFile(found);
}

/**
 * The config file a command uses when none is named: CLOUDLET_CONFIG (even when it does not exist, so that
 * reading it says so), else the first of ./cloudlet.yaml and /etc/cloudlet/cloudlet.yaml that exists.
 */
export async function findConfigFile(): Promise<string | undefined> {
  for (const candidate of defaultConfigCandidates()) {
    if (candidate === process.env.CLOUDLET_CONFIG) return candidate;
    const exists = await access(candidate).then(
      () => true,
      () => false,
    );
    if (exists) return candidate;
  }
  return undefined;
}

/** The core part only: what a client needs to reach an agent, without loading any plugin. */
export async function clientConfig(explicit: string | undefined): Promise<CoreConfig> {
  const raw = await findRawConfig(explicit);
  const validated = validateCoreConfig(raw);
  if (!validated.config) throw configInvalidError(validated.problems);
  return validated.config;
}
