/** What qemu-backend needs on a host: QEMU and qemu-img, KVM (or TCG), the bridge and /dev/net/tun, its folders. */
import { constants } from 'node:fs';
import { open, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { listImages } from '../../../plugins/qemu-backend/images.ts';
import type { QemuOptions } from '../../../plugins/qemu-backend/options.ts';
import { writableFolderCheck } from './core-checks.ts';
import { fail, findProgram, firstLineOf, ok, warn, type CheckResult } from './check.ts';

const PLUGIN = 'qemu-backend';

export async function qemuChecks(options: QemuOptions): Promise<CheckResult[]> {
  return [
    await programCheck('qemu', options.qemuBinary, ['--version'], 'qemuBinary', 'apt-get install qemu-system-x86'),
    await programCheck('qemu-img', options.qemuImgBinary, ['--version'], 'qemuImgBinary', 'apt-get install qemu-utils'),
    await accelCheck(options.accel),
    ...(await networkChecks(options)),
    await imagesCheck(options.imagesDir),
    await writableFolderCheck('vm-state-dir', PLUGIN, options.stateDir, 'the VM state folder (stateDir)'),
  ];
}

/** A program the plugin runs: found, and answering `--version`. */
export async function programCheck(id: string, binary: string, versionArgs: string[], option: string, install: string, plugin = PLUGIN): Promise<CheckResult> {
  const path = await findProgram(binary);
  if (!path) return fail(id, plugin, `${binary} not found${binary.includes('/') ? '' : ' in PATH'} (${plugin} ${option})`, `${install}, or set ${option} to its full path`);
  const version = await firstLineOf(path, versionArgs);
  if (!version.ok) return fail(id, plugin, `${path} does not run: ${version.reason}`, `reinstall it (${install}) or set ${option} to a working binary`);
  return ok(id, plugin, `${path}: ${version.line}`);
}

/** Opens a device read-write and reports why it cannot: the same test QEMU's open is. */
export async function deviceProblem(path: string): Promise<string | undefined> {
  try {
    const handle = await open(path, constants.O_RDWR);
    await handle.close();
    return undefined;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code ?? (error as Error).message;
  }
}

async function accelCheck(accel: QemuOptions['accel']): Promise<CheckResult> {
  if (accel === 'tcg') return ok('accel', PLUGIN, 'TCG (software emulation) as configured (accel: tcg)');
  const problem = await deviceProblem('/dev/kvm');
  // Opening /dev/kvm is all the check does: some nested VMs let it open and then fail QEMU's first KVM
  // call (seen: an assertion in kvm_buf_set_msrs), so the line says what to do then.
  if (!problem) return ok('accel', PLUGIN, '/dev/kvm opens: VMs run with KVM (should QEMU then fail with a KVM error, as on some nested VMs, set accel: tcg)');
  const why = problem === 'ENOENT' ? '/dev/kvm does not exist' : problem === 'EACCES' || problem === 'EPERM' ? '/dev/kvm is not accessible to this user' : `/dev/kvm cannot be opened (${problem})`;
  const fix =
    problem === 'ENOENT'
      ? 'enable virtualization (VT-x/AMD-V) in the firmware and load the module: modprobe kvm_intel (or kvm_amd); in a VM, enable nested virtualization'
      : 'add the agent user to the kvm group (usermod -aG kvm USER) or run the agent as root; under systemd keep DeviceAllow=/dev/kvm rw';
  return accel === 'kvm'
    ? fail('accel', PLUGIN, `${why}, and accel is "kvm"`, `${fix}; or set accel: auto to fall back to TCG`)
    : warn('accel', PLUGIN, `${why}: VMs run under TCG (software emulation, much slower)`, fix);
}

async function networkChecks(options: QemuOptions): Promise<CheckResult[]> {
  if (options.network.mode !== 'bridge') {
    return [ok('network', PLUGIN, `network mode "${options.network.mode}"${options.network.mode === 'user' ? ' (QEMU user networking: no bridge or tap needed; VMs take no inbound connections)' : ''}`)];
  }
  const tun = await deviceProblem('/dev/net/tun');
  return [
    await bridgeCheck('bridge', PLUGIN, options.network.bridge, 'network.bridge'),
    tun
      ? fail('tun', PLUGIN, `/dev/net/tun cannot be opened (${tun}): taps cannot be created`, 'modprobe tun; the agent needs CAP_NET_ADMIN (root, or AmbientCapabilities=CAP_NET_ADMIN) and, under systemd, DeviceAllow=/dev/net/tun rw')
      : ok('tun', PLUGIN, '/dev/net/tun is usable'),
    await programCheck('ip', options.ipBinary, ['-V'], 'ipBinary', 'apt-get install iproute2'),
  ];
}

/** The interface exists and is a bridge (the kernel lists bridges with a `bridge/` folder in sysfs). */
export async function bridgeCheck(id: string, plugin: string, bridge: string, option: string): Promise<CheckResult> {
  const exists = await stat(join('/sys/class/net', bridge)).then(
    () => true,
    () => false,
  );
  const fix = `create it: ip link add ${bridge} type bridge && ip link set ${bridge} up (make it permanent in /etc/network/interfaces or systemd-networkd), or fix ${plugin} ${option}`;
  if (!exists) return fail(id, plugin, `bridge "${bridge}" does not exist (${plugin} ${option})`, fix);
  const isBridge = await stat(join('/sys/class/net', bridge, 'bridge')).then(
    () => true,
    () => false,
  );
  if (!isBridge) return fail(id, plugin, `"${bridge}" exists but is not a bridge (${plugin} ${option})`, fix);
  return ok(id, plugin, `bridge "${bridge}" exists`);
}

async function imagesCheck(dir: string): Promise<CheckResult> {
  const entries = await readdir(dir, { withFileTypes: true }).catch((error: NodeJS.ErrnoException) => error);
  if (entries instanceof Error) {
    const fix = `mkdir -p ${dir} and put base images there: NAME.qcow2, NAME.raw or NAME.img, or a NAME/ folder with vmlinuz and initrd.img`;
    return entries.code === 'ENOENT'
      ? fail('images-dir', PLUGIN, `the images folder ${dir} does not exist (qemu-backend imagesDir)`, fix)
      : fail('images-dir', PLUGIN, `the images folder ${dir} cannot be read (${entries.code ?? entries.message})`, `give the agent's user read access to ${dir}`);
  }
  // The same rule as "cloudlet image list" (a lost+found folder or a stray file is no image).
  const images = (await listImages(dir)).length;
  return images > 0
    ? ok('images-dir', PLUGIN, `the images folder ${dir} has ${images} image(s) ("cloudlet image list" names them)`)
    : warn('images-dir', PLUGIN, `the images folder ${dir} is empty: no VM can be created`, `copy a base image there, e.g. ${join(dir, 'debian-12.qcow2')}`);
}
