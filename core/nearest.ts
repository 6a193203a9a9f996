/** "Did you mean …?": the candidate a mistyped word most likely meant, if one is close enough. */

/** Edits (insert, delete, replace, swap two neighbours) that turn `a` into `b`. */
function distance(a: string, b: string): number {
  // Optimal string alignment over the full table: the words are flag and command names, a few dozen letters.
  const rows = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let best = Math.min(rows[i - 1]![j]! + 1, rows[i]![j - 1]! + 1, rows[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) best = Math.min(best, rows[i - 2]![j - 2]! + 1);
      rows[i]![j] = best;
    }
  }
  return rows[a.length]![b.length]!;
}

/**
 * The one candidate within reach of `word`: one edit for short words, two from five letters on, or the only
 * candidate `word` is the start of (`--wait-i`). Undefined when none is, or when two are equally near: a
 * guess between two would mislead more than no guess.
 */
export function nearest(word: string, candidates: readonly string[]): string | undefined {
  const starts = candidates.filter((candidate) => word.length >= 3 && candidate.startsWith(word));
  if (starts.length === 1) return starts[0];
  const reach = word.length >= 5 ? 2 : 1;
  const scored = candidates.map((candidate) => ({ candidate, edits: distance(word, candidate) })).filter((s) => s.edits <= reach);
  const best = Math.min(...scored.map((s) => s.edits));
  const closest = scored.filter((s) => s.edits === best);
  return closest.length === 1 ? closest[0]!.candidate : undefined;
}
