/**
 * A config problem says where (file and path), what was found and what is allowed. Everything that can be
 * wrong with a host's config — syntax, the core schema, plugin loading, plugin options — becomes a list of
 * these, so an operator sees every problem in one run.
 */
import type { z } from 'zod';
import { CloudletError } from '../errors.ts';
import { formatPath } from '../envelope.ts';
import { nearest } from '../nearest.ts';
import { redactUrlCredentials } from '../redact.ts';

export interface ConfigProblem {
  code: string;
  /** The config file, or `env CLOUDLET_…` when the value came from the environment. */
  file: string;
  /** Dotted path into the config, e.g. `plugins[2].options.leaseFile`; `(root)` for the whole file. */
  path: string;
  message: string;
  found?: string;
  allowed?: string;
}

export function formatProblem(problem: ConfigProblem): string {
  let line = `${problem.file}: ${problem.path}: ${problem.message}`;
  if (problem.found !== undefined) line += `\n    found:   ${problem.found}`;
  if (problem.allowed !== undefined) line += `\n    allowed: ${problem.allowed}`;
  return `[${problem.code}] ${line}`;
}

export function configInvalidError(problems: ConfigProblem[]): CloudletError {
  const first = problems[0];
  const summary =
    problems.length === 1 && first ? formatProblem(first) : `${problems.length} problems in the config:\n${problems.map(formatProblem).join('\n')}`;
  const code = problems.every((p) => p.code === first?.code) && first ? first.code : 'CONFIG_INVALID';
  return new CloudletError(code, summary, { details: { problems } });
}

/**
 * Describes a value for humans: short, typed, never the whole of a large value, and never a password in a
 * URL (masked before the value is cut, so that no cut leaves part of one behind).
 */
export function describeValue(value: unknown): string {
  if (value === undefined) return 'nothing (the key is missing)';
  if (value === null) return 'null';
  const type = Array.isArray(value) ? 'array' : typeof value;
  // JSON writes these as null.
  if (typeof value === 'number' && !Number.isFinite(value)) return `${value} (number)`;
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  text = redactUrlCredentials(text);
  if (text.length > 80) text = `${text.slice(0, 77)}...`;
  return `${text} (${type})`;
}

function valueAt(root: unknown, path: readonly PropertyKey[]): unknown {
  let current: unknown = root;
  for (const key of path) {
    if (current === null || typeof current !== 'object') return undefined;
    current = (current as Record<PropertyKey, unknown>)[key];
  }
  return current;
}

function bound(origin: string | undefined, limit: number | bigint, inclusive: boolean, word: 'least' | 'most'): string {
  const n = String(limit);
  switch (origin) {
    case 'string':
      return `at ${word} ${n} character${n === '1' ? '' : 's'}`;
    case 'array':
    case 'set':
      return `at ${word} ${n} item${n === '1' ? '' : 's'}`;
    default:
      return `${word === 'least' ? (inclusive ? '>=' : '>') : inclusive ? '<=' : '<'} ${n}`;
  }
}

/** Turns zod issues into problems. `input` is the validated value, used to show what was found. */
export function problemsFromZod(
  issues: readonly z.core.$ZodIssue[],
  input: unknown,
  where: {
    file: string;
    code: string;
    /** The schema that produced the issues, to list the allowed keys when an unknown one is found. */
    schema?: z.ZodType;
    pathPrefix?: readonly PropertyKey[];
    fileForPath?: (path: string) => string | undefined;
  },
): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  for (const issue of issues) {
    const fullPath = [...(where.pathPrefix ?? []), ...issue.path];
    const path = formatPath(fullPath);
    const problem: ConfigProblem = {
      code: where.code,
      file: where.fileForPath?.(path) ?? where.file,
      path,
      message: issue.message,
    };
    const found = valueAt(input, issue.path);
    switch (issue.code) {
      case 'invalid_type':
        problem.found = describeValue(found);
        problem.allowed = issue.expected;
        problem.message = found === undefined ? 'required key is missing' : `wrong type`;
        // YAML reads 1e400, .inf and .nan as numbers that JSON cannot hold: "wrong type, number" would puzzle.
        if (typeof found === 'number' && !Number.isFinite(found)) {
          problem.message = 'not a finite number';
          problem.allowed = 'a finite number';
        }
        break;
      case 'invalid_value':
        problem.found = describeValue(found);
        problem.allowed = issue.values.map((v) => JSON.stringify(v)).join(' | ');
        problem.message = notAllowed(found, issue.values);
        break;
      case 'too_small':
        problem.found = describeValue(found);
        problem.allowed = bound(issue.origin, issue.minimum, issue.inclusive ?? true, 'least');
        problem.message = 'too small';
        break;
      case 'too_big':
        problem.found = describeValue(found);
        problem.allowed = bound(issue.origin, issue.maximum, issue.inclusive ?? true, 'most');
        problem.message = 'too big';
        break;
      case 'unrecognized_keys':
        problem.message = `unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => JSON.stringify(k)).join(', ')}`;
        problem.found = issue.keys.join(', ');
        problem.allowed = knownKeysHint(where.schema, input, issue.path);
        break;
      case 'invalid_format':
        problem.found = describeValue(found);
        problem.allowed = issue.message;
        problem.message = 'wrong format';
        break;
      case 'invalid_key':
        problem.message = `invalid key: ${issue.issues.map((i) => i.message).join('; ')}`;
        break;
      case 'invalid_union':
        problem.found = describeValue(found);
        // A discriminated union whose key (`mode`, `kind`) has none of its values: zod's own text
        // ("Invalid discriminator value. Expected …") is replaced by what an invalid_value says.
        if ('discriminator' in issue && issue.discriminator !== undefined && 'options' in issue && issue.options) {
          problem.allowed = issue.options.map((v) => JSON.stringify(v)).join(' | ');
          problem.message = found === undefined ? 'required key is missing' : notAllowed(found, issue.options);
        }
        break;
      default:
        if (found !== undefined) problem.found = describeValue(found);
    }
    problems.push(problem);
  }
  return problems;
}

/** "value not allowed", with the allowed string it most likely meant (`usr` → "user"). */
function notAllowed(found: unknown, values: readonly unknown[]): string {
  const strings = values.filter((value): value is string => typeof value === 'string');
  const meant = typeof found === 'string' ? nearest(found, strings) : undefined;
  return meant === undefined ? 'value not allowed' : `value not allowed (did you mean ${JSON.stringify(meant)}?)`;
}

function knownKeysHint(schema: z.ZodType | undefined, input: unknown, path: readonly PropertyKey[]): string {
  const keys = schema ? objectKeysAt(schema, input, path) : undefined;
  return keys && keys.length > 0 ? keys.join(', ') : 'only the documented keys';
}

interface SchemaDef {
  type: string;
  shape?: Record<string, z.ZodType>;
  innerType?: z.ZodType;
  element?: z.ZodType;
  valueType?: z.ZodType;
  options?: z.ZodType[];
  discriminator?: string;
  in?: z.ZodType;
}

/** Walks a zod schema along `path` (following the input for discriminated unions) to list an object's keys. */
function objectKeysAt(schema: z.ZodType, input: unknown, path: readonly PropertyKey[]): string[] | undefined {
  let current: z.ZodType | undefined = schema;
  let value: unknown = input;
  for (let depth = 0; current && depth <= path.length; ) {
    const def: SchemaDef = (current as unknown as { _zod: { def: SchemaDef } })._zod.def;
    if (def.innerType) {
      current = def.innerType;
      continue;
    }
    if (def.type === 'pipe' && def.in) {
      current = def.in;
      continue;
    }
    if (def.type === 'union' && def.options) {
      const discriminator = def.discriminator;
      const actual = discriminator && value && typeof value === 'object' ? (value as Record<string, unknown>)[discriminator] : undefined;
      current = def.options.find((option: z.ZodType) => {
        const shape = (option as unknown as { _zod: { def: SchemaDef } })._zod.def.shape;
        const literal = discriminator && shape?.[discriminator];
        return literal ? (literal as unknown as { _zod: { def: { values?: unknown[] } } })._zod.def.values?.includes(actual) : false;
      });
      continue;
    }
    if (depth === path.length) return def.type === 'object' && def.shape ? Object.keys(def.shape) : undefined;
    const key = path[depth++];
    value = value && typeof value === 'object' ? (value as Record<PropertyKey, unknown>)[key as PropertyKey] : undefined;
    if (def.type === 'object' && def.shape) current = def.shape[String(key)];
    else if (def.type === 'array') current = def.element;
    else if (def.type === 'record') current = def.valueType;
    else return undefined;
  }
  return undefined;
}
