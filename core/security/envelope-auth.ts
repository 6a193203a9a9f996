/**
 * Signing and verifying envelopes. A signature covers the canonical JSON of the envelope without its `auth`
 * field — id, type, target, deadline and payload of a request; id, host, ok, result and error of a reply —
 * so none of them can be changed or replayed under another id.
 */
import { sign, verify, type KeyObject } from 'node:crypto';
import type { ReplyEnvelope, RequestEnvelope } from '../envelope.ts';
import { canonicalJson } from './canonical.ts';

export interface Signer {
  keyId: string;
  privateKey: KeyObject;
}

function signedBytes(envelope: RequestEnvelope | ReplyEnvelope): Buffer {
  const { auth: _auth, ...rest } = envelope as (RequestEnvelope | ReplyEnvelope) & { auth?: unknown };
  return Buffer.from(canonicalJson(rest), 'utf8');
}

export function signEnvelope<T extends RequestEnvelope | ReplyEnvelope>(envelope: T, signer: Signer): T {
  const { auth: _old, ...unsigned } = envelope as T & { auth?: unknown };
  const sig = sign(null, signedBytes(unsigned as T), signer.privateKey).toString('base64');
  return { ...(unsigned as T), auth: { key: signer.keyId, sig } };
}

export function signatureValid(envelope: RequestEnvelope | ReplyEnvelope, publicKey: KeyObject): boolean {
  const auth = (envelope as { auth?: { sig?: unknown } }).auth;
  if (typeof auth?.sig !== 'string') return false;
  try {
    return verify(null, signedBytes(envelope), publicKey, Buffer.from(auth.sig, 'base64'));
  } catch {
    return false;
  }
}
