#!/usr/bin/env node
/**
 * ksw: the worker's command line.
 *   ksw run -c config.yaml        run the worker until SIGTERM/SIGINT
 *   ksw validate -c config.yaml   check a config; print every problem with its field and a fix
 *   ksw demo                      embedded local stack + synthetic producer + worker, then a summary
 *   ksw produce --stream S ...    put records from a file/stdin, offloading large ones to S3
 *   ksw redrive -c FILE --sink N  replay DLQ objects into a sink, remove what it wrote
 *   ksw ddl -c config.yaml --sink NAME   print the Athena/Glue CREATE EXTERNAL TABLE of a Parquet sink
 *   ksw inspect -c config.yaml    print the lease table: owner, checkpoint, lag per shard
 */
import { parseArgs } from 'node:util';
import { ConfigError } from '../config/errors.js';

const USAGE = `usage: ksw <command> [options]

commands:
  run -c FILE        run the worker (SIGTERM/SIGINT: stop fetching, flush, checkpoint, exit 0)
  validate -c FILE   validate a config file and print every problem with its field path and a hint
  config-docs        print the configuration reference (Markdown) generated from the schemas
  demo [--records N] [--shards N] [--dir PATH]
                     start Kinesis, S3 and DynamoDB emulators on 127.0.0.1, produce synthetic spans,
                     run the worker, verify the Parquet output with DuckDB, print a summary
  ddl -c FILE --sink NAME [--table T] [--database D] [--projection-start YYYY-MM-DD]
                     print the Athena/Glue CREATE EXTERNAL TABLE (with partition projection) for an
                     s3_parquet sink's schema and partitioning
  inspect -c FILE [--json] [--no-lag]
                     print the lease table: owner, counter, checkpoint, lag per shard (one GetRecords
                     per shard at its checkpoint), parents/children, leases per worker and fair share
  produce --stream NAME [--file PATH] [--offload-bucket B] ...
                     put records to a stream; records over 900 KiB go to S3 with a pointer (claim
                     check) or are split into chunks (ksw produce --help)
  redrive -c FILE --sink NAME [--component C] [--dry-run]
                     replay dead letters from the S3 DLQ into a sink; remove those it wrote, keep the
                     rest with their new reason; safe to re-run (ksw redrive --help)
`;

async function run(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { config: { type: 'string', short: 'c' } },
    allowPositionals: false,
  });
  if (!values.config) {
    process.stderr.write('run: missing -c/--config FILE\n');
    return 2;
  }
  const { loadConfig } = await import('../config/load.js');
  const { Worker, StartAbortedError } = await import('../runtime/worker.js');
  const { createLogger } = await import('../runtime/logger.js');
  const config = loadConfig(values.config);
  // The logger and handlers come before start: taking leases (and sinks opening shards) happens inside
  // start, and a SIGTERM arriving then must stop the start-up within shutdown.deadlineMs (Worker.start's
  // signal), be logged, and not end in the default action (killed by the signal).
  const logger = createLogger(config.log.level, config.app.name);
  const stop = new AbortController();
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    signals += 1;
    if (signals > 1) {
      logger.warn({ signal }, 'second signal: exiting now; unacked records will be read again');
      process.exit(1);
    }
    logger.info({ signal }, 'signal received');
    stop.abort();
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  let worker: Awaited<ReturnType<typeof Worker.start>>;
  try {
    worker = await Worker.start(config, { logger, signal: stop.signal });
  } catch (err) {
    if (err instanceof StartAbortedError) process.exit(0);
    throw err;
  }
  if (!stop.signal.aborted)
    await new Promise((resolve) => stop.signal.addEventListener('abort', resolve, { once: true }));
  await worker.stop();
  // stop() has flushed and checkpointed what it could within shutdown.deadlineMs; a sink still retrying
  // an upload past that must not keep the process alive (its records are unacked and will be read again).
  process.exit(0);
}

async function validate(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { config: { type: 'string', short: 'c' } },
    allowPositionals: false,
  });
  if (!values.config) {
    process.stderr.write('validate: missing -c/--config FILE\n');
    return 2;
  }
  const { loadConfig } = await import('../config/load.js');
  const { semanticWarnings } = await import('../config/warnings.js');
  const config = loadConfig(values.config);
  for (const w of semanticWarnings(config))
    process.stderr.write(`${values.config}: warning: ${w.path}: ${w.message}\n`);
  const sinks = Object.entries(config.sinks)
    .map(([name, s]) => `${name} (${s.type})`)
    .join(', ');
  process.stdout.write(
    `${values.config}: OK\n  consumers: ${config.consumers.map((c) => `${c.stream} (${c.type}, ${c.startPosition})`).join(', ')}\n  sinks: ${sinks}\n  lease table: ${config.checkpoints.table}\n`,
  );
  return 0;
}

async function ddl(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      config: { type: 'string', short: 'c' },
      sink: { type: 'string' },
      table: { type: 'string' },
      database: { type: 'string' },
      'projection-start': { type: 'string' },
    },
    allowPositionals: false,
  });
  if (!values.config) {
    process.stderr.write('ddl: missing -c/--config FILE\n');
    return 2;
  }
  const { loadConfig } = await import('../config/load.js');
  const { createTableDdl } = await import('../sinks/s3-parquet/ddl.js');
  const config = loadConfig(values.config);
  const parquet = Object.entries(config.sinks).flatMap(([n, s]) =>
    s.type === 's3_parquet' ? [[n, s] as const] : [],
  );
  const name = values.sink ?? (parquet.length === 1 ? parquet[0]![0] : undefined);
  const sink = parquet.find(([n]) => n === name)?.[1];
  if (!sink) {
    process.stderr.write(
      `ddl: name an s3_parquet sink with --sink (${parquet.map(([n]) => n).join(', ') || 'none configured'})\n`,
    );
    return 2;
  }
  process.stdout.write(
    createTableDdl(sink, {
      table: values.table ?? name!,
      database: values.database,
      projectionStart: values['projection-start'],
    }),
  );
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'run':
        return await run(rest);
      case 'validate':
        return await validate(rest);
      case 'demo': {
        const { demoCommand } = await import('./demo.js');
        return await demoCommand(rest);
      }
      case 'ddl':
        return await ddl(rest);
      case 'config-docs': {
        const { configReference } = await import('../config/docs.js');
        process.stdout.write(configReference());
        return 0;
      }
      case 'inspect': {
        const { inspectCommand } = await import('./inspect.js');
        return await inspectCommand(rest);
      }
      case 'produce': {
        const { produceCommand } = await import('./produce.js');
        return await produceCommand(rest);
      }
      case 'redrive': {
        const { redriveCommand } = await import('./redrive.js');
        return await redriveCommand(rest);
      }
      case undefined:
      case '-h':
      case '--help':
      case 'help':
        process.stdout.write(USAGE);
        return command === undefined ? 2 : 0;
      default:
        process.stderr.write(`unknown command "${command}"\n\n${USAGE}`);
        return 2;
    }
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      return 1;
    }
    process.stderr.write(`${command}: ${(err as Error).stack ?? String(err)}\n`);
    return 1;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`${String(err)}\n`);
    process.exitCode = 1;
  },
);
