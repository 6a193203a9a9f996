import assert from 'node:assert/strict';
import test from 'node:test';
import { readOnce, type DiscoveredAddress, type IpDiscoveryStrategy, type VmNetworkIdentity } from '../../../core/plugin-api.ts';
import { ANSWER_MARGIN_MS, findAddresses } from '../../../plugins/qemu-backend/discovery.ts';
import { qemuOptionsSchema } from '../../../plugins/qemu-backend/options.ts';
import type { VmRecord } from '../../../plugins/qemu-backend/state.ts';

// Unit tests with stand-in strategies, in addition to the real-VM tests in test/e2e/ip-discovery-*.test.ts.
const record: VmRecord = {
  v: 1,
  id: 'h1.abcdefgh',
  host: 'h1',
  image: 'x',
  imageKind: 'kernel',
  memoryMiB: 64,
  vcpus: 1,
  mac: '02:aa:bb:cc:dd:ee',
  network: { mode: 'bridge', bridge: 'br0', tap: 'cltabcdefgh' },
  autostart: false,
  desired: 'running',
  createdAt: '',
  updatedAt: '',
};
const log = { trace() {}, debug() {}, info() {}, warn() {}, error() {} };
const ctx = { signal: new AbortController().signal, log, progress: () => undefined };
const address = (a: string, source: string, scope: DiscoveredAddress['scope'] = 'global'): DiscoveredAddress => ({
  address: a,
  family: a.includes(':') ? 'ipv6' : 'ipv4',
  scope,
  source,
  ageMs: null,
});
const fixed = (found: DiscoveredAddress[], seen?: VmNetworkIdentity[]): IpDiscoveryStrategy => ({
  async discover(vm) {
    seen?.push(vm);
    return found;
  },
});
const strategiesOf = (...list: [string, IpDiscoveryStrategy][]) => list.map(([plugin, implementation]) => ({ plugin, options: {}, implementation }));
const defaultOptions = qemuOptionsSchema.parse({ imagesDir: '/i' });
/** findAddresses for the test record with the default options ("first" mode). */
const find = (strategies: ReturnType<typeof strategiesOf>, query: Parameters<typeof findAddresses>[3], context: Parameters<typeof findAddresses>[4] = ctx) =>
  findAddresses(defaultOptions, strategies, record, query, context);

test('discovery — first mode takes the first strategy that knows a global address; merge mode unites them', async () => {
  const seen: VmNetworkIdentity[] = [];
  const strategies = strategiesOf(
    ['empty', fixed([], seen)],
    ['linklocal-only', fixed([address('fe80::1', 'linklocal-only', 'link-local')])],
    ['a', fixed([address('10.0.0.5', 'a')])],
    ['b', fixed([address('10.0.0.5', 'b'), address('2001:db8::5', 'b')])],
  );
  const first = await find(strategies, { wait: false, timeoutMs: 0, includeLinkLocal: false });
  assert.deepEqual(first.addresses.map((a) => [a.address, a.source]), [['10.0.0.5', 'a']]);
  assert.deepEqual(first.strategies, ['empty', 'linklocal-only', 'a', 'b']);
  assert.deepEqual(seen[0], { vm: 'h1.abcdefgh', mac: '02:aa:bb:cc:dd:ee', bridge: 'br0', guestAgentSocket: '/var/lib/cloudlet/qemu/h1.abcdefgh/qga.sock' });

  const merged = await findAddresses(
    qemuOptionsSchema.parse({ imagesDir: '/i', ipDiscovery: { mode: 'merge' } }),
    strategies,
    record,
    { wait: false, timeoutMs: 0, includeLinkLocal: true },
    ctx,
  );
  assert.deepEqual(merged.addresses.map((a) => a.address), ['fe80::1', '10.0.0.5', '2001:db8::5']);
});

test('discovery — a failing strategy is skipped; waiting re-asks after a change notification', async () => {
  let calls = 0;
  let notify!: () => void;
  const late: IpDiscoveryStrategy = {
    async discover() {
      calls++;
      return calls >= 2 ? [address('10.0.0.9', 'late')] : [];
    },
    waitForChange: () => new Promise<void>((resolve) => (notify = resolve)),
  };
  const broken: IpDiscoveryStrategy = {
    async discover() {
      throw new Error('boom');
    },
    // A watcher that stops when told, as a real one does (a bare 10 s timer kept the test process alive).
    waitForChange: ({}, { timeoutMs, signal }) =>
      new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, timeoutMs);
        signal.addEventListener('abort', () => (clearTimeout(timer), resolve()), { once: true });
      }),
  };
  setTimeout(() => notify(), 100);
  const answer = await find(strategiesOf(['broken', broken], ['late', late]), { wait: true, timeoutMs: 30_000, includeLinkLocal: false });
  assert.deepEqual(answer.addresses.map((a) => a.address), ['10.0.0.9']);
  assert.equal(calls, 2, 'asked once, then once more after the change');
});

test('discovery — a strategy that cannot watch is logged and skipped; the wait goes on and stops every watcher when done', async () => {
  // Before: the first rejected waitForChange (e.g. ARP_NO_BRIDGE for a user-mode VM) failed the whole
  // get-vm-ip and left the other strategies' watchers running until their slice ended.
  let calls = 0;
  let notify!: () => void;
  let watcherSignal: AbortSignal | undefined;
  const cannotWatch: IpDiscoveryStrategy = {
    async discover() {
      return [];
    },
    waitForChange: async () => {
      throw Object.assign(new Error('no bridge'), { code: 'ARP_NO_BRIDGE' });
    },
  };
  const late: IpDiscoveryStrategy = {
    async discover() {
      calls++;
      return calls >= 2 ? [address('10.0.0.7', 'late')] : [];
    },
    waitForChange: ({}, { signal }) => {
      watcherSignal = signal;
      return new Promise<void>((resolve) => (notify = resolve));
    },
  };
  const warnings: string[] = [];
  setTimeout(() => notify(), 100);
  const recording = { ...ctx, log: { ...log, warn: (_obj: object | string, msg?: string) => void warnings.push(String(msg)) } };
  const answer = await find(strategiesOf(['cannot-watch', cannotWatch], ['late', late]), { wait: true, timeoutMs: 30_000, includeLinkLocal: false }, recording);
  assert.deepEqual(answer.addresses.map((a) => a.address), ['10.0.0.7']);
  assert.equal(watcherSignal?.aborted, true, 'the other watcher was stopped');
  assert.ok(warnings.some((w) => /cannot watch for changes/.test(w)), JSON.stringify(warnings));
});

test('discovery — a slow ask is cut at the wait\'s timeout: a strategy that honours its signal, and one that ignores it', { timeout: 60_000 }, async () => {
  // Before: the wait checked its deadline only between asks, so one ask of a guest agent that never answers
  // (3 s each by default) ran past the caller's timeout, and a strategy that never settled hung get-vm-ip.
  const signals: AbortSignal[] = [];
  const honours: IpDiscoveryStrategy = {
    discover: (_vm, { signal }) =>
      new Promise<DiscoveredAddress[]>((resolve) => {
        signals.push(signal);
        const timer = setTimeout(() => resolve([]), 60_000);
        signal.addEventListener('abort', () => (clearTimeout(timer), resolve([])), { once: true });
      }),
  };
  const ignores: IpDiscoveryStrategy = { discover: () => new Promise<DiscoveredAddress[]>(() => undefined) };
  for (const [name, strategy] of [['honours', honours], ['ignores', ignores]] as const) {
    const started = Date.now();
    const answer = await find(strategiesOf([name, strategy]), { wait: true, timeoutMs: 300, includeLinkLocal: false });
    assert.deepEqual(answer.addresses, [], name);
    // A did-not-hang bound, not a timing target: the strategy would take a minute (or forever).
    assert.ok(Date.now() - started < 10_000, `${name}: answered after ${Date.now() - started} ms for a 300 ms wait`);
  }
  assert.ok(signals.length > 0 && signals.every((s) => s.aborted), 'the strategy was told to stop');
});

test('discovery — without a wait, the handler\'s own signal still ends an ask', { timeout: 30_000 }, async () => {
  const cancel = new AbortController();
  const ignores: IpDiscoveryStrategy = { discover: () => new Promise<DiscoveredAddress[]>(() => undefined) };
  setTimeout(() => cancel.abort(), 50);
  const answer = await find(strategiesOf(['ignores', ignores]), { wait: false, timeoutMs: 0, includeLinkLocal: false }, { ...ctx, signal: cancel.signal });
  assert.deepEqual(answer.addresses, []);
});

test('discovery — wait with timeoutMs 0 is one whole ask, as without wait', { timeout: 30_000 }, async () => {
  // The deadline cut must not turn "no time to wait" into "no time to ask": a strategy that takes a few ms
  // (reading a lease file) still answers.
  const slowish: IpDiscoveryStrategy = { discover: () => new Promise((resolve) => setTimeout(() => resolve([address('10.0.0.3', 'slowish')]), 50)) };
  const answer = await find(strategiesOf(['slowish', slowish]), { wait: true, timeoutMs: 0, includeLinkLocal: false });
  assert.deepEqual(answer.addresses.map((a) => a.address), ['10.0.0.3']);
});

test('discovery — a list passes its one memo to every strategy it asks; a single ask passes none', async () => {
  const memos: unknown[] = [];
  const strategies = strategiesOf([
    'watcher',
    {
      async discover(_vm, context) {
        memos.push(context.shared);
        return [];
      },
    },
  ]);
  const shared = new Map<string, Promise<unknown>>();
  await find(strategies, { wait: false, timeoutMs: 0, includeLinkLocal: false, passive: true, shared });
  await find(strategies, { wait: false, timeoutMs: 0, includeLinkLocal: false, passive: true, shared });
  await find(strategies, { wait: false, timeoutMs: 0, includeLinkLocal: false });
  assert.deepEqual(memos, [shared, shared, undefined]);
  assert.equal(memos[0], shared);
  assert.equal(memos[1], shared);
});

test('discovery — readOnce shares one read per key within a list, and forgets a read that failed', async () => {
  const shared = new Map<string, Promise<unknown>>();
  let reads = 0;
  const failing = () => {
    reads++;
    return Promise.reject(new Error('not readable'));
  };
  await assert.rejects(readOnce({ shared }, 'k', failing));
  await assert.rejects(readOnce({ shared }, 'k', failing));
  assert.equal(reads, 2);
  const five = async () => {
    reads++;
    return 5;
  };
  assert.deepEqual(await Promise.all([readOnce({ shared }, 'j', five), readOnce({ shared }, 'j', five)]), [5, 5]);
  assert.equal(reads, 3);
  assert.equal(await readOnce({}, 'j', five), 5);
  assert.equal(reads, 4);
});

test('discovery — a watcher that fires without a usable change does not make the wait spin', { timeout: 30_000 }, async () => {
  // As ip-discovery-arp did for a VM with only link-local neighbour entries: every watch ended at once, the
  // re-ask found nothing the caller reports, and the next watch started straight away — for the whole wait.
  let asks = 0;
  let watches = 0;
  const restless: IpDiscoveryStrategy = {
    async discover() {
      asks++;
      return [address('fe80::1', 'restless', 'link-local')];
    },
    async waitForChange() {
      watches++;
    },
  };
  const answer = await find(strategiesOf(['restless', restless]), { wait: true, timeoutMs: 2_500, includeLinkLocal: false });
  assert.deepEqual(answer.addresses, []);
  // One watch per tick (1 s) at most: 3 in 2.5 s, not thousands.
  assert.ok(watches <= 4 && asks <= 8, `${watches} watches and ${asks} asks in 2.5 s`);
});

test('discovery — a watcher that fires later, for a change elsewhere, is watched again at once (no pause)', { timeout: 30_000 }, async () => {
  // As dnsmasq's lease watch does when another VM takes a lease: the change is real, just not this VM's.
  // The pause that stops a spinning watcher (one tick, 1 s) must not follow it. This VM's address appears
  // with the fourth change; the wait lasts 2.5 s: four changes 200 ms apart fit, with a pause after each
  // fruitless one they do not.
  let changes = 0;
  const elsewhere: IpDiscoveryStrategy = {
    async discover() {
      return changes >= 4 ? [address('10.0.0.7', 'elsewhere')] : [];
    },
    waitForChange: (_vm, { signal }) =>
      new Promise<void>((resolve) => {
        const timer = setTimeout(() => (changes++, resolve()), 200);
        signal.addEventListener('abort', () => (clearTimeout(timer), resolve()), { once: true });
      }),
  };
  const answer = await find(strategiesOf(['elsewhere', elsewhere]), { wait: true, timeoutMs: 2_500, includeLinkLocal: false });
  assert.deepEqual(answer.addresses.map((a) => a.address), ['10.0.0.7'], `${changes} changes seen`);
});

test('discovery — a wait whose VM stops ends at once with IP_NOT_FOUND naming the stopped state, not at its timeout', { timeout: 30_000 }, async () => {
  // Before, get-vm-ip with wait went on asking about a VM that had been stopped meanwhile (it does not wait
  // for stop-vm's lock) until its whole timeoutMs, then said it found no address "within" it.
  let running = true;
  setTimeout(() => (running = false), 300);
  const started = Date.now();
  await assert.rejects(
    find(strategiesOf(['none', fixed([])]), { wait: true, timeoutMs: 60_000, includeLinkLocal: false, stillRunning: async () => running }),
    (error: { code: string; message: string; details: unknown }) => {
      assert.equal(error.code, 'IP_NOT_FOUND');
      assert.deepEqual(error.details, { vm: record.id, state: 'stopped' });
      assert.match(error.message, /h1\.abcdefgh stopped while get-vm-ip waited for its address/);
      return true;
    },
  );
  // A did-not-wait bound against the minute's timeout, not a timing target.
  assert.ok(Date.now() - started < 20_000, `took ${Date.now() - started} ms`);
});

test('discovery — a wait re-asks passively between active asks, so a probing strategy sweeps at most once per interval', { timeout: 30_000 }, async () => {
  // Before, every re-ask of a wait (each tick, each change elsewhere) was active: ip-discovery-arp with
  // probe.enabled swept the bridge subnet again about once a second for the whole wait.
  const asks: { at: number; passive: boolean }[] = [];
  const started = Date.now();
  const recording: IpDiscoveryStrategy = {
    async discover(_vm, context) {
      asks.push({ at: Date.now() - started, passive: context.passive ?? false });
      return [];
    },
  };
  const answer = await find(strategiesOf(['probing', recording]), { wait: true, timeoutMs: 4_000, includeLinkLocal: false, activeEveryMs: 1_500 });
  assert.deepEqual(answer.addresses, []);
  // The property, not a count of ticks: the first ask is active, the asks between active ones are passive,
  // and no two active asks come closer than activeEveryMs (a bound the code keeps, whatever the load).
  const active = asks.filter((a) => !a.passive);
  const seen = JSON.stringify(asks);
  assert.equal(asks[0]?.passive, false, 'the first ask of a wait is active');
  assert.ok(asks.some((a) => a.passive), seen);
  assert.ok(active.length >= 2, `the wait never asked actively again: ${seen}`);
  for (let i = 1; i < active.length; i++) assert.ok(active[i]!.at - active[i - 1]!.at >= 1_500, seen);
});

test('discovery — a passive query stays passive in every ask of its wait', { timeout: 30_000 }, async () => {
  const passive: boolean[] = [];
  const recording: IpDiscoveryStrategy = {
    async discover(_vm, context) {
      passive.push(context.passive ?? false);
      return [];
    },
  };
  const answer = await find(strategiesOf(['probing', recording]), { wait: true, timeoutMs: 1_200, includeLinkLocal: false, passive: true, activeEveryMs: 100 });
  assert.deepEqual(answer.addresses, []);
  assert.ok(passive.length >= 2 && passive.every(Boolean), JSON.stringify(passive));
});

test('discovery — what a strategy returns is checked: a non-list or a malformed address is left out with a warning', async () => {
  // Strategies may be third-party plugins: their answers reach replies and the CLI's terminal output.
  const warnings: { fields: Record<string, unknown>; message: string }[] = [];
  const warnLog = { ...log, warn: (fields: Record<string, unknown>, message: string) => void warnings.push({ fields, message }) };
  const sloppy: IpDiscoveryStrategy = {
    async discover() {
      return [
        address('10.0.0.5', 'sloppy'),
        { ...address('10.0.0.6', 'sloppy'), address: '\u001b[31m10.0.0.6' },
        { ...address('10.0.0.7', 'sloppy'), family: 'ipv6' },
        { ...address('10.0.0.8', 'sloppy'), scope: 'everywhere' },
        null,
      ] as unknown as DiscoveredAddress[];
    },
  };
  const notAList: IpDiscoveryStrategy = {
    async discover() {
      return { address: '10.0.0.9' } as unknown as DiscoveredAddress[];
    },
  };
  const answer = await findAddresses(
    qemuOptionsSchema.parse({ imagesDir: '/i', ipDiscovery: { mode: 'merge' } }),
    strategiesOf(['not-a-list', notAList], ['sloppy', sloppy]),
    record,
    { wait: false, timeoutMs: 0, includeLinkLocal: true },
    { ...ctx, log: warnLog },
  );
  assert.deepEqual(answer.addresses.map((a) => a.address), ['10.0.0.5']);
  assert.deepEqual(
    warnings.map((w) => [w.fields.strategy, w.message]),
    [
      ['not-a-list', 'ip-discovery strategy "not-a-list" answered with an object, not a list of addresses; ignored'],
      ['sloppy', 'ip-discovery strategy "sloppy" answered 4 malformed address(es) (each needs an IP address of its family, a family and a scope); left out'],
    ],
  );
});

test('discovery — a wait ends before the request\'s deadline when that comes first, and says it was cut', { timeout: 30_000 }, async () => {
  // Before, a wait longer than what the request's deadline left (a cold worker, a payload timeoutMs longer
  // than the caller's --timeout) ran into the deadline: the caller got DEADLINE_EXCEEDED or TIMEOUT instead
  // of IP_NOT_FOUND naming the plugins asked.
  const started = Date.now();
  const answerBy = started + 1_500;
  const askedAt: number[] = [];
  const answer = await find(strategiesOf(['none', { discover: async () => (askedAt.push(Date.now()), []) }]), { wait: true, timeoutMs: 60_000, includeLinkLocal: false, answerBy });
  assert.deepEqual(answer.addresses, []);
  assert.equal(answer.cutByDeadline, true);
  // What the wait was allowed, from the code's own arithmetic: up to ANSWER_MARGIN_MS before answerBy.
  assert.ok(answer.waitMs !== undefined && answer.waitMs > 0 && answer.waitMs <= 1_500 - ANSWER_MARGIN_MS, `waitMs ${answer.waitMs}`);
  // And the wait kept to it: every ask began before the wait's end (answerBy − ANSWER_MARGIN_MS), checked
  // against answerBy itself, so only an ask begun a whole margin too late fails this, whatever the load.
  assert.ok(askedAt.length > 1, `asked ${askedAt.length} time(s)`);
  assert.ok(askedAt.every((at) => at < answerBy), `asks at ${askedAt.map((at) => at - answerBy).join(', ')} ms from answerBy`);
  // A did-not-wait bound against the minute's timeoutMs, not a timing target.
  assert.ok(Date.now() - started < 30_000, `took ${Date.now() - started} ms`);

  const uncut = await find(strategiesOf(['none', fixed([])]), { wait: true, timeoutMs: 300, includeLinkLocal: false, answerBy: Date.now() + 60_000 });
  assert.equal(uncut.cutByDeadline, false);
});

test('discovery — a wait with freshSince (the last boot) is not ended by older evidence; newer or age-less evidence ends it', { timeout: 30_000 }, async () => {
  // Before, `vm start --wait-ip` returned at once with the previous boot's lease, before the guest was up.
  const bootedAt = Date.now();
  let asks = 0;
  const stale = { ...address('10.0.0.5', 'leases'), ageMs: 60_000 }; // from before the boot
  const renewing: IpDiscoveryStrategy = {
    async discover() {
      asks++;
      return asks < 3 ? [stale] : [{ ...stale, ageMs: 0 }];
    },
  };
  const waited = await find(strategiesOf(['leases', renewing]), { wait: true, timeoutMs: 20_000, includeLinkLocal: false, freshSince: bootedAt });
  assert.equal(asks, 3, 'the stale lease did not end the wait');
  assert.deepEqual(waited.addresses.map((a) => [a.address, a.ageMs]), [['10.0.0.5', 0]]);

  // Without freshSince (a VM started before there was a boot mark), any evidence counts, as before.
  assert.deepEqual((await find(strategiesOf(['leases', fixed([stale])]), { wait: true, timeoutMs: 20_000, includeLinkLocal: false })).addresses, [stale]);
  // No age (a live answer, e.g. the guest agent's) counts whatever freshSince says.
  const live = address('10.0.0.6', 'agent');
  assert.deepEqual((await find(strategiesOf(['agent', fixed([live])]), { wait: true, timeoutMs: 20_000, includeLinkLocal: false, freshSince: Date.now() })).addresses, [live]);
  // In first mode, a stale answer does not stop the chain: the next strategy's fresh one is taken.
  const chained = await find(strategiesOf(['leases', fixed([stale])], ['agent', fixed([live])]), { wait: true, timeoutMs: 20_000, includeLinkLocal: false, freshSince: bootedAt });
  assert.deepEqual(chained.addresses, [live]);
});

test('discovery — a wait that finds only evidence from before the boot answers with it in the end (staleOnly), not with nothing', { timeout: 30_000 }, async () => {
  // A wrong lease time makes every lease look old: the wait must not then fail for an address it knows.
  const stale = { ...address('10.0.0.5', 'leases'), ageMs: 3_600_000 };
  const waited = await find(strategiesOf(['leases', fixed([stale])]), { wait: true, timeoutMs: 600, includeLinkLocal: false, freshSince: Date.now() });
  assert.deepEqual([waited.addresses, waited.staleOnly], [[stale], true]);
  const once = await find(strategiesOf(['leases', fixed([stale])]), { wait: true, timeoutMs: 0, includeLinkLocal: false, freshSince: Date.now() });
  assert.deepEqual([once.addresses, once.staleOnly], [[stale], true]);
  const fresh = await find(strategiesOf(['leases', fixed([{ ...stale, ageMs: 0 }])]), { wait: true, timeoutMs: 600, includeLinkLocal: false, freshSince: Date.now() });
  assert.equal(fresh.staleOnly, undefined);
});
