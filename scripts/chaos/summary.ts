/**
 * Prints the chaos summary table from the rows the chaos tests appended (CHAOS_REPORT_FILE, JSON lines) and
 * exits 1 when a row lost anything, when no row was written, or when an expected scenario is missing
 * (`--expect opensearch`: a skipped OpenSearch run must not pass unnoticed).
 *   node --import tsx scripts/chaos/summary.ts rows.jsonl [--expect WORD]
 */
import { readFileSync } from 'node:fs';
import { type ChaosRow, markdownTable } from '../../test/helpers/chaos-report.js';

const [file, flag, word] = process.argv.slice(2);
if (!file) {
  process.stderr.write('usage: summary.ts rows.jsonl [--expect WORD]\n');
  process.exit(2);
}
const rows = readFileSync(file, 'utf8')
  .split('\n')
  .filter(Boolean)
  .map((l) => JSON.parse(l) as ChaosRow);
process.stdout.write(`\n## Chaos summary\n\n${markdownTable(rows)}\n`);
const problems: string[] = [];
if (rows.length === 0) problems.push('no scenario reported a result');
for (const r of rows) if (r.lost !== 0) problems.push(`${r.scenario}: ${r.lost} lost`);
if (flag === '--expect' && word && !rows.some((r) => r.scenario.toLowerCase().includes(word)))
  problems.push(`no ${word} scenario ran`);
if (problems.length > 0) {
  process.stdout.write(`FAILED: ${problems.join('; ')}\n`);
  process.exit(1);
}
process.stdout.write(`${rows.length} scenarios, nothing lost.\n`);
