/**
 * `cloudlet doctor`: checks this host for everything its configured plugins need and prints each check with
 * the fix for what fails. Exit 0 when nothing failed (warnings allowed), 1 when a check failed, 3 when the
 * config itself is invalid.
 */
import { checkHostConfig } from '../../config/host-config.ts';
import { formatProblem } from '../../config/problems.ts';
import type { QemuOptions } from '../../../plugins/qemu-backend/options.ts';
import { refuseConfigPositionals } from '../args.ts';
import type { Command } from '../command.ts';
import { findRawConfig } from '../config-source.ts';
import { EXIT } from '../exit-codes.ts';
import { fail, freeBytes, gib, ok, warn, type CheckResult } from '../doctor/check.ts';
import { nodeCheck, stateDirOf, transportCheck, writableFolderCheck } from '../doctor/core-checks.ts';
import { arpChecks, dnsmasqChecks, guestAgentChecks, type ArpOptions, type DnsmasqOptions } from '../doctor/discovery-checks.ts';
import { metricsCheck, type MetricsOptions } from '../doctor/metrics-check.ts';
import { qemuChecks } from '../doctor/qemu-checks.ts';

/** Below this much free space where VMs and state live, doctor warns; below FAIL_FREE it fails. */
const WARN_FREE = 5 * 1024 ** 3;
const FAIL_FREE = 1024 ** 3;

export const doctorCommand: Command = {
  words: ['doctor'],
  usage: `cloudlet doctor [--config FILE] [--json]
  Checks this host for what the configured plugins need — QEMU and its version, /dev/kvm or TCG, the bridge,
  /dev/net/tun, the image and state folders and free disk there, dnsmasq and its lease file, the broker with
  the configured credentials, the metrics endpoint — and prints each check with the fix for what fails.
  Exit 0 when nothing failed (warnings allowed), 1 when a check failed, 3 when the config is invalid.`,
  flags: [],
  async run({ positionals, values, output }) {
    refuseConfigPositionals('doctor', positionals);
    const raw = await findRawConfig(values.config);
    const checked = await checkHostConfig(raw);
    if (!checked.ok) {
      const check = fail('config', null, `${raw.file}: ${checked.problems.length} problem(s)\n${checked.problems.map(formatProblem).join('\n')}`, `fix the config; "cloudlet config check ${raw.file}" lists the same problems`);
      report(output, raw.file, undefined, [check]);
      return EXIT.CONFIG_INVALID;
    }
    const { config } = checked;
    const options = new Map(config.plugins.map((p) => [p.plugin.name, p.options]));
    const qemu = options.get('qemu-backend') as QemuOptions | undefined;
    const checks: CheckResult[] = [
      ok('config', null, `${raw.file}: valid — ${config.plugins.length} plugin(s), ${config.messages.size} message type(s), transport ${config.core.transport.kind}`),
      nodeCheck(),
      await writableFolderCheck('state-dir', null, stateDirOf(config.core), 'the state folder (state.dir)'),
      ...(await transportCheck(config.core)),
    ];
    if (qemu) checks.push(...(await qemuChecks(qemu)));
    if (options.has('ip-discovery-dnsmasq')) checks.push(...(await dnsmasqChecks(options.get('ip-discovery-dnsmasq') as DnsmasqOptions)));
    if (options.has('ip-discovery-arp')) checks.push(...(await arpChecks(options.get('ip-discovery-arp') as ArpOptions, qemu)));
    if (options.has('ip-discovery-guest-agent')) checks.push(...guestAgentChecks(qemu));
    if (options.has('metrics')) checks.push(await metricsCheck(options.get('metrics') as MetricsOptions));
    checks.push(...(await diskChecks([stateDirOf(config.core), ...(qemu ? [qemu.stateDir] : [])])));
    report(output, raw.file, config.hostId, checks);
    return checks.some((c) => c.status === 'fail') ? EXIT.ERROR_REPLY : EXIT.OK;
  },
};

/** Free space once per filesystem that holds state or VM disks. */
async function diskChecks(dirs: string[]): Promise<CheckResult[]> {
  const seen = new Set<number>();
  const checks: CheckResult[] = [];
  for (const dir of dirs) {
    const space = await freeBytes(dir);
    if (!space || seen.has(space.device)) continue;
    seen.add(space.device);
    const id = `disk:${dir}`;
    const summary = `${gib(space.free)} free on the filesystem of ${dir}`;
    const fix = `free space there or move the folder (VM overlay disks grow as guests write)`;
    checks.push(space.free < FAIL_FREE ? fail(id, null, summary, fix) : space.free < WARN_FREE ? warn(id, null, summary, fix) : ok(id, null, summary));
  }
  return checks;
}

function report(output: Parameters<Command['run']>[0]['output'], file: string, host: string | undefined, checks: CheckResult[]): void {
  const failed = checks.filter((c) => c.status === 'fail').length;
  const warned = checks.filter((c) => c.status === 'warn').length;
  const width = Math.max(...checks.map((c) => c.id.length));
  const label = { ok: 'ok  ', warn: 'warn', fail: 'FAIL' } as const;
  const lines = checks.flatMap((c) => {
    const [first = '', ...more] = c.summary.split('\n');
    const indent = ' '.repeat(width + 8);
    return [`${label[c.status]}  ${c.id.padEnd(width)}  ${first}`, ...more.map((line) => `${indent}${line}`), ...(c.fix && c.status !== 'ok' ? [`${indent}fix: ${c.fix}`] : [])];
  });
  const verdict = failed > 0 ? `${failed} check(s) failed, ${warned} warning(s)` : warned > 0 ? `no check failed, ${warned} warning(s)` : 'every check passed';
  output.result(`cloudlet doctor: ${host ? `host "${host}", ` : ''}config ${file}\n${lines.join('\n')}\n${verdict}`, { ok: failed === 0, host: host ?? null, config: file, checks });
}
