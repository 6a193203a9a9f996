#!/usr/bin/env node
// The installed `cloudlet` command: registers tsx so the TypeScript sources run as they are, then starts
// the CLI. Kept as plain JavaScript because it runs before any loader exists.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('./main.ts');
process.exitCode = await main(process.argv.slice(2));
// Everything is closed by now; if a stray handle still holds the event loop, do not hang the shell.
setTimeout(() => process.exit(), 2000).unref();
