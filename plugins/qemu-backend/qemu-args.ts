/**
 * The QEMU command line for a VM, as an argv array. Nothing a user typed reaches it: ids, paths and MACs
 * are ours and validated; the VM's display name stays in its record. Paths come from options that refuse
 * commas, which QEMU would read as option separators.
 */
import { constants } from 'node:fs';
import { access } from 'node:fs/promises';
import type { QemuOptions } from './options.ts';
import type { BaseImage } from './images.ts';
import type { VmPaths, VmRecord } from './state.ts';
import { qemuProcessName } from './processes.ts';

export async function chooseAccel(setting: QemuOptions['accel']): Promise<'kvm' | 'tcg'> {
  if (setting !== 'auto') return setting;
  const usable = await access('/dev/kvm', constants.R_OK | constants.W_OK).then(
    () => true,
    () => false,
  );
  return usable ? 'kvm' : 'tcg';
}

export function qemuArgv(options: QemuOptions, record: VmRecord, image: BaseImage, paths: VmPaths, accel: 'kvm' | 'tcg'): string[] {
  const argv = [
    options.qemuBinary,
    '-name', qemuProcessName(record.id),
    '-machine', options.machine,
    '-accel', accel,
    '-cpu', accel === 'kvm' ? 'host' : 'max',
    '-m', String(record.memoryMiB),
    '-smp', String(record.vcpus),
    '-display', 'none',
    '-monitor', 'none',
    '-serial', `file:${paths.serialLog}`,
    '-qmp', `unix:${paths.qmp},server=on,wait=off`,
    '-pidfile', paths.pidfile,
    // Forks once QEMU is set up: a non-zero exit means it could not start, and the VM outlives the agent.
    '-daemonize',
  ];
  if (image.kind === 'disk') {
    argv.push('-drive', `file=${paths.disk},format=qcow2,if=virtio`);
  } else {
    argv.push('-kernel', image.kernel, '-initrd', image.initrd, '-append', image.cmdline ?? options.kernelAppend);
  }
  const network = record.network;
  if (network.mode === 'bridge') {
    argv.push('-netdev', `tap,id=net0,ifname=${network.tap},script=no,downscript=no`, '-device', `virtio-net-pci,netdev=net0,mac=${record.mac}`);
  } else if (network.mode === 'user') {
    argv.push('-netdev', 'user,id=net0', '-device', `virtio-net-pci,netdev=net0,mac=${record.mac}`);
  } else {
    argv.push('-nic', 'none');
  }
  if (options.guestAgent) {
    argv.push(
      '-device', 'virtio-serial-pci',
      '-chardev', `socket,id=qga0,path=${paths.qga},server=on,wait=off`,
      '-device', 'virtserialport,chardev=qga0,name=org.qemu.guest_agent.0',
    );
  }
  return argv;
}
