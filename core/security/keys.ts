/**
 * Ed25519 keys: generation, loading, and the short key id that travels in envelopes. Private keys live in
 * PEM files readable by their owner only; a file that others can read is refused.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import type { Stats } from 'node:fs';
import { stat, writeFile } from 'node:fs/promises';
import { cloudletError } from '../errors.ts';
import { readTextUpTo } from '../read-up-to.ts';

export interface GeneratedKey {
  privateKeyPem: string;
  /** Base64 of the SPKI DER: what configs list as `publicKey`. */
  publicKey: string;
  keyId: string;
}

export function generateKey(): GeneratedKey {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const publicDer = publicKey.export({ type: 'spki', format: 'der' });
  return {
    privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicKey: Buffer.from(publicDer).toString('base64'),
    keyId: keyIdOf(publicKey),
  };
}

/** First 16 hex digits of the SHA-256 of the public key (SPKI DER). */
export function keyIdOf(publicKey: KeyObject): string {
  return createHash('sha256').update(publicKey.export({ type: 'spki', format: 'der' })).digest('hex').slice(0, 16);
}

export function publicKeyFrom(base64Spki: string, where: string): KeyObject {
  try {
    const key = createPublicKey({ key: Buffer.from(base64Spki, 'base64'), format: 'der', type: 'spki' });
    if (key.asymmetricKeyType !== 'ed25519') throw new Error(`an ${key.asymmetricKeyType} key`);
    return key;
  } catch (cause) {
    throw cloudletError('CONFIG_INVALID', `${where}: not a base64 Ed25519 public key (SPKI DER): ${(cause as Error).message}`, { where }, cause);
  }
}

/** Far more than a PEM Ed25519 private key (~120 bytes). */
const KEY_FILE_MAX_BYTES = 64 * 1024;

/**
 * Loads a private key file, refusing one that group or others can read. What the file holds is judged
 * first: a path to something that is no key at all (a folder, a FIFO, /etc/shadow) is told so, not told to
 * chmod 600 itself.
 */
export async function loadPrivateKey(file: string): Promise<KeyObject> {
  const info = await stat(file).catch((cause: Error) => {
    throw cloudletError('CONFIG_NOT_FOUND', `key file ${file} cannot be read: ${cause.message}`, { file }, cause);
  });
  // A FIFO would hold the start until someone writes to it.
  if (!info.isFile()) throw cloudletError('CONFIG_INVALID', `key file ${file} is not a regular file (${fileKind(info)}); give the PEM file cloudlet keys generate wrote`, { file });
  const read = await readTextUpTo(file, KEY_FILE_MAX_BYTES).catch((cause: Error) => {
    throw cloudletError('CONFIG_NOT_FOUND', `key file ${file} cannot be read: ${cause.message}`, { file }, cause);
  });
  // A wrong path (a disk image) is not read whole.
  if ('tooLarge' in read) throw cloudletError('CONFIG_INVALID', `key file ${file} is larger than ${KEY_FILE_MAX_BYTES / 1024} KiB; an Ed25519 key file (cloudlet keys generate) is under 1 KiB`, { file });
  let key: KeyObject;
  try {
    key = createPrivateKey(read.text);
  } catch (cause) {
    // OpenSSL's own words ("DECODER routines::unsupported") name neither the file nor what was expected.
    throw cloudletError('CONFIG_INVALID', `key file ${file} holds no private key (a PEM "PRIVATE KEY", as cloudlet keys generate writes): ${(cause as Error).message}`, { file }, cause);
  }
  if (key.asymmetricKeyType !== 'ed25519') throw cloudletError('CONFIG_INVALID', `key file ${file} holds an ${key.asymmetricKeyType} key; Ed25519 is required`);
  if ((info.mode & 0o077) !== 0) {
    throw cloudletError('CONFIG_INSECURE', `key file ${file} is readable by others (mode ${(info.mode & 0o777).toString(8)}); run: chmod 600 ${file}`, {
      file,
      mode: (info.mode & 0o777).toString(8),
    });
  }
  return key;
}

function fileKind(info: Stats): string {
  if (info.isDirectory()) return 'a folder';
  if (info.isFIFO()) return 'a FIFO';
  if (info.isSocket()) return 'a socket';
  if (info.isCharacterDevice() || info.isBlockDevice()) return 'a device';
  return 'not a file';
}

export async function writePrivateKey(file: string, pem: string): Promise<void> {
  await writeFile(file, pem, { mode: 0o600, flag: 'wx' });
}
