/**
 * `ksw test FILE...`: runs the pipeline tests declared in YAML files (src/runtime/pipeline-test.ts) and
 * exits 1 when any fails, for CI. `--show` prints what each sink received and the dead letters.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parseDocument, stringify } from 'yaml';
import { ConfigError } from '../config/errors.js';
import { loadConfig } from '../config/load.js';
import { pipelineTestFileSchema, runPipelineTest } from '../runtime/pipeline-test.js';
import { parseCommandArgs, UsageError } from './args.js';

export const TEST_USAGE = `usage: ksw test FILE... [--show] [--only NAME]

Runs pipeline tests declared in YAML: input records through the real chain of a config (decoder,
processors, routing) into capturing sinks, then checks the events per sink and the dead letters.
No Kinesis, S3 or OpenSearch is used. Exit 1 when a test fails. Format: docs/testing-pipelines.md

  --show         print the events each sink received and the dead letters of every test
  --only NAME    run only the tests whose name contains NAME
`;

export async function testCommand(args: string[]): Promise<number> {
  const parsed = parseCommandArgs(
    'test',
    TEST_USAGE,
    args,
    { show: { type: 'boolean', default: false }, only: { type: 'string' } },
    { positionals: Number.POSITIVE_INFINITY },
  );
  if (!parsed) return 0;
  const files = parsed.positionals;
  if (files.length === 0)
    throw new UsageError('test', 'name a tests file, e.g. ksw test examples/traces.test.yaml');
  const out = (s = '') => process.stdout.write(`${s}\n`);
  let passed = 0;
  let failed = 0;
  for (const file of files) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      throw new ConfigError(file, [
        {
          path: '',
          message: `cannot read the tests file: ${e.code === 'ENOENT' ? 'no such file; check the path' : e.message}`,
        },
      ]);
    }
    const doc = parseDocument(text, { prettyErrors: true });
    if (doc.errors.length > 0)
      throw new ConfigError(
        file,
        doc.errors.map((e) => ({ path: '', message: `YAML syntax error: ${e.message.split('\n')[0]}` })),
      );
    const spec = pipelineTestFileSchema.safeParse(doc.toJS());
    if (!spec.success)
      throw new ConfigError(
        file,
        spec.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message })),
      );
    const configFile = path.relative(process.cwd(), path.resolve(path.dirname(file), spec.data.config));
    const env = {
      ...process.env,
      ...Object.fromEntries(Object.entries(spec.data.env).map(([k, v]) => [k, String(v)])),
    };
    const config = loadConfig(configFile, env);
    out(`${file} (config ${configFile})`);
    for (const test of spec.data.tests) {
      if (parsed.values.only !== undefined && !test.name.includes(parsed.values.only)) continue;
      const outcome = await runPipelineTest(config, test);
      const counts = Object.entries(outcome.events)
        .map(([sink, events]) => `${sink} ${events.length}`)
        .join(', ');
      const summary = `(${counts}; dead letters ${outcome.deadLetters.length})`;
      if (outcome.failures.length === 0) {
        passed += 1;
        out(`  ok    ${test.name} ${summary}`);
      } else {
        failed += 1;
        out(`  FAIL  ${test.name} ${summary}`);
        for (const f of outcome.failures) out(`        - ${f}`);
      }
      if (parsed.values.show)
        out(
          stringify({ sinks: outcome.events, deadLetters: outcome.deadLetters })
            .replace(/^/gm, '        ')
            .trimEnd(),
        );
    }
  }
  out(`${passed} passed, ${failed} failed`);
  return failed > 0 ? 1 : 0;
}
