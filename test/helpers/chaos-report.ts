/**
 * Rows of the chaos summary table. Each chaos test prints its rows and, when CHAOS_REPORT_FILE is set (by
 * scripts/chaos/run.sh), appends them as JSON lines; the script prints the whole table after the run and
 * fails when any row lost a record.
 */
import { appendFileSync } from 'node:fs';

export interface ChaosRow {
  readonly scenario: string;
  readonly injected: string;
  readonly observed: string;
  /** Records (or documents) produced but missing from the sink at the end. */
  readonly lost: number;
  /** Duplicates in the final sink state (rows, documents), and duplicate deliveries observed on the way. */
  readonly duplicates: string;
}

const HEADER = ['Scenario', 'Injected', 'Observed (metrics, proxies)', 'Lost', 'Duplicates'];

export function markdownTable(rows: readonly ChaosRow[]): string {
  const cells = [
    HEADER,
    ...rows.map((r) => [r.scenario, r.injected, r.observed, String(r.lost), r.duplicates]),
  ].map((row) => row.map((c) => c.replaceAll('|', '\\|')));
  const widths = HEADER.map((_, i) => Math.max(...cells.map((row) => row[i]!.length)));
  const line = (row: string[]) => `| ${row.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(cells[0]!), `| ${widths.map((w) => '-'.repeat(w)).join(' | ')} |`, ...cells.slice(1).map(line)]
    .map((l) => `${l}\n`)
    .join('');
}

export function reportChaos(rows: readonly ChaosRow[]): void {
  const file = process.env.CHAOS_REPORT_FILE;
  if (file) appendFileSync(file, rows.map((r) => `${JSON.stringify(r)}\n`).join(''));
  process.stdout.write(markdownTable(rows));
}
