/**
 * A new VM's id: `<host>.<8 lowercase letters>`. The letters come from the create-vm request's id, so the
 * same request run again on the same host (a redelivery after the agent died, a client re-sending it with
 * the same id) arrives at the same folder: create-vm finds there what the earlier run made or left, instead
 * of making a second VM beside it. Only when that id is taken by something else does a random one follow.
 */
import { createHash, randomInt } from 'node:crypto';

const LETTERS = 8;

/** The id a create-vm request gets on `host`. The host is hashed too: two hosts share no tap names for it. */
export function vmIdForRequest(host: string, requestId: string): string {
  const digest = createHash('sha256').update(`${host}\n${requestId}`).digest();
  // 256 is not a multiple of 26, so some letters are a little likelier; the id only has to differ.
  const suffix = Array.from(digest.subarray(0, LETTERS), (byte) => String.fromCharCode(97 + (byte % 26))).join('');
  return `${host}.${suffix}`;
}

/** A random id on `host` that no folder in `taken` has. */
export function randomVmId(host: string, taken: ReadonlySet<string>): string {
  for (;;) {
    const suffix = Array.from({ length: LETTERS }, () => String.fromCharCode(97 + randomInt(26))).join('');
    const id = `${host}.${suffix}`;
    if (!taken.has(id)) return id;
  }
}
