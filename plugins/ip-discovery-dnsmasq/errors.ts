/** Error codes of ip-discovery-dnsmasq (declared in index.ts). */
export const dnsmasqErrors = {
  DNSMASQ_START_FAILED: { message: 'the managed dnsmasq did not start', retryable: false },
  DNSMASQ_LEASES_UNREADABLE: { message: 'the dnsmasq lease file exists but cannot be read', retryable: true },
} as const;

export type DnsmasqErrorCode = keyof typeof dnsmasqErrors;

export function dnsmasqError(code: DnsmasqErrorCode, message: string, details?: unknown, cause?: unknown): Error & { code: string; details?: unknown } {
  return Object.assign(new Error(message, cause === undefined ? undefined : { cause }), { code, details });
}
