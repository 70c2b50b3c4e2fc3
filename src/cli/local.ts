/**
 * `ksw local up|down|status|env`: the embedded emulators (kinesalite, s3rver, dynalite on 127.0.0.1) as a
 * local stack that outlives the command, with a stream, buckets and lease tables created, and what points
 * any config at it (an `aws:` block, or the SDK's environment variables). `up --foreground` keeps them in
 * this process until Ctrl-C. `ksw demo` starts the same stack (startLocalStack + provision) for its run.
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { awsConfigSchema, createAwsClients } from '../core/aws.js';
import { startLocalStack } from '../local/emulators.js';
import { type LocalResources, provision } from '../local/provision.js';
import {
  awsYaml,
  envLines,
  isOurProcess,
  type LocalStackState,
  readState,
  removeState,
  stateOf,
  stopPid,
  writeState,
} from '../local/state.js';
import { parseCommandArgs, UsageError } from './args.js';

export const LOCAL_USAGE = `usage: ksw local up|down|status|env [options]

  up      start kinesalite, s3rver and dynalite on 127.0.0.1 (they keep running after the command),
          create the stream, buckets and lease table, print the aws: block and the environment
  down    stop the stack's processes (by the PIDs in DIR/state.json)
  status  print whether the stack is up, its endpoints and PIDs
  env     print the export lines again: eval "$(ksw local env)"

options:
  --dir DIR              state, data and logs (default .local/stack)
  --stream NAME[:SHARDS] a stream to create (repeatable; default spans:4)
  --bucket NAME          a bucket to create (repeatable; default lake)
  --table NAME           a lease table to create (repeatable; default spans-to-lake-leases)
  --kinesis E            kinesalite (default, fast) or kinesis-local (enhanced fan-out, ChildShards)
  --foreground           up: keep the emulators in this process, stop them on Ctrl-C/SIGTERM
`;

function resources(values: { stream?: string[]; bucket?: string[]; table?: string[] }): LocalResources {
  const streams = (values.stream?.length ? values.stream : ['spans:4']).map((spec) => {
    const [name, shards = '1'] = spec.split(':');
    const n = Number(shards);
    if (!name || !Number.isInteger(n) || n < 1 || n > 100)
      throw new UsageError('local', `--stream is NAME or NAME:SHARDS with 1 to 100 shards (got "${spec}")`);
    return { name, shards: n };
  });
  return {
    streams,
    buckets: values.bucket?.length ? values.bucket : ['lake'],
    tables: values.table?.length ? values.table : ['spans-to-lake-leases'],
  };
}

function describe(state: LocalStackState): string {
  const [kinesis, s3, dynamodb] = state.processes;
  const r = state.resources;
  return [
    `  ${kinesis?.name.padEnd(10)} ${kinesis?.endpoint}  pid ${kinesis?.pid}  streams ${r.streams.map((s) => `${s.name} (${s.shards} shards)`).join(', ')}`,
    `  ${s3?.name.padEnd(10)} ${s3?.endpoint}  pid ${s3?.pid}  buckets ${r.buckets.join(', ')}`,
    `  ${dynamodb?.name.padEnd(10)} ${dynamodb?.endpoint}  pid ${dynamodb?.pid}  tables ${r.tables.join(', ')}`,
  ].join('\n');
}

function printUp(state: LocalStackState, out: (s: string) => void): void {
  out(`local stack up (state, data and logs in ${state.dir})\n${describe(state)}\n\n`);
  out(`point a config at it with this aws: section (s3rver accepts only these credentials):\n\n`);
  out(`${awsYaml(state)}\n`);
  out(`or leave the config as it is and export (eval "$(ksw local env)"):\n\n`);
  out(`${envLines(state).join('\n')}\n\n`);
  out(
    state.foreground ? 'Ctrl-C stops the emulators\n' : `stop it with: ksw local down${dirArg(state.dir)}\n`,
  );
}

function dirArg(dir: string): string {
  return path.relative(process.cwd(), dir) === path.join('.local', 'stack') ? '' : ` --dir ${dir}`;
}

export async function localCommand(args: string[]): Promise<number> {
  const parsed = parseCommandArgs(
    'local',
    LOCAL_USAGE,
    args,
    {
      dir: { type: 'string', default: '.local/stack' },
      stream: { type: 'string', multiple: true },
      bucket: { type: 'string', multiple: true },
      table: { type: 'string', multiple: true },
      kinesis: { type: 'string', default: 'kinesalite' },
      foreground: { type: 'boolean', default: false },
    },
    { positionals: 1 },
  );
  if (!parsed) return 0;
  const { values } = parsed;
  const action = parsed.positionals[0];
  const dir = path.resolve(values.dir);
  const out = (s: string) => process.stdout.write(s);
  const existing = readState(dir);
  const alive = existing?.processes.filter((p) => isOurProcess(p.pid, p.name)) ?? [];
  switch (action) {
    case 'up': {
      if (values.kinesis !== 'kinesalite' && values.kinesis !== 'kinesis-local')
        throw new UsageError('local', `--kinesis is kinesalite or kinesis-local (got "${values.kinesis}")`);
      if (existing && alive.length > 0) {
        process.stderr.write(
          `local: a stack is already up in ${dir} (pids ${alive.map((p) => p.pid).join(', ')}); ksw local env prints its environment, ksw local down${dirArg(dir)} stops it\n`,
        );
        return 1;
      }
      const want = resources(values);
      mkdirSync(dir, { recursive: true });
      const stack = await startLocalStack({
        dataDir: dir,
        kinesis: values.kinesis,
        persistent: !values.foreground,
      });
      const aws = createAwsClients(awsConfigSchema.parse(stack.awsConfig));
      try {
        await provision(aws, want);
      } catch (err) {
        await stack.stop();
        throw err;
      } finally {
        aws.destroy();
      }
      const state = stateOf(stack, dir, want, values.foreground);
      writeState(dir, state);
      printUp(state, out);
      if (!values.foreground) return 0;
      await new Promise<void>((resolve) => {
        process.once('SIGINT', () => resolve());
        process.once('SIGTERM', () => resolve());
      });
      await stack.stop();
      removeState(dir);
      out('emulators stopped\n');
      return 0;
    }
    case 'down': {
      if (!existing) {
        out(`no local stack in ${dir}\n`);
        return 0;
      }
      await Promise.all(alive.map((p) => stopPid(p.pid)));
      removeState(dir);
      out(
        `local stack stopped (${alive.map((p) => `${p.name} ${p.pid}`).join(', ') || 'no process was running'}); data kept in ${dir}\n`,
      );
      return 0;
    }
    case 'status': {
      if (!existing) {
        out(`no local stack in ${dir} (ksw local up starts one)\n`);
        return 3;
      }
      const up = alive.length === existing.processes.length;
      out(
        `local stack ${up ? 'up' : `partly down (${alive.length} of ${existing.processes.length} running)`} since ${existing.startedAt}\n${describe(existing)}\n`,
      );
      return up ? 0 : 1;
    }
    case 'env': {
      if (!existing || alive.length === 0) {
        process.stderr.write(`local: no local stack is up in ${dir}; start one with ksw local up\n`);
        return 1;
      }
      out(`${envLines(existing).join('\n')}\n`);
      return 0;
    }
    default:
      throw new UsageError(
        'local',
        action ? `unknown action "${action}"` : 'name an action: up, down, status or env',
      );
  }
}
