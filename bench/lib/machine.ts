/** The machine a run measured, for the table's header: figures only compare within one machine and run. */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, release, totalmem } from 'node:os';
import amqplib from 'amqplib';
import { repoRoot } from './processes.ts';

function firstLine(argv: string[]): string {
  const result = spawnSync(argv[0] as string, argv.slice(1), { encoding: 'utf8', timeout: 5_000 });
  return result.status === 0 ? (result.stdout.split('\n')[0] ?? '').trim() : 'not available';
}

/** Share of all cores busy over `ms`, from /proc/stat: what else runs on the machine before we start. */
export async function busyCpuShare(ms = 1_000): Promise<number> {
  const read = () => {
    const fields = (readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '').trim().split(/\s+/).slice(1).map(Number);
    const idle = (fields[3] ?? 0) + (fields[4] ?? 0);
    return { idle, total: fields.reduce((a, b) => a + b, 0) };
  };
  const before = read();
  await new Promise((resolve) => setTimeout(resolve, ms));
  const after = read();
  const total = after.total - before.total;
  return total === 0 ? 0 : 1 - (after.idle - before.idle) / total;
}

async function brokerVersion(url: string): Promise<string> {
  try {
    const connection = await amqplib.connect(url);
    const properties = (connection.connection as unknown as { serverProperties?: Record<string, unknown> }).serverProperties ?? {};
    await connection.close();
    return `${String(properties.product ?? 'AMQP broker')} ${String(properties.version ?? '?')}`;
  } catch (error) {
    return `unreachable (${(error as Error).message})`;
  }
}

function packageVersion(name: string): string {
  try {
    return (JSON.parse(readFileSync(`${repoRoot}/node_modules/${name}/package.json`, 'utf8')) as { version: string }).version;
  } catch {
    return 'not installed';
  }
}

export async function describeMachine(brokerUrl: string, sampleMs = 1_000): Promise<Record<string, string | number>> {
  const osRelease = existsSync('/etc/os-release') ? (/^PRETTY_NAME="?([^"\n]*)"?$/m.exec(readFileSync('/etc/os-release', 'utf8'))?.[1] ?? 'unknown') : 'unknown';
  const commit = firstLine(['git', '-C', repoRoot, 'rev-parse', '--short', 'HEAD']);
  // Without git (or outside a checkout) there is no output at all: not dirty, and the commit says so above.
  const dirty = (spawnSync('git', ['-C', repoRoot, 'status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' }).stdout ?? '').trim() !== '';
  return {
    cpu: `${cpus()[0]?.model ?? 'unknown'} × ${availableParallelism()}`,
    memory: `${(totalmem() / 1024 ** 3).toFixed(1)} GiB`,
    os: `${osRelease}, kernel ${release()}`,
    kvm: existsSync('/dev/kvm') ? '/dev/kvm present (the benchmarks run QEMU under TCG, as the tests do)' : 'none (QEMU runs under TCG)',
    node: process.version,
    broker: await brokerVersion(brokerUrl),
    qemu: firstLine(['qemu-system-x86_64', '--version']),
    'amqplib / tinypool / moleculer': `${packageVersion('amqplib')} / ${packageVersion('tinypool')} / ${packageVersion('moleculer')}`,
    cloudlet: `${commit}${dirty ? ' + uncommitted changes' : ''}`,
    'load average at start (1/5/15 min)': loadavg()
      .map((v) => v.toFixed(2))
      .join(' / '),
    [`CPU busy before start (${sampleMs} ms sample, all cores)`]: `${((await busyCpuShare(sampleMs)) * 100).toFixed(0)}%`,
  };
}
