/**
 * The state of a local stack started by `ksw local up`, in `<dir>/state.json`: the emulators' PIDs and
 * endpoints and what was created, so that `ksw local down` (another process) stops them by PID and
 * `ksw local env` prints the environment again. Also what a config needs to point at the stack.
 */
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { stringify } from 'yaml';
import type { LocalStack } from './emulators.js';
import type { LocalResources } from './provision.js';

export interface LocalStackState {
  readonly startedAt: string;
  readonly dir: string;
  readonly foreground: boolean;
  readonly processes: ReadonlyArray<{ name: string; pid: number; endpoint: string }>;
  readonly aws: LocalStack['awsConfig'];
  readonly resources: LocalResources;
}

export const STATE_FILE = 'state.json';

export function stateOf(stack: LocalStack, dir: string, resources: LocalResources, foreground: boolean) {
  return {
    startedAt: new Date().toISOString(),
    dir,
    foreground,
    processes: [stack.kinesis, stack.s3, stack.dynamodb].map((e) => ({
      name: e.name,
      pid: e.pid,
      endpoint: e.endpoint,
    })),
    aws: stack.awsConfig,
    resources,
  } satisfies LocalStackState;
}

export function writeState(dir: string, state: LocalStackState): void {
  writeFileSync(path.join(dir, STATE_FILE), `${JSON.stringify(state, null, 2)}\n`);
}

export function readState(dir: string): LocalStackState | undefined {
  const file = path.join(dir, STATE_FILE);
  if (!existsSync(file)) return undefined;
  return JSON.parse(readFileSync(file, 'utf8')) as LocalStackState;
}

export function removeState(dir: string): void {
  rmSync(path.join(dir, STATE_FILE), { force: true });
}

/** The `aws:` section of a worker config pointing at the stack. */
export function awsYaml(state: LocalStackState): string {
  const { subscribeProtocol: _, ...aws } = state.aws;
  return stringify({ aws }, { flowCollectionPadding: true });
}

/**
 * The environment that points any config at the stack without editing it: the SDK's endpoint variables
 * (which ksw reads too, with path-style S3), s3rver's only credentials, the checksum mode s3rver needs, and
 * the names the shipped examples take from the environment.
 */
export function envLines(state: LocalStackState): string[] {
  const byName = (n: string) => state.processes.find((p) => p.name === n)?.endpoint ?? '';
  const kinesis = state.processes.find((p) => p.name === 'kinesalite' || p.name === 'kinesis-local');
  const vars: Array<[string, string]> = [
    ['AWS_REGION', state.aws.region],
    ['AWS_ENDPOINT_URL_KINESIS', kinesis?.endpoint ?? ''],
    ['AWS_ENDPOINT_URL_S3', byName('s3rver')],
    ['AWS_ENDPOINT_URL_DYNAMODB', byName('dynalite')],
    ['AWS_ACCESS_KEY_ID', state.aws.credentials.accessKeyId],
    ['AWS_SECRET_ACCESS_KEY', state.aws.credentials.secretAccessKey],
    ['AWS_REQUEST_CHECKSUM_CALCULATION', 'WHEN_REQUIRED'],
    ['AWS_RESPONSE_CHECKSUM_VALIDATION', 'WHEN_REQUIRED'],
  ];
  const stream = state.resources.streams[0];
  if (stream) vars.push(['STREAM_NAME', stream.name]);
  const bucket = state.resources.buckets[0];
  if (bucket) vars.push(['LAKE_BUCKET', bucket]);
  const table = state.resources.tables[0];
  if (table) vars.push(['LEASE_TABLE', table]);
  // examples/*.yaml listen on 0.0.0.0:9400 (for a scraper in a cluster); locally, loopback and any port.
  vars.push(['METRICS_HOST', '127.0.0.1'], ['METRICS_PORT', '0']);
  return vars.map(([k, v]) => `export ${k}=${v}`);
}

/** Alive, and not a zombie waiting for a parent (a reaper) that is not ours to reap it. */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return true;
  }
}

/** Whether `pid` is alive and (where /proc tells) still runs `name`'s script: a reused PID is left alone. */
export function isOurProcess(pid: number, name: string): boolean {
  if (!isAlive(pid)) return false;
  const cmdline = `/proc/${pid}/cmdline`;
  if (!existsSync(cmdline)) return true;
  const script = name === 'kinesis-local' ? 'kinesis-local' : name;
  return readFileSync(cmdline, 'utf8').includes(script);
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves when the process is gone. */
export async function stopPid(pid: number, graceMs = 3_000): Promise<void> {
  const alive = () => isAlive(pid);
  if (!alive()) return;
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + graceMs;
  while (alive() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  if (alive()) process.kill(pid, 'SIGKILL');
  for (let i = 0; i < 100 && alive(); i++) await new Promise((r) => setTimeout(r, 50));
}
