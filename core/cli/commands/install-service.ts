/**
 * `cloudlet install-service`: writes the systemd unit (config/cloudlet.service) with this installation's
 * absolute paths — node and the CLI, so nvm or /usr/local installs work without PATH — and ReadWritePaths=
 * for the folders the config names outside /var/lib/cloudlet. It does not run systemctl: it prints what to run.
 */
import { access, readFile, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import process from 'node:process';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { checkHostConfig } from '../../config/host-config.ts';
import { readConfigFile } from '../../config/load.ts';
import { configInvalidError, type ConfigProblem } from '../../config/problems.ts';
import { cloudletError } from '../../errors.ts';
import type { Command } from '../command.ts';
import { EXIT } from '../exit-codes.ts';
import { makeFolder, outputSource } from '../folders.ts';
import { packageFile } from '../../runtime/package-root.ts';
import { hiddenFromService, underRun, writablePaths, type ServicePaths } from '../service/paths.ts';

const UNIT_TEMPLATE = packageFile('config/cloudlet.service');
// The launcher, from the sources or compiled alike (it picks dist/ when that is current).
const CLI_BIN = fileURLToPath(packageFile('core/cli/bin.js'));
const DOCS = fileURLToPath(packageFile('docs/CLI.md'));
const PATHS_MARKER = /^# cloudlet-paths:.*$/m;

export const installServiceCommand: Command = {
  words: ['install-service'],
  usage: `cloudlet install-service [--config FILE] [--output FILE] [--print] [--force] [--json]
  Writes a systemd unit for the agent (default /etc/systemd/system/cloudlet.service; --print writes it to
  stdout): restart on failure, hardening that keeps /dev/kvm, /dev/net/tun and CAP_NET_ADMIN, logs to journald.
  The config (default /etc/cloudlet/cloudlet.yaml) is checked when it exists, and folders it names outside
  /var/lib/cloudlet become ReadWritePaths. Then: systemctl daemon-reload && systemctl enable --now cloudlet`,
  flags: ['output', 'print', 'force'],
  async run({ positionals, values, output }) {
    if (positionals.length > 0) throw cloudletError('USAGE', `install-service takes no positional arguments, found "${positionals.join(' ')}"`);
    const configFile = resolve(values.config ?? '/etc/cloudlet/cloudlet.yaml');
    // The unit runs as root: a newline in a value would add a line of the unit (ExecStartPre=…).
    if (values.config !== undefined && CONTROL_CHARACTER.test(configFile)) {
      throw cloudletError('USAGE', `--config ${JSON.stringify(configFile)} contains a control character (newline, carriage return, NUL…), which a systemd unit cannot hold: give a path without them`);
    }
    const notes: string[] = [];
    let paths: ServicePaths = { readWrite: [], hidden: [], relative: [], settings: new Map() };
    const exists = await access(configFile).then(
      () => true,
      () => false,
    );
    if (exists) {
      const checked = await checkHostConfig(await readConfigFile(configFile));
      if (!checked.ok) throw configInvalidError(checked.problems);
      paths = writablePaths(checked.config);
      refuseControlCharacters(configFile, paths);
    } else {
      notes.push(`note: ${configFile} does not exist yet ("cloudlet init --output ${shellQuote(configFile)}" writes one); the unit uses the default folders`);
    }
    for (const path of paths.hidden) notes.push(`warning: ${path} is under /home, /root or /tmp, which the unit hides (ProtectHome, PrivateTmp): move it`);
    for (const path of paths.relative) notes.push(`warning: "${path}" is a relative path: the service runs in /, so it means ${resolve('/', path)}; give an absolute path in the config`);
    // ProtectSystem=strict: the agent cannot make a folder outside its ReadWritePaths, and systemd skips a
    // "-" path that does not exist yet. Say so, rather than let the service fail with EROFS.
    for (const path of paths.readWrite) {
      if (underRun(path)) {
        // Made by hand or not, it is gone after the next boot; only /run/cloudlet is made again at each start.
        notes.push(`warning: ${path} is under /run, which is emptied at every boot, and the unit keeps the agent from creating it: keep the socket in /run/cloudlet (the unit's RuntimeDirectory=) and state outside /run`);
      } else if (!(await access(path).then(() => true, () => false))) {
        notes.push(`warning: ${path} does not exist; create it before starting the service (install -d -m 0750 ${shellQuote(path)}): the unit keeps the agent from creating it`);
      }
    }
    // What the unit runs must be visible to it too: a Node from nvm, a checkout or a config in a home
    // folder would make the service fail at start (203/EXEC, or no config).
    for (const [what, path] of [
      ['node', process.execPath],
      ['cloudlet', CLI_BIN],
      ['the config', configFile],
    ] as const) {
      if (hiddenFromService(path)) notes.push(`warning: ${what} (${path}) is under /home, /root or /tmp, which the unit hides: the service would not start; install it system-wide (or copy the config to /etc/cloudlet)`);
    }
    const unit = renderUnit(await readFile(UNIT_TEMPLATE, 'utf8'), configFile, paths.readWrite);
    if (values.print) {
      process.stdout.write(unit);
      for (const note of notes) process.stderr.write(`${note}\n`);
      return EXIT.OK;
    }
    const file = resolve(values.output ?? '/etc/systemd/system/cloudlet.service');
    await makeFolder(dirname(file), outputSource('--output', values.output, file));
    await writeFile(file, unit, { mode: 0o644, flag: values.force ? 'w' : 'wx' }).catch((error: NodeJS.ErrnoException) => {
      throw cloudletError('USAGE', error.code === 'EEXIST' ? `${file} exists; use --force to replace it` : `cannot write ${file}: ${error.message}`);
    });
    for (const note of notes) output.note(note);
    const execStart = execStartLine(configFile);
    output.result(`wrote ${file}\n${execStart}\nnext: systemctl daemon-reload && systemctl enable --now cloudlet; journalctl -u cloudlet -f`, {
      ok: true,
      file,
      config: configFile,
      execStart: execStart.slice('ExecStart='.length),
      readWritePaths: paths.readWrite,
      notes,
    });
    return EXIT.OK;
  },
};

/** C0 controls (newline, CR, tab, NUL…), DEL and C1 controls: none of them belongs in one line of a unit. */
const CONTROL_CHARACTER = /[\u0000-\u001f\u007f-\u009f]/;

/** Each folder that becomes a ReadWritePaths= line, refused as CONFIG_INVALID naming the setting it came from. */
function refuseControlCharacters(configFile: string, paths: ServicePaths): void {
  const problems: ConfigProblem[] = paths.readWrite
    .filter((path) => CONTROL_CHARACTER.test(path))
    .map((path) => ({
      code: 'CONFIG_INVALID',
      file: configFile,
      path: paths.settings.get(path) ?? '(a folder the agent writes to)',
      message: 'contains a control character (newline, carriage return, NUL…), which would add lines to the systemd unit',
      found: JSON.stringify(path),
      allowed: 'a path without control characters',
    }));
  if (problems.length === 0) return;
  // The agent itself accepts such a path, so "cloudlet config check" would not help: say what to do here.
  const { message } = configInvalidError(problems);
  throw cloudletError('CONFIG_INVALID', message, { problems, hint: 'rename the folder and the setting without control characters, then run install-service again' });
}

/** For a command line the operator pastes into a shell. */
function shellQuote(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

/** systemd splits on spaces and takes ' and " as quotes (quote what has any), and expands `%` specifiers. */
function quote(arg: string): string {
  // Refused with a clear error before (refuseControlCharacters, --config); this keeps any other value
  // (node's or cloudlet's own path) from adding a line to a unit that runs as root.
  if (CONTROL_CHARACTER.test(arg)) throw cloudletError('INTERNAL', `${JSON.stringify(arg)} contains a control character, which a systemd unit cannot hold: install it under a path without them`);
  const literal = arg.replace(/%/g, '%%');
  return /[\s"'\\]/.test(literal) ? `"${literal.replace(/["\\]/g, '\\$&')}"` : literal;
}

function execStartLine(configFile: string): string {
  // ExecStart also expands $VARIABLES: `$$` is a literal dollar.
  return `ExecStart=${[process.execPath, CLI_BIN, 'agent', '--config', configFile].map((arg) => quote(arg.replace(/\$/g, '$$$$'))).join(' ')}`;
}

/** A file: URL percent-encodes control characters, but checked all the same: it is one line of the unit. */
function documentationUrl(): string {
  const url = pathToFileURL(DOCS).href;
  if (CONTROL_CHARACTER.test(url)) throw cloudletError('INTERNAL', `the docs URL ${JSON.stringify(url)} contains a control character`);
  return url.replace(/%/g, '%%');
}

export function renderUnit(template: string, configFile: string, readWrite: string[]): string {
  const pathLines = readWrite.map((path) => `ReadWritePaths=-${quote(path)}`).join('\n');
  return template
    .replace(/^ExecStart=.*$/m, execStartLine(configFile))
    .replace(/^Description=.*$/m, (line) => `${line}\nDocumentation=${documentationUrl()}`)
    .replace(PATHS_MARKER, (line) => (pathLines ? `${line}\n${pathLines}` : line));
}
