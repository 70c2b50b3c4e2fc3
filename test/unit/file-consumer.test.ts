import { Readable } from 'node:stream';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { byteLines, FileSource, fileConsumerConfigSchema } from '../../src/consumers/file.js';
import type { ShardChain, Tenure } from '../../src/core/component.js';
import type { SourceRecord } from '../../src/core/records.js';
import { createRegistry } from '../../src/metrics/registry.js';

async function collect(chunks: Buffer[]): Promise<string[]> {
  const out: string[] = [];
  for await (const line of byteLines(Readable.from(chunks))) out.push(line.toString('latin1'));
  return out;
}

/** A chain that keeps what it is given and acks at flush (or never, or fails). */
class FakeChain implements ShardChain {
  readonly records: SourceRecord[] = [];
  readonly calls: string[] = [];
  constructor(private readonly mode: 'ack-at-flush' | 'ack-now' | 'fail' | 'never' = 'ack-at-flush') {}
  async deliver(records: SourceRecord[]): Promise<void> {
    this.calls.push(`deliver ${records.length}`);
    if (this.mode === 'fail') {
      records[0]!.ack.tenure.fail('deliver', new Error('sink down'));
      throw new Error('sink down');
    }
    this.records.push(...records);
    if (this.mode === 'ack-now') for (const r of records) r.ack.done();
  }
  async openShard(tenure: Tenure, checkpoint: unknown): Promise<void> {
    this.calls.push(`open ${tenure.stream}/${tenure.shardId} ${String(checkpoint)}`);
  }
  async flushShard(): Promise<void> {
    this.calls.push('flush');
    if (this.mode === 'ack-at-flush') for (const r of this.records) if (!r.ack.completed) r.ack.done();
  }
  async closeShard(tenure: Tenure): Promise<void> {
    this.calls.push(`close ${tenure.ended}`);
  }
  relievePressure(): void {
    this.calls.push('relieve');
    for (const r of this.records) if (!r.ack.completed) r.ack.done();
  }
}

const deps = (chain: ShardChain, text: string | Buffer) => ({
  chain,
  logger: pino({ level: 'silent' }),
  metrics: createRegistry(false),
  input: Readable.from([Buffer.from(text)]),
});

describe('byteLines', () => {
  it('splits on \\n and \\r\\n across chunk boundaries, keeps bytes, yields a last line without newline', async () => {
    expect(await collect([Buffer.from('a\r\nb'), Buffer.from('c\n\nd'), Buffer.from('\r')])).toEqual([
      'a',
      'bc',
      '',
      'd',
    ]);
    const invalid = Buffer.from([0x7b, 0xff, 0xfe, 0x7d, 0x0a]);
    const lines: number[][] = [];
    for await (const l of byteLines(Readable.from([invalid]))) lines.push([...l]);
    expect(lines).toEqual([[0x7b, 0xff, 0xfe, 0x7d]]);
  });
});

describe('file consumer', () => {
  it('gives every line its line number as position and its partition key, skips empty lines, ends drained', async () => {
    const chain = new FakeChain();
    const config = fileConsumerConfigSchema.parse({
      type: 'file',
      path: '-',
      stream: 'in',
      partitionKeyField: 'k',
      batchRecords: 2,
    });
    const source = new FileSource(config, deps(chain, '{"k":"a"}\n\nnot json\n{"k":7}\n{"x":1}\n'));
    const result = await source.run();
    expect(result).toEqual({ stream: 'in', lines: 5, records: 4, drained: true });
    expect(chain.records.map((r) => [r.origin.sequenceNumber, r.origin.partitionKey])).toEqual([
      ['1', 'a'],
      ['3', '3'],
      ['4', '7'],
      ['5', '5'],
    ]);
    expect(chain.records[1]!.data.toString()).toBe('not json');
    expect(chain.calls).toEqual([
      'open in/shardId-000000000000 undefined',
      'deliver 2',
      'deliver 2',
      'flush',
      'close released',
    ]);
  });

  it('waits for acks under backpressure and asks the chain to flush early', async () => {
    const chain = new FakeChain('never');
    const config = fileConsumerConfigSchema.parse({
      type: 'file',
      path: '-',
      batchRecords: 1,
      maxInFlightBytes: 1024,
    });
    const line = `{"pad":"${'x'.repeat(900)}"}`;
    const result = await new FileSource(config, deps(chain, `${line}\n${line}\n${line}\n`)).run();
    expect(chain.calls.filter((c) => c === 'relieve').length).toBeGreaterThan(0);
    expect(chain.calls.indexOf('relieve')).toBeLessThan(chain.calls.lastIndexOf('deliver 1'));
    expect(result.records).toBe(3);
    expect(result.drained).toBe(true);
  });

  it('gives up waiting for acks after drainTimeoutMs and reports what is left', async () => {
    const chain = new FakeChain('ack-now');
    chain.relievePressure = () => undefined;
    chain.deliver = async (records) => {
      chain.records.push(...records);
    };
    const config = fileConsumerConfigSchema.parse({ type: 'file', path: '-' });
    const source = new FileSource(config, { ...deps(chain, '{"a":1}\n'), drainTimeoutMs: 300 });
    const result = await source.run();
    expect(result.drained).toBe(false);
    expect(source.inFlightRecords).toBe(1);
  });

  it('stops at a chain failure and reports it, not drained', async () => {
    const chain = new FakeChain('fail');
    const config = fileConsumerConfigSchema.parse({ type: 'file', path: '-' });
    const result = await new FileSource(config, deps(chain, '{"a":1}\n{"a":2}\n')).run();
    expect(result.drained).toBe(false);
    expect((result.error as Error).message).toBe('sink down');
    expect(chain.calls.at(-1)).toBe('close failed');
  });

  it('stop() ends reading; what was read is still delivered and acked', async () => {
    const chain = new FakeChain('ack-now');
    const config = fileConsumerConfigSchema.parse({ type: 'file', path: '-', batchRecords: 1 });
    const source = new FileSource(config, deps(chain, '{"a":1}\n{"a":2}\n{"a":3}\n'));
    source.stop();
    const result = await source.run();
    expect(result.records).toBe(1);
    expect(result.drained).toBe(true);
    expect(source.inFlightRecords).toBe(0);
  });

  it('rejects a partition key field that is not a field path', () => {
    const parsed = fileConsumerConfigSchema.safeParse({ type: 'file', path: 'x', partitionKeyField: 'a[0]' });
    expect(parsed.success).toBe(false);
  });
});
