/**
 * A worker process for the "alive" chaos scenarios: `ksw run` as the CLI does it (graceful stop on SIGTERM,
 * exit 0), plus one fault that only a process of its own can carry:
 *   KSW_TEST_THROW_ONCE=<sink>:<id>   the sink's write rejects (once) the first batch holding the record
 *                                      whose `id` field is <id>, as a sink with a bug would.
 *   node --import tsx test/helpers/alive-worker.ts <config.yaml>
 */

import { loadConfig } from '../../src/config/load.js';
import type { Sink } from '../../src/core/component.js';
import { Worker } from '../../src/runtime/worker.js';

const [file] = process.argv.slice(2);
if (!file) {
  process.stderr.write('usage: alive-worker.ts <config.yaml>\n');
  process.exit(2);
}
const config = loadConfig(file);
const [throwSink, throwId] = (process.env.KSW_TEST_THROW_ONCE ?? '').split(':');
let thrown = false;
const wrapSink = (name: string, sink: Sink): Sink => {
  if (name !== throwSink) return sink;
  return {
    name: sink.name,
    write: async (events) => {
      if (!thrown && events.some((e) => String(e.value.id) === throwId)) {
        thrown = true;
        process.stdout.write(
          `${JSON.stringify({ msg: 'injected sink write failure', sink: name, id: throwId })}\n`,
        );
        throw new Error(`injected: sink ${name} rejects the batch holding id ${throwId}`);
      }
      return sink.write(events);
    },
    flush: () => sink.flush(),
    close: () => sink.close(),
    ...(sink.openShard ? { openShard: sink.openShard.bind(sink) } : {}),
    ...(sink.flushShard ? { flushShard: sink.flushShard.bind(sink) } : {}),
    ...(sink.closeShard ? { closeShard: sink.closeShard.bind(sink) } : {}),
  };
};
let signals = 0;
let worker: Worker | undefined;
const stopRequested = new Promise<void>((resolve) => {
  const onSignal = () => {
    signals += 1;
    if (signals > 1) process.exit(1);
    resolve();
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
});
worker = await Worker.start(config, { wrapSink });
await stopRequested;
await worker.stop();
process.exit(0);
