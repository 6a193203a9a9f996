/** Reports which CommonJS globals handler code can see in its worker thread (PLUGINS.md section 10). */
export default async function globalsSeen(): Promise<Record<string, string>> {
  const seen = globalThis as Record<string, unknown>;
  return { require: typeof seen.require, module: typeof seen.module, __dirname: typeof seen.__dirname, __filename: typeof seen.__filename };
}
