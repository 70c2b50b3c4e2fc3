/**
 * The subcommands of `ksw` and the dispatcher: `ksw <command> --help` prints a command's usage; `--debug`
 * anywhere prints stack traces. User errors print one line with the fix (src/cli/errors.ts).
 */
import { parseCommandArgs, required, UsageError } from './args.js';
import { reportError } from './errors.js';

interface Command {
  /** One line for `ksw --help`. */
  readonly summary: string;
  readonly usage: string;
  readonly run: (args: string[]) => Promise<number>;
}

const RUN_USAGE = `usage: ksw run -c FILE [--log-format json|pretty]

Runs the worker until SIGTERM/SIGINT, then stops fetching, flushes the sinks, checkpoints, releases its
leases and exits 0 (a second signal exits at once; unacked records are read again by the next owner).

  -c, --config FILE      the worker config (YAML; see docs/configuration.md)
  --log-format F         json (default when stdout is not a terminal) or pretty
  --debug                print stack traces of errors
`;

const VALIDATE_USAGE = `usage: ksw validate -c FILE [--strict]

Checks a config without connecting anywhere: every problem with its field path, position and a fix,
then warnings for settings that validate but cannot do what was meant. Exit 0 when valid.

  -c, --config FILE      the worker config
  --strict               exit 1 when there are warnings
`;

const DDL_USAGE = `usage: ksw ddl -c FILE [--sink NAME] [--table T] [--database D] [--projection-start YYYY-MM-DD]

Prints the Athena/Glue CREATE EXTERNAL TABLE (with partition projection) for an s3_parquet sink.

  -c, --config FILE      the worker config
  --sink NAME            the s3_parquet sink (may be left out when there is only one)
  --table T              table name (default: the sink's name)
  --database D           database to qualify the table with
  --projection-start D   first day of the date partition projection
`;

const CONFIG_DOCS_USAGE = `usage: ksw config-docs

Prints the configuration reference (Markdown, the content of docs/config.md) generated from the schemas.
`;

async function run(args: string[]): Promise<number> {
  const parsed = parseCommandArgs('run', RUN_USAGE, args, {
    config: { type: 'string', short: 'c' },
    'log-format': { type: 'string' },
  });
  if (!parsed) return 0;
  const file = required('run', parsed.values.config, '-c/--config FILE');
  const { loadConfigSource } = await import('../config/load.js');
  const { Worker, StartAbortedError } = await import('../runtime/worker.js');
  const { createLogger } = await import('../runtime/logger.js');
  const format = parsed.values['log-format'];
  if (format !== undefined && format !== 'json' && format !== 'pretty' && format !== 'auto')
    throw new UsageError('run', `--log-format is json, pretty or auto (got "${format}")`);
  const { semanticWarnings } = await import('../config/warnings.js');
  const { config, locate } = loadConfigSource(file);
  const logger = createLogger(config.log.level, config.app.name, undefined, format ?? config.log.format);
  for (const w of semanticWarnings(config))
    logger.warn({ field: w.path, at: locate(w.path) }, `config: ${w.message}`);
  // The handlers come before start: taking leases (and sinks opening shards) happens inside start, and a
  // SIGTERM arriving then must stop the start-up within shutdown.deadlineMs (Worker.start's signal), be
  // logged, and not end in the default action (killed by the signal).
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
  const stopRequested = new Promise<void>((resolve) => {
    if (stop.signal.aborted) resolve();
    else stop.signal.addEventListener('abort', () => resolve(), { once: true });
  });
  if (Number(process.versions.node.split('.')[0]) < 22)
    logger.warn(
      { node: process.versions.node },
      'Node.js 22 or later is recommended: AWS SDK releases after early January 2027 need it (the pinned SDK works on 20)',
    );
  let worker: Awaited<ReturnType<typeof Worker.start>>;
  try {
    worker = await Worker.start(config, { logger, signal: stop.signal });
  } catch (err) {
    if (err instanceof StartAbortedError) process.exit(0);
    throw err;
  }
  // File consumers end the run themselves once their input is consumed and acked.
  const finished = await Promise.race([stopRequested.then(() => undefined), worker.finished]);
  const stopped = await worker.stop();
  if (finished && !(stopped.drained && finished.every((r) => r.drained && r.error === undefined)))
    process.exit(1);
  // stop() has flushed and checkpointed what it could within shutdown.deadlineMs; a sink still retrying
  // an upload past that must not keep the process alive (its records are unacked and will be read again).
  process.exit(0);
}

async function validate(args: string[]): Promise<number> {
  const parsed = parseCommandArgs('validate', VALIDATE_USAGE, args, {
    config: { type: 'string', short: 'c' },
    strict: { type: 'boolean', default: false },
  });
  if (!parsed) return 0;
  const file = required('validate', parsed.values.config, '-c/--config FILE');
  const { loadConfigSource } = await import('../config/load.js');
  const { semanticWarnings } = await import('../config/warnings.js');
  const { config, locate } = loadConfigSource(file);
  const warnings = semanticWarnings(config);
  for (const w of warnings)
    process.stderr.write(`${locate(w.path) ?? file}: warning: ${w.path}: ${w.message}\n`);
  const sinks = Object.entries(config.sinks)
    .map(([name, s]) => `${name} (${s.type})`)
    .join(', ');
  process.stdout.write(
    `${file}: OK${warnings.length ? ` (${warnings.length} warning${warnings.length > 1 ? 's' : ''})` : ''}\n  consumers: ${config.consumers.map((c) => `${c.stream} (${c.type}${'startPosition' in c ? `, ${c.startPosition}` : ''})`).join(', ')}\n  sinks: ${sinks}\n  lease table: ${config.checkpoints.table}\n`,
  );
  return parsed.values.strict && warnings.length > 0 ? 1 : 0;
}

async function ddl(args: string[]): Promise<number> {
  const parsed = parseCommandArgs('ddl', DDL_USAGE, args, {
    config: { type: 'string', short: 'c' },
    sink: { type: 'string' },
    table: { type: 'string' },
    database: { type: 'string' },
    'projection-start': { type: 'string' },
  });
  if (!parsed) return 0;
  const { values } = parsed;
  const file = required('ddl', values.config, '-c/--config FILE');
  const { loadConfig } = await import('../config/load.js');
  const { createTableDdl } = await import('../sinks/s3-parquet/ddl.js');
  const config = loadConfig(file);
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

const CONFIG_SCHEMA_USAGE = `usage: ksw config-schema [--tests] [-o FILE]

Prints the JSON Schema of the worker config (or with --tests, of \`ksw test\` files) for editor completion.
In a YAML file, the first line \`# yaml-language-server: $schema=PATH\` makes VS Code (YAML extension),
Neovim and others use it. The committed copies are docs/schema/*.schema.json (npm run docs:schema).

  --tests        the schema of pipeline test files instead
  -o, --output F write it to F instead of stdout
`;

async function configSchema(args: string[]): Promise<number> {
  const parsed = parseCommandArgs('config-schema', CONFIG_SCHEMA_USAGE, args, {
    tests: { type: 'boolean', default: false },
    output: { type: 'string', short: 'o' },
  });
  if (!parsed) return 0;
  const { configJsonSchema, testFileJsonSchema } = await import('../config/json-schema.js');
  const text = `${JSON.stringify(parsed.values.tests ? testFileJsonSchema() : configJsonSchema(), null, 2)}\n`;
  if (parsed.values.output) {
    const { writeFileSync } = await import('node:fs');
    writeFileSync(parsed.values.output, text);
    process.stderr.write(`wrote ${parsed.values.output}\n`);
  } else process.stdout.write(text);
  return 0;
}

async function configDocs(args: string[]): Promise<number> {
  if (!parseCommandArgs('config-docs', CONFIG_DOCS_USAGE, args, {})) return 0;
  const { configReference } = await import('../config/docs.js');
  process.stdout.write(configReference());
  return 0;
}

/** Loads a subcommand module only when it runs (the worker does not load DuckDB for `validate`). */
function lazy(load: () => Promise<(args: string[]) => Promise<number>>) {
  return async (args: string[]) => (await load())(args);
}

export const COMMANDS: Record<string, Command> = {
  run: { summary: 'run -c FILE          run the worker until SIGTERM/SIGINT', usage: RUN_USAGE, run },
  validate: {
    summary: 'validate -c FILE     check a config: problems with positions and fixes, warnings',
    usage: VALIDATE_USAGE,
    run: validate,
  },
  demo: {
    summary: 'demo                 local emulators, synthetic spans, the worker, a verified summary',
    usage: '',
    run: lazy(async () => (await import('./demo.js')).demoCommand),
  },
  produce: {
    summary: 'produce --stream S   put records from a file or stdin (large ones via S3 or chunks)',
    usage: '',
    run: lazy(async () => (await import('./produce.js')).produceCommand),
  },
  inspect: {
    summary: 'inspect -c FILE      the lease table: owner, checkpoint, lag per shard',
    usage: '',
    run: lazy(async () => (await import('./inspect.js')).inspectCommand),
  },
  local: {
    summary: 'local up|down        the emulators as a local stack, and the environment for any config',
    usage: '',
    run: lazy(async () => (await import('./local.js')).localCommand),
  },
  test: {
    summary: 'test FILE...         pipeline tests in YAML: input records -> events per sink, dead letters',
    usage: '',
    run: lazy(async () => (await import('./test.js')).testCommand),
  },
  sql: {
    summary: 'sql "SQL"            query Parquet output (or anything) with the embedded DuckDB',
    usage: '',
    run: lazy(async () => (await import('./sql.js')).sqlCommand),
  },
  ddl: {
    summary: 'ddl -c FILE          the Athena/Glue CREATE EXTERNAL TABLE of a Parquet sink',
    usage: DDL_USAGE,
    run: ddl,
  },
  redrive: {
    summary: 'redrive -c FILE --sink NAME   replay dead letters from the S3 DLQ into a sink',
    usage: '',
    run: lazy(async () => (await import('./redrive.js')).redriveCommand),
  },
  'config-docs': {
    summary: 'config-docs          print the configuration reference (docs/config.md)',
    usage: CONFIG_DOCS_USAGE,
    run: configDocs,
  },
  'config-schema': {
    summary: 'config-schema        print the JSON Schema of the config, for editor completion',
    usage: CONFIG_SCHEMA_USAGE,
    run: configSchema,
  },
};

function usage(): string {
  const lines = Object.values(COMMANDS).map((c) => `  ${c.summary}`);
  return `usage: ksw <command> [options]    (ksw <command> --help for a command's options)

commands:
${lines.join('\n')}

--debug (any command) prints stack traces. Documentation: docs/getting-started.md
`;
}

export async function main(argv: string[]): Promise<number> {
  // The AWS SDK prints a 9-line warning on Node < 22 on every command (its releases after early January
  // 2027 need Node 22; the pinned versions work on 20). `ksw run` logs one line about it instead.
  if (Number(process.versions.node.split('.')[0]) < 22)
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const debug = argv.includes('--debug');
  const [command, ...rest] = argv.filter((a) => a !== '--debug');
  if (command === undefined || command === '-h' || command === '--help' || command === 'help') {
    process.stdout.write(usage());
    return command === undefined ? 2 : 0;
  }
  const cmd = Object.hasOwn(COMMANDS, command) ? COMMANDS[command] : undefined;
  if (!cmd) {
    process.stderr.write(`ksw: unknown command "${command}"; see ksw --help\n`);
    return 2;
  }
  try {
    return await cmd.run(rest);
  } catch (err) {
    const report = reportError(command, err, debug);
    process.stderr.write(`${report.text}\n`);
    return report.exitCode;
  }
}
