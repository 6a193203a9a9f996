/** Exit codes of every `cloudlet` command; documented in docs/CLI.md, README and docs/ERRORS.md. */
import type { CloudletError, WireError } from '../errors.ts';

export const EXIT = {
  OK: 0,
  /** The agent answered, with an error reply. */
  ERROR_REPLY: 1,
  USAGE: 2,
  CONFIG_INVALID: 3,
  /** Nothing could be asked: no agent at the configured address, no broker, or the connection dropped. */
  UNREACHABLE: 4,
  /** No reply before the deadline, a host's answer that the deadline passed, or a wait that ran out. */
  TIMEOUT: 5,
  INTERNAL: 70,
} as const;

export function exitCodeFor(error: CloudletError): number {
  if (error.code === 'USAGE') return EXIT.USAGE;
  if (error.code.startsWith('CONFIG_') || error.code.startsWith('PLUGIN_')) return EXIT.CONFIG_INVALID;
  // Raised by the CLI's own client (an agent's error reply never gets here): BROKER_UNAVAILABLE is the
  // RabbitMQ form of "no agent at the configured address".
  if (error.code === 'AGENT_UNREACHABLE' || error.code === 'CONNECTION_LOST' || error.code === 'SOCKET_UNSAFE' || error.code === 'BROKER_UNAVAILABLE') return EXIT.UNREACHABLE;
  if (error.code === 'CLIENT_TIMEOUT') return EXIT.TIMEOUT;
  if (error.code === 'INTERNAL') return EXIT.INTERNAL;
  return EXIT.ERROR_REPLY;
}

/**
 * A host's error reply exits 1, except when it only says that the caller's time ran out: the request's
 * deadline passed (DEADLINE_EXCEEDED), or get-vm-ip's wait found no address in its time (IP_NOT_FOUND naming
 * the strategies it asked; the same code for a VM that is not running is an answer, and exits 1). A script
 * then tells "try again later, or wait longer" (5) from "this cannot work" (1) the same way for every wait.
 */
export function exitCodeForReply(error: Pick<WireError, 'code' | 'details'>): number {
  if (error.code === 'DEADLINE_EXCEEDED') return EXIT.TIMEOUT;
  const details = error.details as { strategies?: unknown } | undefined;
  if (error.code === 'IP_NOT_FOUND' && Array.isArray(details?.strategies)) return EXIT.TIMEOUT;
  return EXIT.ERROR_REPLY;
}
