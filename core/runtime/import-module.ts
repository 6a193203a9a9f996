/**
 * Imports plugin code (a plugin, a handler, a capability module) by URL, TypeScript or JavaScript alike.
 *
 * From the sources, cloudlet itself runs under a TypeScript loader (tsx under Node, Deno natively), so a
 * `.ts` plugin imports as it is. Compiled (dist/, no loader: ~30 MiB less per thread under Node 20, which
 * runs module hooks on a thread of their own), third-party plugins still work: tsx is registered in this
 * thread before the first module that is TypeScript or lies outside cloudlet's own package is imported. A
 * JavaScript plugin may still import a TypeScript module of its own, and Node caches a failed import, so
 * "try, then register" would not do. Built-in plugins, compiled, never pay for the loader.
 */
import { PACKAGE_ROOT } from './package-root.ts';

const TYPESCRIPT = /\.[cm]?ts$/;

/** This module is TypeScript only when a loader runs it, so a loader is active in this thread. */
const LOADER_ACTIVE = TYPESCRIPT.test(new URL(import.meta.url).pathname) || 'Deno' in globalThis;

let registering: Promise<void> | undefined;

async function ensureTypeScriptLoader(): Promise<void> {
  registering ??= import('tsx/esm/api').then(({ register }) => {
    register();
  });
  return registering;
}

export async function importModule<T = unknown>(url: string | URL): Promise<T> {
  const href = typeof url === 'string' ? url : url.href;
  if (!LOADER_ACTIVE && needsLoader(href)) await ensureTypeScriptLoader();
  return (await import(href)) as T;
}

function needsLoader(href: string): boolean {
  if (!URL.canParse(href)) return true; // a bare specifier: a package of unknown make
  const ours = href.startsWith(PACKAGE_ROOT.href) && !href.slice(PACKAGE_ROOT.href.length).includes('node_modules/');
  return TYPESCRIPT.test(new URL(href).pathname) || !ours;
}
