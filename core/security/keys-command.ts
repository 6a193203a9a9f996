/**
 * `cloudlet keys generate|show`: makes Ed25519 key pairs for signing and prints the public key and the config
 * lines that go with it. (Registered in core/cli/main.ts.)
 */
import { createPublicKey } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { cloudletError } from '../errors.ts';
import { generateKey, keyIdOf, loadPrivateKey, writePrivateKey } from './keys.ts';

export const keysUsage = `cloudlet keys generate --name NAME [--out DIR] [--json]
cloudlet keys show FILE [--json]
  generate: writes DIR/NAME.key (Ed25519, mode 600; never overwrites) and prints its public key with the config
  lines for a host's security.clients (or, for a host key, for the clients' security.hostKeys).
  show: prints the public key and key id of an existing private key file.`;

export interface KeysCommandInput {
  positionals: string[];
  name?: string;
  out?: string;
}

export interface KeysCommandResult {
  human: string;
  machine: Record<string, unknown>;
}

const KEY_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$/;

export async function runKeysCommand({ positionals, name, out }: KeysCommandInput): Promise<KeysCommandResult> {
  const [action, file, ...extra] = positionals;
  if (action === 'generate') {
    if (!name || !KEY_NAME.test(name) || file !== undefined) throw cloudletError('USAGE', `give --name NAME (letters, digits, "_", ".", "-")\n${keysUsage}`);
    const dir = out ?? '.';
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const path = join(dir, `${name}.key`);
    const key = generateKey();
    await writePrivateKey(path, key.privateKeyPem).catch((error: NodeJS.ErrnoException) => {
      throw cloudletError('USAGE', error.code === 'EEXIST' ? `${path} exists; choose another --name or --out (keys are never overwritten)` : `cannot write ${path}: ${error.message}`);
    });
    const human = [
      `wrote ${path} (mode 600)`,
      `key id:     ${key.keyId}`,
      `public key: ${key.publicKey}`,
      '',
      'On each host that should accept it (security.clients):',
      `  - name: ${name}`,
      `    publicKey: ${key.publicKey}`,
      `    allow: ['*']`,
      '',
      'If it is a host key (security.hostKeyFile on that host), on the clients (security.hostKeys):',
      `  <host-id>: ${key.publicKey}`,
    ].join('\n');
    return { human, machine: { file: path, keyId: key.keyId, publicKey: key.publicKey, name } };
  }
  if (action === 'show') {
    if (!file || extra.length > 0) throw cloudletError('USAGE', `give the private key FILE\n${keysUsage}`);
    const publicKey = createPublicKey(await loadPrivateKey(file));
    const base64 = Buffer.from(publicKey.export({ type: 'spki', format: 'der' })).toString('base64');
    return { human: `key id:     ${keyIdOf(publicKey)}\npublic key: ${base64}`, machine: { file, keyId: keyIdOf(publicKey), publicKey: base64 } };
  }
  throw cloudletError('USAGE', keysUsage);
}
