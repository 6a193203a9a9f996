/** Wraps a client transport with request signing and reply checking when the config's `security` asks for it. */
import { createPublicKey } from 'node:crypto';
import type { SecurityConfig } from '../config/schema.ts';
import type { ClientTransport } from '../transports/transport.ts';
import { keyIdOf, loadPrivateKey, publicKeyFrom } from './keys.ts';
import { SigningClientTransport } from './signing-client.ts';

export async function withClientSecurity(transport: ClientTransport, config: SecurityConfig): Promise<ClientTransport> {
  const hostKeys = new Map(Object.entries(config.hostKeys).map(([host, key]) => [host, publicKeyFrom(key, `security.hostKeys.${host}`)]));
  if (!config.clientKeyFile && hostKeys.size === 0 && !config.requireSignedReplies) return transport;
  const signer = config.clientKeyFile
    ? await loadPrivateKey(config.clientKeyFile).then((privateKey) => ({ privateKey, keyId: keyIdOf(createPublicKey(privateKey)) }))
    : undefined;
  return new SigningClientTransport(transport, { ...(signer ? { signer } : {}), hostKeys, requireSignedReplies: config.requireSignedReplies });
}
