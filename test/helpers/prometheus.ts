/**
 * A real Prometheus server for the ops tier (binary fetched by scripts/ops/run.sh): scrapes one target every
 * second, listens on 127.0.0.1 only and is stopped by PID.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { freePort } from '../../src/local/emulators.js';
import { waitFor } from './stack.js';

export interface QueryResult {
  status: string;
  data: { result: Array<{ metric: Record<string, string>; value: [number, string] }> };
  error?: string;
}

export interface PrometheusServer {
  readonly url: string;
  query(expr: string): Promise<QueryResult>;
  stop(): Promise<void>;
}

export async function startPrometheus(opts: {
  /** Folder holding the `prometheus` binary. */
  readonly bin: string;
  /** Working folder for its config and TSDB. */
  readonly dir: string;
  readonly job: string;
  /** host:port to scrape. */
  readonly target: string;
  readonly ruleFiles?: readonly string[];
  readonly exemplars?: boolean;
}): Promise<PrometheusServer> {
  mkdirSync(path.join(opts.dir, 'data'), { recursive: true });
  const port = await freePort();
  const config = path.join(opts.dir, 'prometheus.yml');
  writeFileSync(
    config,
    [
      'global: { scrape_interval: 1s, evaluation_interval: 1s }',
      ...(opts.ruleFiles?.length ? [`rule_files: [${opts.ruleFiles.map((f) => `"${f}"`).join(', ')}]`] : []),
      'scrape_configs:',
      `  - job_name: ${opts.job}`,
      `    static_configs: [{ targets: ["${opts.target}"] }]`,
    ].join('\n'),
  );
  const child: ChildProcess = spawn(
    path.join(opts.bin, 'prometheus'),
    [
      `--config.file=${config}`,
      `--storage.tsdb.path=${path.join(opts.dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      ...(opts.exemplars ? ['--enable-feature=exemplar-storage'] : []),
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let log = '';
  child.stderr?.on('data', (d) => {
    log = (log + String(d)).slice(-4000);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
  };
  try {
    await waitFor(
      async () => (await fetch(`${url}/-/ready`).catch(() => undefined))?.ok === true,
      30_000,
      'Prometheus ready',
    );
  } catch (err) {
    await stop();
    throw new Error(`${(err as Error).message}; its log: ${log}`);
  }
  return {
    url,
    async query(expr) {
      const res = await fetch(`${url}/api/v1/query?query=${encodeURIComponent(expr)}`);
      return (await res.json()) as QueryResult;
    },
    stop,
  };
}

/** The problems `promtool check metrics` reports for an exposition (none is tolerated). */
export function promtoolProblems(bin: string, exposition: string): string[] {
  const promtool = path.join(bin, 'promtool');
  // A missing binary would make execFileSync throw without output, which would read as "no problems".
  if (!existsSync(promtool)) throw new Error(`promtool not found in ${bin} (scripts/ops/run.sh fetches it)`);
  let output = '';
  try {
    execFileSync(promtool, ['check', 'metrics'], {
      input: exposition,
      encoding: 'utf8',
      stdio: ['pipe', 'pipe', 'pipe'],
    });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    output = `${e.stdout ?? ''}${e.stderr ?? ''}`;
  }
  return output.split('\n').filter((l) => l.trim() !== '');
}
