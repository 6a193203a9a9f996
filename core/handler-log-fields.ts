/** A plugin's log fields (a handler's, a hook's), made safe to write beside the agent's own on one JSON line. */
import type { PluginLogger } from './plugin-api.ts';

/**
 * The keys the agent writes on a handler's log line itself: pino's own and the message's bindings. A
 * handler's field of the same name would be written beside it, a second `"msg"` or `"msgId"` in one JSON
 * line, which most readers take the last of: a handler could log under another message's id. (The agent's
 * logger writes no `pid` or `hostname`: a plugin's `pid`, a QEMU's say, stays where it was.)
 */
const AGENT_LOG_KEYS: ReadonlySet<string> = new Set(['level', 'time', 'msg', 'host', 'msgId', 'type', 'plugin']);

/** A handler's log fields, those named like the agent's own moved under `handlerFields`. */
export function handlerLogFields(fields: Record<string, unknown>): Record<string, unknown> {
  if (!Object.keys(fields).some((key) => AGENT_LOG_KEYS.has(key))) return fields;
  const kept: Record<string, unknown> = {};
  const moved: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(fields)) (AGENT_LOG_KEYS.has(key) ? moved : kept)[key] = value;
  return { ...kept, handlerFields: moved };
}

/**
 * The logger a plugin's hooks get: `parent` (bound to the plugin), with the same rule for their fields. An
 * Error logged as the object is passed on whole, for pino to write its message and stack.
 */
export function withPluginLogFields(parent: PluginLogger): PluginLogger {
  const at =
    (level: keyof PluginLogger) =>
    (obj: object | string, msg?: string): void => {
      const fields = typeof obj === 'object' && obj !== null && !(obj instanceof Error) ? handlerLogFields(obj as Record<string, unknown>) : obj;
      if (msg === undefined) parent[level](fields);
      else parent[level](fields, msg);
    };
  return { trace: at('trace'), debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}
