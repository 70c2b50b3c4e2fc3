import { Ack } from '../../src/core/ack.js';
import type { DeadLetter, DeadLetterQueue } from '../../src/core/component.js';
import type { RecordOrigin, SourceRecord } from '../../src/core/records.js';

/** A DLQ that keeps letters in memory and completes their acks at once. */
export class MemoryDeadLetterQueue implements DeadLetterQueue {
  readonly letters: DeadLetter[] = [];
  put(letter: DeadLetter, ack: Ack): void {
    this.letters.push(letter);
    ack.done();
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}

export function origin(seq: string, extra: Partial<RecordOrigin> = {}): RecordOrigin {
  return {
    stream: 's',
    shardId: 'shardId-000000000000',
    sequenceNumber: seq,
    subSequenceNumber: 0,
    partitionKey: 'pk',
    arrivalTime: new Date(0),
    ...extra,
  };
}

/** A source record whose ack reports into `acked`. */
export function sourceRecord(seq: string, data: string | Uint8Array, acked: string[]): SourceRecord {
  return {
    origin: origin(seq),
    data: typeof data === 'string' ? Buffer.from(data, 'utf8') : data,
    ack: new Ack(() => acked.push(seq)),
  };
}
