import { PassThrough } from 'node:stream';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../src/runtime/logger.js';
import { prettyDestination, prettyLine } from '../../src/runtime/pretty-log.js';

describe('pretty logs', () => {
  it('renders time, level, message and the fields, without pid/host/name', () => {
    const line = JSON.stringify({
      level: 'warn',
      time: '2026-12-02T14:01:02.345Z',
      pid: 1,
      host: 'h',
      name: 'ksw',
      msg: 'records dead-lettered',
      count: 2,
      reason: 'invalid JSON',
      nested: { a: 1 },
    });
    expect(prettyLine(line, false)).toBe(
      '14:01:02.345 WARN  records dead-lettered  count=2 reason="invalid JSON" nested={"a":1}',
    );
    expect(prettyLine(line, true)).toContain('\x1b[33mWARN ');
    expect(prettyLine('not json', false)).toBe('not json');
    const err = JSON.stringify({
      level: 'error',
      time: 'x',
      msg: 'failed',
      err: { type: 'Error', message: 'boom', stack: 'Error: boom\n at x' },
    });
    expect(prettyLine(err, false)).toMatch(/failed {2}err="Error: boom"$/);
  });

  it('is a pino destination, and createLogger redacts secrets in both formats', () => {
    const out = new PassThrough();
    let text = '';
    out.on('data', (c) => {
      text += String(c);
    });
    const logger = pino({ base: null, timestamp: false }, prettyDestination(out));
    logger.info({ shard: 'shardId-000' }, 'hello');
    expect(text).toBe(' INFO  hello  shard=shardId-000\n');
    const dest = new PassThrough();
    let json = '';
    dest.on('data', (c) => {
      json += String(c);
    });
    createLogger('info', 'ksw', dest, 'json').info({ aws: { secretAccessKey: 's3cr3t' } }, 'x');
    expect(json).not.toContain('s3cr3t');
    expect(JSON.parse(json).level).toBe('info');
  });
});
