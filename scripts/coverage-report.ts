/**
 * Prints line/branch/function coverage per source directory from vitest's json-summary
 * (.local/coverage/coverage-summary.json), as the Markdown table docs/testing.md carries.
 * The thresholds that fail CI on a drop live in vitest.config.ts; this only reports.
 */
import { readFileSync } from 'node:fs';
import { dirname, relative } from 'node:path';

interface Totals {
  total: number;
  covered: number;
}
type Summary = Record<string, { lines: Totals; branches: Totals; functions: Totals }>;

const file = process.argv[2] ?? '.local/coverage/coverage-summary.json';
const summary = JSON.parse(readFileSync(file, 'utf8')) as Summary;
const dirs = new Map<string, { lines: Totals; branches: Totals; functions: Totals }>();
for (const [path, entry] of Object.entries(summary)) {
  if (path === 'total') continue;
  const dir = dirname(relative(process.cwd(), path));
  const acc = dirs.get(dir) ?? {
    lines: { total: 0, covered: 0 },
    branches: { total: 0, covered: 0 },
    functions: { total: 0, covered: 0 },
  };
  for (const k of ['lines', 'branches', 'functions'] as const) {
    acc[k].total += entry[k].total;
    acc[k].covered += entry[k].covered;
  }
  dirs.set(dir, acc);
}
const pct = (t: Totals) => (t.total === 0 ? '-' : `${((100 * t.covered) / t.total).toFixed(1)} %`);
const rows = [...dirs.entries()].sort(([a], [b]) => a.localeCompare(b));
console.log('\n| directory | lines | branches | functions |\n|---|---:|---:|---:|');
for (const [dir, t] of rows)
  console.log(`| ${dir} | ${pct(t.lines)} | ${pct(t.branches)} | ${pct(t.functions)} |`);
const total = summary.total;
if (total)
  console.log(`| **all of src** | ${pct(total.lines)} | ${pct(total.branches)} | ${pct(total.functions)} |`);
