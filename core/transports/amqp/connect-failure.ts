/**
 * Why a connection to the broker failed, in words an operator can act on. amqplib reports a refused login
 * or virtual host in the protocol's terms ("Expected ConnectionOpenOk; got <ConnectionClose …>"), which
 * say nothing about what to fix. Shared by the transports (their BROKER_UNAVAILABLE) and `cloudlet doctor`.
 */
export interface ConnectFailure {
  /** What went wrong, e.g. "nothing listens at amqp://…". */
  reason: string;
  /** What to do about it. */
  fix: string;
}

/** `shown`: the broker URL with its password masked. undefined when the failure is none of the known kinds. */
export function explainConnectFailure(error: unknown, message: string, shown: string): ConnectFailure | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  // The system's codes first: a message such as "connect ECONNREFUSED 127.0.0.1:4031" or "getaddrinfo
  // ENOTFOUND vhost-broker" must not be read as an AMQP refusal. Then the broker's own reply codes, as
  // amqplib words them ("403 (ACCESS-REFUSED)", "530 (NOT-ALLOWED)").
  if (code === 'ECONNREFUSED') return { reason: `nothing listens at ${shown}`, fix: 'start RabbitMQ (systemctl start rabbitmq-server) or fix the host and port in transport.url' };
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return { reason: `the broker host in ${shown} does not resolve`, fix: 'fix the host name in transport.url (or /etc/hosts, DNS)' };
  if (/\b403 \(ACCESS[-_]REFUSED\)|\bACCESS_REFUSED\b|PLAIN login refused/.test(message)) {
    return {
      reason: `the broker at ${shown} refused the credentials`,
      fix: 'check the user and password in transport.url or CLOUDLET_AMQP_URL; on the broker: rabbitmqctl authenticate_user USER PASSWORD, rabbitmqctl set_permissions -p VHOST USER ".*" ".*" ".*"',
    };
  }
  // amqplib 2 reports a refused connection.open (RabbitMQ's 530 NOT_ALLOWED: no such vhost, or no access
  // to it) only as an unexpected ConnectionClose; older wordings carry the code.
  if (/\b530 \(NOT[-_]ALLOWED\)|\bNOT_ALLOWED\b|Expected ConnectionOpenOk; got <ConnectionClose/.test(message)) {
    return {
      reason: `the broker at ${shown} does not allow this virtual host (it does not exist, or the user may not use it)`,
      fix: 'create it and grant the user access: rabbitmqctl add_vhost VHOST; rabbitmqctl set_permissions -p VHOST USER ".*" ".*" ".*"',
    };
  }
  return undefined;
}
