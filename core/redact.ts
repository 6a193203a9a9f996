/**
 * Masks passwords in URLs wherever text leaves the process: log lines, config problems, doctor output. A
 * module of its own, without dependencies, so that config checking need not load the logger.
 */

// The password runs to the last "@" before the host, as URL parsers read it: `amqp://u:p@ss@h` has the
// password "p@ss", all of which must go. Malformed URLs count too (`amqp:/u:p@h`, `amqp:u:p@h`): they
// reach messages precisely because they were refused, with the password still in them.
const URL_CREDENTIALS = /\b([a-z][a-z0-9+.-]*:\/{0,2}[^\s:/@]+):([^\s/]+)@/gi;

export function redactUrlCredentials(text: string): string {
  return text.replace(URL_CREDENTIALS, '$1:***@');
}
