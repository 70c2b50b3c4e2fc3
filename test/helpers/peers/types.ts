/**
 * What an end-to-end suite asks of its peers, independent of how they are provided. The services tier
 * (`npm run test:services`) provides them as processes on 127.0.0.1 (embedded emulators from npm, JVMs
 * from Maven Central, Python from PyPI: `process.ts`); the containers tier (`npm run test:containers`)
 * provides the same peers as Docker containers published on 127.0.0.1 (`containers.ts`). A suite gets its
 * provider from `peers()` (`index.ts`) and never knows which one it has, so both tiers run one test logic.
 */
import type { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import type { AwsClients } from '../../../src/core/aws.js';
import type { OpenSearchNode } from '../opensearch.js';

export type PeerKind = 'process' | 'container';

/** The `aws:` section of a worker config pointing at a provided Kinesis + DynamoDB + S3. */
export interface PeerAwsConfig {
  region: string;
  endpoints: { kinesis: string; s3: string; dynamodb: string };
  credentials: { accessKeyId: string; secretAccessKey: string };
  s3ChecksumMode: 'when_supported' | 'when_required';
  subscribeProtocol: 'http2' | 'http1.1';
}

/** An S3-compatible store with the given buckets created, and a local scratch directory for the test. */
export interface S3Peer {
  readonly aws: AwsClients;
  /** A local directory the test may write to (temp files, the sink's tmpDir); removed by `stop()`. */
  readonly dir: string;
  stop(): Promise<void>;
}

/** Kinesis, DynamoDB and S3 together: what a worker needs. */
export interface AwsStackPeer {
  readonly awsConfig: PeerAwsConfig;
  readonly aws: AwsClients;
  readonly dir: string;
  stop(): Promise<void>;
}

/** AWS's own DynamoDB Local. */
export interface DynamoDBPeer {
  readonly dynamodb: DynamoDBClient;
  stop(): Promise<void>;
}

/** A Glue Data Catalog API (moto in server mode). */
export interface GluePeer {
  readonly endpoint: string;
  stop(): Promise<void>;
}

/** A Python with pyarrow, the independent Parquet reader. */
export interface PyarrowPeer {
  /** Runs `python -c script FILE` where FILE holds `input`; resolves with stdout, rejects on a non-zero exit. */
  run(script: string, input: Uint8Array): Promise<string>;
  stop(): Promise<void>;
}

export interface PeerProvider {
  readonly kind: PeerKind;
  s3(buckets: readonly string[]): Promise<S3Peer>;
  awsStack(): Promise<AwsStackPeer>;
  dynamodbLocal(): Promise<DynamoDBPeer>;
  openSearch(): Promise<OpenSearchNode>;
  glue(): Promise<GluePeer>;
  pyarrow(): Promise<PyarrowPeer>;
}
