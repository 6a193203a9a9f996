/**
 * Waits for the lease file to change: no polling, so a caller learns about a new lease within milliseconds.
 *
 * We watch the file's directory, filtered to the file's name, rather than the file: the file may not exist
 * yet (dnsmasq creates it at start-up; a VM can be created before), and a writer that replaces it by rename
 * (tools, lease scripts, tests) would leave a watch on the old inode deaf. dnsmasq itself truncates and
 * rewrites the file in place, which the directory watch sees as well.
 */
import { realpathSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';

export type LeaseFileChange = 'changed' | 'timeout' | 'aborted';

export interface WaitOptions {
  timeoutMs: number;
  signal?: AbortSignal;
  /**
   * After the first event, wait until the file has been quiet this long (default 5 ms, and at most 5 times
   * that in all): dnsmasq truncates before it writes, and a reader woken by the truncation alone sees no lease.
   */
  settleMs?: number;
  /** Told when the folder cannot be watched for another reason than not existing (permissions, inotify limits). */
  onWatchError?: (error: Error) => void;
}

/** Resolves on a change of `leaseFile`, after `timeoutMs`, or when `signal` aborts; never rejects. */
export function waitForLeaseFileChange(leaseFile: string, options: WaitOptions): Promise<LeaseFileChange> {
  const { timeoutMs, signal } = options;
  const settleMs = options.settleMs ?? 5;
  // A lease file that is a symlink changes in its target's folder: that one is watched too.
  const places = [{ folder: dirname(leaseFile), name: basename(leaseFile) }];
  const target = realTarget(leaseFile);
  if (target !== undefined && target !== leaseFile) places.push({ folder: dirname(target), name: basename(target) });
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve('aborted');
    const watchers: FSWatcher[] = [];
    let settleTimer: NodeJS.Timeout | undefined;
    let firstEventAt: number | undefined;
    const finish = (outcome: LeaseFileChange) => {
      clearTimeout(timeoutTimer);
      clearTimeout(settleTimer);
      signal?.removeEventListener('abort', onAbort);
      for (const watcher of watchers) watcher.close();
      resolve(outcome);
    };
    const onAbort = () => finish('aborted');
    const timeoutTimer = setTimeout(() => finish('timeout'), Math.max(0, timeoutMs));
    signal?.addEventListener('abort', onAbort, { once: true });
    const onEvent = (name: string) => (_event: string, filename: string | null) => {
      // Some platforms give no name: then any change in the folder may be ours.
      if (filename !== null && String(filename) !== name) return;
      const now = performance.now();
      firstEventAt ??= now;
      clearTimeout(settleTimer);
      const left = Math.max(0, Math.min(settleMs, firstEventAt + settleMs * 5 - now));
      settleTimer = setTimeout(() => finish('changed'), left);
    };
    for (const { folder, name } of places) {
      try {
        const watcher = watch(folder, { persistent: true }, onEvent(name));
        // The folder went away while we watched: nothing more can change; the timeout ends the wait.
        watcher.on('error', () => watcher.close());
        watchers.push(watcher);
      } catch (error) {
        // Either way the wait ends at the timeout and the caller asks again; a missing folder is normal
        // (dnsmasq has not started yet), anything else the caller may want to log.
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') options.onWatchError?.(error as Error);
      }
    }
  });
}

/** Where a symlinked lease file really is; undefined when it does not exist (yet). */
function realTarget(leaseFile: string): string | undefined {
  try {
    return realpathSync(leaseFile);
  } catch {
    return undefined;
  }
}
