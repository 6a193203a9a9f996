/**
 * A caller's AbortSignal, honoured at every stage of a call: aborted before it, while the client still
 * connects (which lasts until the deadline while the broker is away), and while it waits for replies.
 */
import { cloudletError, type CloudletError } from '../../errors.ts';

export function cancelledError(requestId: string): CloudletError {
  return cloudletError('CANCELLED', `the request ${requestId} was cancelled by the caller`);
}

/**
 * `work`'s result, or CANCELLED as soon as `signal` aborts (at once if it already has). The work is not
 * stopped: it only prepares the call (connecting, looking up hosts), and nothing has been sent yet.
 */
export async function unlessAborted<T>(work: Promise<T>, signal: AbortSignal | undefined, requestId: string): Promise<T> {
  if (!signal) return work;
  if (signal.aborted) {
    work.catch(() => undefined); // its outcome no longer matters to anyone
    throw cancelledError(requestId);
  }
  let onAbort: () => void = () => undefined;
  const aborted = new Promise<never>((_resolve, reject) => {
    onAbort = () => reject(cancelledError(requestId));
    signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([work, aborted]);
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}
