/**
 * The operations port: /metrics (Prometheus text format by default; OpenMetrics, with exemplars, when the
 * scraper's Accept header prefers it, as Prometheus does), /healthz (the process is alive and its event
 * loop turns) and /readyz (the worker is ready; when not, the body says why). Kept apart from any data path.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { OPENMETRICS_CONTENT_TYPE, openMetricsText, wantsOpenMetrics } from './openmetrics.js';

export interface OpsServer {
  readonly address: { host: string; port: number };
  close(): Promise<void>;
}

export async function startOpsServer(opts: {
  host: string;
  port: number;
  registry: Registry;
  ready: () => boolean;
  /** Why the worker is not ready, shown in the 503 body of /readyz. */
  notReadyReason?: () => string | undefined;
}): Promise<OpsServer> {
  const server = http.createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405).end();
      return;
    }
    if (url === '/metrics') {
      const openMetrics = wantsOpenMetrics(req.headers.accept);
      const body = openMetrics ? openMetricsText(opts.registry) : opts.registry.metrics();
      body.then(
        (text) =>
          res
            .writeHead(200, {
              'content-type': openMetrics ? OPENMETRICS_CONTENT_TYPE : opts.registry.contentType,
              vary: 'Accept',
            })
            .end(text),
        (err: Error) =>
          res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics failed: ${err.message}\n`),
      );
    } else if (url === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    } else if (url === '/readyz') {
      const ready = opts.ready();
      res
        .writeHead(ready ? 200 : 503, { 'content-type': 'text/plain' })
        .end(ready ? 'ready\n' : `not ready: ${opts.notReadyReason?.() ?? 'not started'}\n`);
    } else {
      res
        .writeHead(404, { 'content-type': 'text/plain' })
        .end('not found: try /metrics, /healthz or /readyz\n');
    }
  });
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => resolve());
  });
  const addr = server.address() as AddressInfo;
  return {
    address: { host: addr.address, port: addr.port },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
