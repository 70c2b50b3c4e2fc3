/**
 * SigV4 signing of the OpenSearch sink, without AWS: a local HTTP server captures what the client sends
 * with fixed credentials, and the test recomputes the AWS Signature Version 4 independently (node:crypto,
 * following the AWS documentation) and compares it with the one in the Authorization header. Covers
 * `es` (OpenSearch Service) and `aoss` (Serverless, which requires x-amz-content-sha256), session tokens,
 * the worker's credential chain (`aws.credentials` through the shared S3 client), and the DescribeDomain
 * endpoint lookup. No OpenSearch behaviour is claimed here: the server only records requests.
 */
import assert from 'node:assert/strict';
import { createHash, createHmac } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { Ack } from '../../src/core/ack.js';
import { awsConfigSchema, createAwsClients } from '../../src/core/aws.js';
import { openSearchSinkConfigSchema } from '../../src/sinks/opensearch/config.js';
import { lookupDomainEndpoint } from '../../src/sinks/opensearch/domain.js';
import { OpenSearchService } from '../../src/sinks/opensearch/service.js';
import { OpenSearchSink } from '../../src/sinks/opensearch/sink.js';
import { MemoryDeadLetterQueue, origin } from '../helpers/fakes.js';
import { silentLogger } from '../helpers/stack.js';

interface Captured {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

const CREDENTIALS = {
  accessKeyId: 'AKIDEXAMPLE',
  secretAccessKey: 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY',
  sessionToken: 'session-token-example',
};

function rfc3986(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function hmac(key: Buffer | string, data: string): Buffer {
  return createHmac('sha256', key).update(data, 'utf8').digest();
}

/** Recomputes the SigV4 signature of a captured request; returns it with the parsed Authorization. */
function verifySignature(req: Captured, secretAccessKey: string) {
  const auth = String(req.headers.authorization);
  const match =
    /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/([^/]+)\/([^/]+)\/aws4_request, SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$/.exec(
      auth,
    );
  assert.ok(match, `Authorization header: ${auth}`);
  const [, accessKeyId, date, region, service, signedHeaders, signature] = match;
  const amzDate = String(req.headers['x-amz-date']);
  assert.match(amzDate, /^\d{8}T\d{6}Z$/);
  assert.equal(amzDate.slice(0, 8), date);
  const url = new URL(req.url, 'http://placeholder');
  const canonicalQuery = [...url.searchParams.entries()]
    .map(([k, v]) => [rfc3986(k), rfc3986(v)])
    .sort(([a, x], [b, y]) => (a! < b! ? -1 : a! > b! ? 1 : x! < y! ? -1 : 1))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
  const names = signedHeaders!.split(';');
  assert.ok(names.includes('host') && names.includes('x-amz-date'), `signed headers: ${signedHeaders}`);
  const canonicalHeaders = names
    .map((n) => `${n}:${String(req.headers[n]).trim().replace(/\s+/g, ' ')}\n`)
    .join('');
  const payloadHash = createHash('sha256').update(req.body).digest('hex');
  const canonicalPath = url.pathname
    .split('/')
    .map((segment) => rfc3986(rfc3986(decodeURIComponent(segment))))
    .join('/');
  const canonicalRequest = [
    req.method,
    canonicalPath,
    canonicalQuery,
    canonicalHeaders,
    signedHeaders,
    payloadHash,
  ].join('\n');
  const scope = `${date}/${region}/${service}/aws4_request`;
  const stringToSign = [
    'AWS4-HMAC-SHA256',
    amzDate,
    scope,
    createHash('sha256').update(canonicalRequest).digest('hex'),
  ].join('\n');
  const key = hmac(hmac(hmac(hmac(`AWS4${secretAccessKey}`, date!), region!), service!), 'aws4_request');
  const expected = createHmac('sha256', key).update(stringToSign).digest('hex');
  return { accessKeyId, region, service, signedHeaders: names, signature, expected, payloadHash };
}

describe('SigV4 signing of OpenSearch requests', () => {
  let server: Server;
  let endpoint: string;
  const captured: Captured[] = [];
  let answer: (req: Captured) => { status: number; body: unknown } = () => ({ status: 200, body: {} });

  beforeAll(async () => {
    server = createServer(async (req, res) => {
      const parts: Buffer[] = [];
      for await (const p of req) parts.push(p as Buffer);
      const c: Captured = {
        method: req.method!,
        url: req.url!,
        headers: req.headers,
        body: Buffer.concat(parts),
      };
      captured.push(c);
      const a = answer(c);
      res.writeHead(a.status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(a.body));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve));
  });

  const identity = { region: async () => 'us-east-1', credentials: async () => CREDENTIALS };

  for (const service of ['es', 'aoss'] as const) {
    it(`signs bulk and template requests for ${service} with the credentials and region given`, async () => {
      captured.length = 0;
      answer = (req) =>
        req.url.startsWith('/_bulk')
          ? { status: 200, body: { errors: false, items: [{ create: { status: 201 } }] } }
          : { status: 200, body: { acknowledged: true } };
      const config = openSearchSinkConfigSchema.parse({
        type: 'opensearch',
        endpoint,
        index: 'traces',
        auth: { type: 'aws_sigv4', service, region: 'eu-west-1' },
        template: { kind: 'spans' },
      });
      const os = await OpenSearchService.connect(config, identity, silentLogger);
      const body = '{"create":{"_index":"traces","_id":"a b/ü"}}\n{"name":"x"}\n';
      const result = await os.bulk(body);
      assert.equal(result.kind, 'items');
      await os.bootstrap(
        'ksw-spans',
        { index_patterns: ['traces*'] },
        ['traces*'],
        new AbortController().signal,
        1_000,
      );
      await os.close();

      assert.equal(captured.length, 2);
      for (const req of captured) {
        const v = verifySignature(req, CREDENTIALS.secretAccessKey);
        assert.equal(v.signature, v.expected, `${req.method} ${req.url}: signature recomputed independently`);
        assert.equal(v.accessKeyId, 'AKIDEXAMPLE');
        assert.equal(v.region, 'eu-west-1', 'auth.region wins over the worker region');
        assert.equal(v.service, service);
        assert.equal(req.headers['x-amz-security-token'], CREDENTIALS.sessionToken);
        assert.ok(v.signedHeaders.includes('x-amz-security-token'));
        // Serverless rejects requests without the payload hash header; OpenSearch Service accepts it.
        assert.equal(req.headers['x-amz-content-sha256'], v.payloadHash);
      }
      assert.equal(captured[0]!.body.toString(), body, 'the signed body is the body sent');
      assert.equal(captured[1]!.method, 'PUT');
      assert.equal(new URL(captured[1]!.url, endpoint).pathname, '/_index_template/ksw-spans');

      // A tampered body no longer matches the signature: the check above can fail.
      const tampered = { ...captured[0]!, body: Buffer.from(`${body} `) };
      tampered.headers = {
        ...tampered.headers,
        'x-amz-content-sha256': createHash('sha256').update(tampered.body).digest('hex'),
      };
      const t = verifySignature(tampered, CREDENTIALS.secretAccessKey);
      assert.notEqual(t.signature, t.expected);
    });
  }

  it("the sink signs with the worker's credential chain and region (aws.credentials, aws.region)", async () => {
    captured.length = 0;
    answer = () => ({ status: 200, body: { errors: false, items: [{ create: { status: 201 } }] } });
    const aws = createAwsClients(
      awsConfigSchema.parse({
        region: 'ap-southeast-2',
        credentials: { accessKeyId: 'AKIDWORKER', secretAccessKey: 'worker-secret' },
      }),
    );
    const dlq = new MemoryDeadLetterQueue();
    const sink = new OpenSearchSink(
      'search',
      openSearchSinkConfigSchema.parse({
        type: 'opensearch',
        endpoint,
        index: 'traces',
        auth: { type: 'aws_sigv4' },
      }),
      { logger: silentLogger, metrics: new Registry(), aws, dlq },
    );
    let acked = false;
    await sink.write([
      {
        origin: origin('1'),
        index: 0,
        value: { a: 1 },
        raw: Buffer.from('{"a":1}'),
        ack: new Ack(() => {
          acked = true;
        }),
      },
    ]);
    await sink.flush();
    await sink.close();
    aws.destroy();
    assert.ok(acked);
    const v = verifySignature(captured[0]!, 'worker-secret');
    assert.equal(v.signature, v.expected);
    assert.equal(v.accessKeyId, 'AKIDWORKER');
    assert.equal(v.region, 'ap-southeast-2');
    assert.equal(v.service, 'es');
    assert.equal(captured[0]!.headers['x-amz-security-token'], undefined);
  });

  it('looks a domain endpoint up with a DescribeDomain call signed for es', async () => {
    captured.length = 0;
    answer = () => ({
      status: 200,
      body: {
        DomainStatus: { DomainName: 'traces', Endpoint: 'search-traces-abc123.eu-west-1.es.amazonaws.com' },
      },
    });
    const found = await lookupDomainEndpoint('traces', 'eu-west-1', async () => CREDENTIALS, endpoint);
    assert.equal(found, 'https://search-traces-abc123.eu-west-1.es.amazonaws.com');
    assert.equal(captured[0]!.method, 'GET');
    assert.equal(new URL(captured[0]!.url, endpoint).pathname, '/2021-01-01/opensearch/domain/traces');
    const v = verifySignature(captured[0]!, CREDENTIALS.secretAccessKey);
    assert.equal(v.signature, v.expected);
    assert.equal(v.service, 'es');
    assert.equal(v.region, 'eu-west-1');

    // The sink's connect path: domainName instead of endpoint.
    const os = await OpenSearchService.connect(
      openSearchSinkConfigSchema.parse({
        type: 'opensearch',
        domainName: 'traces',
        index: 'traces',
        auth: { type: 'aws_sigv4', service: 'es' },
      }),
      { region: async () => 'eu-west-1', credentials: async () => CREDENTIALS },
      silentLogger,
      { domainLookupEndpoint: endpoint },
    );
    assert.equal(os.endpoint, 'https://search-traces-abc123.eu-west-1.es.amazonaws.com');
    await os.close();

    answer = () => ({
      status: 200,
      body: {
        DomainStatus: { DomainName: 'vpc', Endpoints: { vpc: 'vpc-traces-x.eu-west-1.es.amazonaws.com' } },
      },
    });
    assert.equal(
      await lookupDomainEndpoint('vpc', 'eu-west-1', async () => CREDENTIALS, endpoint),
      'https://vpc-traces-x.eu-west-1.es.amazonaws.com',
    );
  });
});
