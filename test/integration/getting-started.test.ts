/**
 * docs/getting-started.md as written: every ```bash block, in order, in one shell (set -euo pipefail), in a
 * fresh directory with `./ksw` pointing at this checkout. Each must exit 0, and the outputs the page shows
 * must be what the commands print.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, it } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '../..');

/** The ```bash blocks of a Markdown page (```sh and ```text blocks are shown, not run). */
function bashBlocks(markdown: string): string[] {
  return [...markdown.matchAll(/^```bash\n([\s\S]*?)^```$/gm)].map((m) => m[1]!);
}

describe('getting started', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'ksw-tutorial-'));
  const ksw = path.join(dir, 'ksw');
  writeFileSync(
    ksw,
    `#!/bin/sh\nexec node --import "${ROOT}/node_modules/tsx/dist/loader.mjs" "${ROOT}/src/cli/main.ts" "$@"\n`,
  );
  chmodSync(ksw, 0o755);
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('AWS_')));
  afterAll(() => {
    spawnSync(ksw, ['local', 'down'], { cwd: dir, env });
  });

  it('runs every command of the tutorial, and they print what it shows', () => {
    const page = readFileSync(path.join(ROOT, 'docs/getting-started.md'), 'utf8');
    const blocks = bashBlocks(page);
    assert.ok(blocks.length >= 8, `${blocks.length} bash blocks`);
    const marker = (i: number) => `=== block ${i} ===`;
    const script = ['set -euo pipefail', ...blocks.flatMap((b, i) => [`echo '${marker(i)}'`, b])].join('\n');
    const run = spawnSync('bash', ['-c', script], { cwd: dir, env, encoding: 'utf8', timeout: 300_000 });
    const out = run.stdout;
    assert.equal(run.status, 0, `${out}\n${run.stderr}`);
    for (let i = 0; i < blocks.length; i++) assert.ok(out.includes(marker(i)), `block ${i} ran`);
    // What the page shows:
    assert.match(out, /^local stack up \(state, data and logs in /m);
    assert.match(out, /^ {2}kinesalite http:\/\/127\.0\.0\.1:\d+ {2}pid \d+ {2}streams spans \(4 shards\)$/m);
    for (const shown of [
      'my-pipeline.yaml: OK\n  consumers: spans (polling, TRIM_HORIZON)\n  sinks: spans (s3_parquet), red (s3_parquet)\n  lease table: my-pipeline-leases\n',
      '  ok    a span becomes a row and a RED count (spans 1, red 1; dead letters 0)\n',
      '  ok    a broken record goes to the DLQ (spans 0, red 0; dead letters 1)\n2 passed, 0 failed\n',
      'rows  records\n2000  2000\n',
      'local stack stopped (',
    ])
      assert.ok(out.includes(shown), `prints ${JSON.stringify(shown)}\n---\n${out}`);
    assert.ok(page.includes('```text\nrows  records\n2000  2000\n```'));
    assert.match(out, /^serviceName +spans +max_ns$/m);
    const log = readFileSync(path.join(dir, 'worker.log'), 'utf8');
    assert.match(log, /"drained":true,"recordsFetched":2000,"msg":"worker stopped"/);
    assert.equal(
      existsSync(path.join(dir, '.local/stack/state.json')),
      false,
      'local down removed the state',
    );
  });
});
