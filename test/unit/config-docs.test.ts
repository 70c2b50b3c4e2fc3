import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'vitest';
import { configReference } from '../../src/config/docs.js';

describe('configuration reference', () => {
  it('docs/config.md is generated from the current schemas', () => {
    const committed = readFileSync(path.resolve(import.meta.dirname, '../../docs/config.md'), 'utf8');
    assert.ok(
      committed === configReference(),
      'docs/config.md is stale: run `npm run docs:config` and commit the result',
    );
  });

  it('documents every section with descriptions and defaults', () => {
    const doc = configReference();
    for (const heading of [
      '## `decode`',
      '## `routing`',
      '## `hotKeys`',
      '### `type: polling`',
      '### `type: s3_parquet`',
      '### `type: s3`',
    ]) {
      assert.ok(doc.includes(heading), heading);
    }
    assert.match(
      doc,
      /\| `decode\.s3Pointers\.allowedBuckets` \| list of string \| `\[\]` \| Where pointers may point/,
    );
  });
});
