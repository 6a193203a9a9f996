import process from 'node:process';
import { CORE_API_VERSION, defineHandler, z } from '../../core/plugin-api.ts';
import { PROTOCOL_VERSION } from '../../core/version.ts';
import { hostInfoPayload } from './index.ts';

export interface HostInfo {
  host: string;
  agentVersion: string;
  coreApi: string;
  protocolVersion: number;
  startedAt: string;
  uptimeMs: number;
  runtime: string;
  plugins: { name: string; version: string; source: string; provides: string[]; messageTypes: string[] }[];
  messageTypes: string[];
}

export default defineHandler(hostInfoPayload, z.object({}), (_payload, ctx): HostInfo => {
  const deno = (globalThis as { Deno?: { version: { deno: string } } }).Deno;
  return {
    host: ctx.host.id,
    agentVersion: ctx.host.agentVersion,
    coreApi: CORE_API_VERSION,
    protocolVersion: PROTOCOL_VERSION,
    startedAt: new Date(ctx.host.startedAt).toISOString(),
    uptimeMs: Date.now() - ctx.host.startedAt,
    runtime: deno ? `deno ${deno.version.deno}` : `node ${process.versions.node}`,
    plugins: ctx.plugins.map((p) => ({ ...p })),
    messageTypes: ctx.plugins.flatMap((p) => p.messageTypes).sort(),
  };
});
