/**
 * One socket write per event-loop turn instead of one per AMQP frame.
 *
 * amqplib queues each channel's frames and, once per turn, its multiplexer (`Mux#_readIncoming`) writes
 * them to the socket one `write()` each: a reply and the ack after it, or 32 acks confirmed together, are
 * that many write(2) calls and, on loopback, that many wake-ups of the broker. Corking the socket around
 * that pass hands all of them to the kernel in one writev(2). Measured with `npm run bench -- --quick
 * --only=1`, 7 runs against 8 (docs/PERFORMANCE.md, F10): agent calls/s at c=32 median 2,640 → 3,424, broker CPU
 * per call 249 → 169 µs.
 *
 * This reaches into amqplib's internals (`connection.muxer`, not part of its API), so it checks their
 * shape first and changes nothing when they differ: frames are then written one by one, as before, and
 * `coalesceFrameWrites` returns false (test/core/amqp-write-coalescing.test.ts fails then, so an amqplib
 * upgrade that moves them is noticed).
 */
import type { ChannelModel } from 'amqplib';

interface Corkable {
  cork(): void;
  uncork(): void;
  destroy(error?: Error): void;
}

interface MuxLike {
  out: Corkable;
  _readIncoming(): void;
}

function muxOf(model: ChannelModel): MuxLike | undefined {
  const muxer = (model as unknown as { connection?: { muxer?: Partial<MuxLike> } }).connection?.muxer;
  if (!muxer || typeof muxer._readIncoming !== 'function') return undefined;
  const out = muxer.out;
  if (!out || typeof out.cork !== 'function' || typeof out.uncork !== 'function' || typeof out.destroy !== 'function') return undefined;
  return muxer as MuxLike;
}

/**
 * Makes the connection's frames of one event-loop turn go out in one write; says whether it could.
 * `beforeWrite` runs at the start of every write pass, before any frame of it reaches the socket (the agent
 * writes its pending outcome lines there). If it throws, the pass writes nothing and the socket is destroyed
 * with that error: the connection drops (and recovers) rather than send what should have been preceded.
 */
export function coalesceFrameWrites(model: ChannelModel, beforeWrite?: () => void): boolean {
  const muxer = muxOf(model);
  if (!muxer) return false;
  // Called once per connection (BrokerConnection's setup runs once for each new one).
  const writePass = muxer._readIncoming.bind(muxer);
  muxer._readIncoming = () => {
    if (beforeWrite) {
      try {
        beforeWrite();
      } catch (error) {
        muxer.out.destroy(error as Error);
        return;
      }
    }
    muxer.out.cork();
    try {
      writePass();
    } finally {
      // Flushes everything written during the pass as one writev; a full socket buffer still makes the
      // pass stop and wait for 'drain', exactly as without the cork.
      muxer.out.uncork();
    }
  };
  return true;
}
