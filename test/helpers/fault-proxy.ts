/**
 * A fault-injecting HTTP proxy for tests: it forwards requests to a real peer (an emulator, OpenSearch)
 * and, when a rule matches, answers with an error status, answers late, or resets the connection
 * instead. Listens on 127.0.0.1 only. Counts what it injected so tests can compare with the worker's
 * metrics.
 */
import { createServer, type IncomingMessage, request, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { gunzipSync } from 'node:zlib';

export type Fault =
  | { readonly kind: 'status'; readonly status: number; readonly body: string; readonly contentType?: string }
  | { readonly kind: 'delay'; readonly ms: number }
  | { readonly kind: 'reset' }
  /**
   * Forwards the request to the real peer, then rewrites its answer (e.g. marks some items of a real
   * OpenSearch bulk response as rejected: a partial failure of a request the node really processed).
   */
  | { readonly kind: 'rewrite'; rewrite(status: number, body: Buffer): { status: number; body: Buffer } };

export interface FaultRule {
  readonly name: string;
  /** Which requests the rule applies to: method, path and body (buffered). */
  matches(req: { method: string; url: string; headers: IncomingMessage['headers']; body: Buffer }): boolean;
  /** Fraction of matching requests that get the fault, 0..1. */
  readonly rate: number;
  readonly fault: Fault;
}

/** Kinesis and DynamoDB speak JSON with the operation in X-Amz-Target. */
export function amzTarget(operation: string): FaultRule['matches'] {
  return (req) => String(req.headers['x-amz-target'] ?? '').endsWith(`.${operation}`);
}

export function awsJsonError(type: string, message: string, status = 400): Fault {
  return {
    kind: 'status',
    status,
    contentType: 'application/x-amz-json-1.1',
    body: JSON.stringify({ __type: type, message }),
  };
}

export function s3XmlError(code: string, message: string, status: number): Fault {
  return {
    kind: 'status',
    status,
    contentType: 'application/xml',
    body: `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>${message}</Message><RequestId>fault</RequestId></Error>`,
  };
}

/** OpenSearch `_bulk` requests. */
export function openSearchBulk(): FaultRule['matches'] {
  return (req) => req.method === 'POST' && /^\/(?:[^/]+\/)?_bulk(?:\?|$)/.test(req.url);
}

/** An OpenSearch error answer for a whole request (429 storm, 503...). */
export function openSearchError(status: number, type: string, reason: string): Fault {
  return {
    kind: 'status',
    status,
    contentType: 'application/json',
    body: JSON.stringify({ error: { root_cause: [{ type, reason }], type, reason }, status }),
  };
}

/**
 * Partial bulk failure: the real node processed the request; the answer says that the items `pick`
 * chooses were rejected with `status`/`type` (what a node under write-queue pressure answers).
 */
export function rejectBulkItems(
  pick: (index: number) => boolean,
  status = 429,
  type = 'es_rejected_execution_exception',
): Fault {
  return {
    kind: 'rewrite',
    rewrite(upstreamStatus, body) {
      if (upstreamStatus !== 200) return { status: upstreamStatus, body };
      const parsed = JSON.parse(body.toString('utf8')) as {
        errors?: boolean;
        items?: Array<Record<string, Record<string, unknown>>>;
      };
      let changed = false;
      (parsed.items ?? []).forEach((item, i) => {
        if (!pick(i)) return;
        const result = Object.values(item)[0]!;
        result.status = status;
        result.error = { type, reason: `injected: rejected execution of item ${i}` };
        changed = true;
      });
      if (changed) parsed.errors = true;
      return { status: 200, body: Buffer.from(JSON.stringify(parsed)) };
    },
  };
}

/**
 * Watches forwarded traffic without changing it: `request` is called when a matching request arrives,
 * `response` when the peer's whole answer has been received (body decompressed if it was gzipped).
 */
export interface Observer {
  matches(req: { method: string; url: string; headers: IncomingMessage['headers']; body: Buffer }): boolean;
  request?(req: { method: string; url: string; body: Buffer; arrivedAt: number; startedAt: number }): void;
  response?(
    req: { method: string; url: string; body: Buffer; arrivedAt: number; startedAt: number },
    status: number,
    body: Buffer,
  ): void;
}

/** A request as it arrived at the proxy (whether it was then forwarded, delayed or answered with a fault). */
export interface Arrival {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingMessage['headers'];
  readonly body: Buffer;
  /** Date.now() when the whole request had arrived. */
  readonly arrivedAt: number;
  /** Date.now() when the request began to arrive (its headers): when the client sent it. */
  readonly startedAt: number;
  /** The fault rule that matched, if any. */
  readonly fault: string | undefined;
}

export class FaultProxy {
  private rules: FaultRule[] = [];
  private observers: Observer[] = [];
  private arrivalWatchers: Array<(arrival: Arrival) => void> = [];
  readonly injected = new Map<string, number>();
  forwarded = 0;
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    readonly endpoint: string,
  ) {}

  /** Starts a proxy in front of `target` (e.g. http://127.0.0.1:4567). */
  static async start(target: string, random: () => number = Math.random): Promise<FaultProxy> {
    const upstream = new URL(target);
    let proxy: FaultProxy | undefined;
    const server = createServer((req, res) => {
      void proxy!.handle(req, res, upstream, random);
    });
    server.on('connection', (s) => {
      proxy?.sockets.add(s);
      s.on('close', () => proxy?.sockets.delete(s));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    proxy = new FaultProxy(server, `http://127.0.0.1:${port}`);
    return proxy;
  }

  setRules(rules: FaultRule[]): void {
    this.rules = rules;
  }

  clear(): void {
    this.rules = [];
  }

  /** Adds an observer of forwarded requests (faults answered by the proxy itself are not forwarded). */
  observe(observer: Observer): void {
    this.observers.push(observer);
  }

  /** Sees every request when it arrives, before any fault (a write a worker sent, whatever became of it). */
  onArrival(watch: (arrival: Arrival) => void): void {
    this.arrivalWatchers.push(watch);
  }

  count(name: string): number {
    return this.injected.get(name) ?? 0;
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private async handle(
    req: IncomingMessage,
    res: ServerResponse,
    upstream: URL,
    random: () => number,
  ): Promise<void> {
    const startedAt = Date.now();
    const parts: Buffer[] = [];
    for await (const part of req) parts.push(part as Buffer);
    const body = Buffer.concat(parts);
    const arrivedAt = Date.now();
    const rule = this.rules.find(
      (r) =>
        r.matches({ method: req.method ?? 'GET', url: req.url ?? '/', headers: req.headers, body }) &&
        random() < r.rate,
    );
    for (const watch of this.arrivalWatchers) {
      watch({
        method: req.method ?? 'GET',
        url: req.url ?? '/',
        headers: req.headers,
        body,
        arrivedAt,
        startedAt,
        fault: rule?.name,
      });
    }
    if (rule) {
      this.injected.set(rule.name, (this.injected.get(rule.name) ?? 0) + 1);
      const f = rule.fault;
      if (f.kind === 'reset') {
        req.socket.destroy();
        return;
      }
      if (f.kind === 'status') {
        res.writeHead(f.status, {
          'content-type': f.contentType ?? 'text/plain',
          'x-amzn-requestid': 'fault',
        });
        res.end(f.body);
        return;
      }
      if (f.kind === 'delay') await new Promise((r) => setTimeout(r, f.ms));
    }
    this.forwarded += 1;
    const seen = {
      method: req.method ?? 'GET',
      url: req.url ?? '/',
      headers: req.headers,
      body,
      arrivedAt,
      startedAt,
    };
    const watching = this.observers.filter((o) => o.matches(seen));
    for (const o of watching) o.request?.(seen);
    const observed =
      watching.length === 0
        ? undefined
        : (status: number, answer: Buffer, encoding: unknown) => {
            const plain = encoding === 'gzip' ? gunzipSync(answer) : answer;
            for (const o of watching) o.response?.(seen, status, plain);
          };
    const rewrite = rule?.fault.kind === 'rewrite' ? rule.fault.rewrite : undefined;
    const out = request(
      {
        hostname: upstream.hostname,
        port: upstream.port,
        method: req.method,
        path: req.url,
        // The Host header is part of the SigV4 signature: forward it unchanged.
        headers: req.headers,
      },
      (up) => {
        if (!rewrite && !observed) {
          res.writeHead(up.statusCode ?? 502, up.headers);
          up.pipe(res);
          return;
        }
        if (!rewrite) {
          // Observed: passed through unchanged, and handed to the observers once complete.
          res.writeHead(up.statusCode ?? 502, up.headers);
          const chunks: Buffer[] = [];
          up.on('data', (c: Buffer) => {
            chunks.push(c);
            res.write(c);
          });
          up.on('end', () => {
            res.end();
            observed!(up.statusCode ?? 502, Buffer.concat(chunks), up.headers['content-encoding']);
          });
          return;
        }
        const chunks: Buffer[] = [];
        up.on('data', (c: Buffer) => chunks.push(c));
        up.on('end', () => {
          const out = rewrite(up.statusCode ?? 502, Buffer.concat(chunks));
          const headers = { ...up.headers, 'content-length': String(out.body.byteLength) };
          delete headers['transfer-encoding'];
          delete headers['content-encoding'];
          res.writeHead(out.status, headers);
          res.end(out.body);
          observed?.(out.status, out.body, undefined);
        });
      },
    );
    out.on('error', () => {
      if (!res.headersSent) res.writeHead(502);
      res.end();
    });
    out.end(body);
  }
}
