import { readFileSync } from 'node:fs';
import { packageFile } from './runtime/package-root.ts';

/** Version of the plugin API; plugins declare a semver range against it (`api: '^1.0.0'`). */
export const CORE_API_VERSION = '1.13.0';

/** Version of the wire envelope (`v` field). Bumped only for incompatible changes. */
export const PROTOCOL_VERSION = 1;

function readPackageVersion(): string {
  const pkg = JSON.parse(readFileSync(packageFile('package.json'), 'utf8')) as { version?: string };
  return pkg.version ?? '0.0.0';
}

/** Version of this cloudlet distribution (package.json). */
export const AGENT_VERSION = readPackageVersion();
