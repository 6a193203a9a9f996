/** The agent's side of `security`: the request authorizer and, with a host key, reply signing. */
import type { SecurityConfig } from '../config/schema.ts';
import type { ReplyEnvelope } from '../envelope.ts';
import { RequestAuthorizer, type AuthorizerOptions } from './authorizer.ts';
import { signEnvelope } from './envelope-auth.ts';
import { keyIdOf, loadPrivateKey } from './keys.ts';
import { createPublicKey } from 'node:crypto';

export interface AgentSecurity {
  authorizer: RequestAuthorizer;
  signReply?: (reply: ReplyEnvelope) => ReplyEnvelope;
}

export async function agentSecurity(config: SecurityConfig, options: AuthorizerOptions = {}): Promise<AgentSecurity> {
  const authorizer = new RequestAuthorizer(config, options);
  if (!config.hostKeyFile) return { authorizer };
  const privateKey = await loadPrivateKey(config.hostKeyFile);
  const signer = { privateKey, keyId: keyIdOf(createPublicKey(privateKey)) };
  return { authorizer, signReply: (reply) => signEnvelope(reply, signer) };
}
