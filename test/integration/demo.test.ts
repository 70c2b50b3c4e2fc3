import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { duck } from '../helpers/parquet.js';

const ROOT = path.resolve(import.meta.dirname, '../..');

describe('npm run demo', () => {
  it('runs the whole local pipeline and its Parquet output is readable by DuckDB with the produced count', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'ksw-demo-'));
    try {
      const out = spawnSync(
        process.execPath,
        [
          '--import',
          'tsx',
          path.join(ROOT, 'src/cli/main.ts'),
          'demo',
          '--records',
          '2000',
          '--shards',
          '4',
          '--dir',
          dir,
        ],
        { cwd: ROOT, encoding: 'utf8', timeout: 240_000 },
      );
      assert.equal(out.status, 0, `demo failed:\n${out.stdout}\n${out.stderr}`);
      assert.match(out.stdout, /demo OK/);
      assert.match(out.stdout, /rows in Parquet\s+2000 \(distinct records 2000\)/);
      // Our own read of the files, not the demo's word for it.
      const rows = await duck(`SELECT count(*) AS c FROM read_parquet('${dir}/parquet/spans/**/*.parquet')`);
      assert.equal(rows[0]!.c, 2000n);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
