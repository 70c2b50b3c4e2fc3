import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { KinesisClient, type KinesisClientConfig } from '@aws-sdk/client-kinesis';
import { S3Client } from '@aws-sdk/client-s3';
import { NodeHttp2Handler, NodeHttpHandler } from '@smithy/node-http-handler';
import type { Registry } from 'prom-client';
import { z } from 'zod';
import { counter } from '../metrics/registry.js';

export const awsConfigSchema = z
  .object({
    region: z
      .string()
      .min(1)
      .default('us-east-1')
      .describe('AWS region of the stream, table and buckets. Falls back to us-east-1 when unset.'),
    endpoints: z
      .object({
        kinesis: z
          .url()
          .optional()
          .describe('Kinesis endpoint override, e.g. http://127.0.0.1:4567 for an emulator.'),
        s3: z.url().optional().describe('S3 endpoint override (path-style addressing is used when set).'),
        dynamodb: z.url().optional().describe('DynamoDB endpoint override.'),
      })
      .default({})
      .describe('Endpoint overrides for local emulators or VPC endpoints. Leave unset on AWS.'),
    credentials: z
      .object({
        accessKeyId: z.string().min(1),
        secretAccessKey: z.string().min(1),
        sessionToken: z.string().optional(),
      })
      .optional()
      .describe(
        'Static credentials, for emulators only. On AWS leave unset: the default provider chain (IRSA, ECS task role, env) is used.',
      ),
    s3ChecksumMode: z
      .enum(['when_supported', 'when_required'])
      .default('when_supported')
      .describe(
        'SDK request/response checksums for S3. s3rver stores aws-chunked framing inside objects unless this is when_required.',
      ),
    subscribeProtocol: z
      .enum(['http2', 'http1.1'])
      .default('http2')
      .describe(
        'Protocol of the enhanced fan-out client (SubscribeToShard and consumer registration). AWS requires http2; kinesis-local (kinesis-mock) serves SubscribeToShard over http1.1 only.',
      ),
    maxAttempts: z
      .number()
      .int()
      .min(1)
      .default(3)
      .describe(
        'SDK-level attempts for S3 and DynamoDB calls (Kinesis reads use the consumer backoff instead).',
      ),
  })
  .describe('How to reach AWS (or the local emulators).');

export type AwsConfig = z.infer<typeof awsConfigSchema>;

/** The SDK clients of one worker, built once from config and shared by every component. */
export interface AwsClients {
  readonly kinesis: KinesisClient;
  /** Kinesis client for enhanced fan-out (SubscribeToShard): HTTP/2 unless configured otherwise. */
  readonly kinesisSubscribe: KinesisClient;
  readonly s3: S3Client;
  readonly dynamodb: DynamoDBClient;
  destroy(): void;
}

/** Injection points for tests and embedders: e.g. a SubscribeToShard handler with its own protocol. */
export interface AwsClientOverrides {
  readonly subscribeRequestHandler?: KinesisClientConfig['requestHandler'];
}

/** The S3 endpoint override: the config's, else the SDK's environment variables for it. */
export function s3EndpointOverride(
  config: AwsConfig,
  env: NodeJS.ProcessEnv = process.env,
): string | undefined {
  return config.endpoints.s3 ?? (env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL || undefined);
}

export function createAwsClients(config: AwsConfig, overrides: AwsClientOverrides = {}): AwsClients {
  const base = {
    region: config.region,
    ...(config.credentials ? { credentials: config.credentials } : {}),
  };
  // The Kinesis client defaults to HTTP/2, which the emulators do not speak; polling GetRecords works
  // over HTTP/1.1 everywhere, so use it unless a handler is injected (enhanced fan-out).
  const kinesis = new KinesisClient({
    ...base,
    ...(config.endpoints.kinesis ? { endpoint: config.endpoints.kinesis } : {}),
    requestHandler: new NodeHttpHandler({ connectionTimeout: 5_000, requestTimeout: 30_000 }),
    // The consumer owns retries for reads (backoff with jitter, expired iterators), so the SDK does not retry.
    maxAttempts: 1,
  });
  // A subscription is one long request (up to 5 minutes) of events; no request timeout, the reader watches
  // for silence itself. AWS serves SubscribeToShard over HTTP/2 only.
  const kinesisSubscribe = new KinesisClient({
    ...base,
    ...(config.endpoints.kinesis ? { endpoint: config.endpoints.kinesis } : {}),
    requestHandler:
      overrides.subscribeRequestHandler ??
      (config.subscribeProtocol === 'http2'
        ? new NodeHttp2Handler({ requestTimeout: 0, sessionTimeout: 0 })
        : new NodeHttpHandler({ connectionTimeout: 5_000, requestTimeout: 0 })),
    maxAttempts: 1,
  });
  // when_supported is the SDK's default: leave it unset then, so that the SDK's own variables
  // (AWS_REQUEST_CHECKSUM_CALCULATION / AWS_RESPONSE_CHECKSUM_VALIDATION, as `ksw local up` prints) apply.
  const checksum =
    config.s3ChecksumMode === 'when_required'
      ? {
          requestChecksumCalculation: 'WHEN_REQUIRED' as const,
          responseChecksumValidation: 'WHEN_REQUIRED' as const,
        }
      : {};
  const s3Endpoint = s3EndpointOverride(config);
  const s3 = new S3Client({
    ...base,
    // An endpoint override (in the config or the SDK's AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL) means an
    // emulator or a VPC endpoint: path-style addressing, which both serve.
    ...(s3Endpoint ? { endpoint: s3Endpoint, forcePathStyle: true } : {}),
    ...checksum,
    maxAttempts: config.maxAttempts,
    requestHandler: new NodeHttpHandler({ connectionTimeout: 5_000, requestTimeout: 120_000 }),
  });
  const dynamodb = new DynamoDBClient({
    ...base,
    ...(config.endpoints.dynamodb ? { endpoint: config.endpoints.dynamodb } : {}),
    maxAttempts: config.maxAttempts,
    requestHandler: new NodeHttpHandler({ connectionTimeout: 5_000, requestTimeout: 10_000 }),
  });
  return {
    kinesis,
    kinesisSubscribe,
    s3,
    dynamodb,
    destroy() {
      kinesis.destroy();
      kinesisSubscribe.destroy();
      s3.destroy();
      dynamodb.destroy();
    },
  };
}

/** What countSdkRetries needs of a client: its middleware stack. */
interface WithMiddleware {
  middlewareStack: {
    add(
      middleware: (
        next: (args: unknown) => Promise<{ output: { $metadata?: { attempts?: number } } }>,
        context: { commandName?: string },
      ) => (args: unknown) => Promise<unknown>,
      options: { step: 'initialize'; name: string },
    ): void;
  };
}

/**
 * Counts the attempts the SDK retried by itself (S3 and DynamoDB; Kinesis reads retry in the consumer,
 * which has its own metrics) in `ksw_aws_retries_total{service, operation}`: throttling, 5xx and network
 * errors that a retry absorbed are otherwise invisible until they outlast `aws.maxAttempts`.
 */
export function countSdkRetries(clients: AwsClients, metrics: Registry): void {
  const retries = counter(metrics, {
    name: 'ksw_aws_retries_total',
    help: 'Attempts the AWS SDK retried (throttling, 5xx, network errors), by service and operation; a call that still fails after aws.maxAttempts shows in the component metrics too',
    labelNames: ['service', 'operation'],
  });
  const services: Array<[string, WithMiddleware]> = [
    ['s3', clients.s3 as unknown as WithMiddleware],
    ['dynamodb', clients.dynamodb as unknown as WithMiddleware],
  ];
  for (const [service, client] of services) {
    client.middlewareStack.add(
      (next, context) => async (args) => {
        const note = (attempts: number | undefined) => {
          if (attempts !== undefined && attempts > 1)
            retries.inc({ service, operation: context.commandName ?? 'unknown' }, attempts - 1);
        };
        try {
          const out = await next(args);
          note(out.output?.$metadata?.attempts);
          return out;
        } catch (err) {
          note((err as { $metadata?: { attempts?: number } })?.$metadata?.attempts);
          throw err;
        }
      },
      { step: 'initialize', name: 'kswCountRetries' },
    );
  }
}
