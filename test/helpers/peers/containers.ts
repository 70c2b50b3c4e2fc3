/**
 * Peers as Docker containers (the containers tier, `npm run test:containers`), started with testcontainers
 * 11 (the line that installs on Node 20): MinIO for S3, kinesis-mock for Kinesis, DynamoDB Local, OpenSearch,
 * moto for Glue, and a Python with pyarrow. What each container is lives in container-specs.ts; this file
 * turns a spec into a container that publishes its ports on 127.0.0.1 only, and a started container into the
 * peer a suite asks for (types.ts).
 *
 * testcontainers' reaper (Ryuk) is turned off by scripts/containers/run.ts, because it publishes its own
 * port on every interface: every container here is stopped by id when its peer stops, and the tier's
 * runner removes, by the run's label, whatever a crashed test left behind.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import type { ContainerCreateOptions, HostConfig } from 'dockerode';
import {
  GenericContainer,
  type PortWithOptionalBinding,
  type StartedTestContainer,
  Wait,
  type WaitStrategy,
} from 'testcontainers';
import { awsConfigSchema, createAwsClients } from '../../../src/core/aws.js';
import { connectOpenSearch } from '../opensearch.js';
import {
  CONTAINER_SPECS,
  type ContainerSpec,
  MINIO_CREDENTIALS,
  RUN_LABEL,
  TIER_LABEL,
  type WaitSpec,
} from './container-specs.js';
import { dynamodbAnswering, localDynamoDBClient, motoAnswering } from './process.js';
import type { AwsStackPeer, PeerAwsConfig, PeerProvider, S3Peer } from './types.js';

/** A container whose published ports bind 127.0.0.1 only (testcontainers alone binds every interface). */
export class LoopbackContainer extends GenericContainer {
  override withExposedPorts(...ports: PortWithOptionalBinding[]): this {
    super.withExposedPorts(...ports);
    const bindings = this.hostConfig.PortBindings as
      | Record<string, Array<Record<string, string>>>
      | undefined;
    for (const [port, list] of Object.entries(bindings ?? {})) {
      bindings![port] = list.map((b) => ({ ...b, HostIp: '127.0.0.1' }));
    }
    return this;
  }

  /** What `start()` would ask the engine to create (for tests that have no engine). */
  engineRequest(): { createOpts: ContainerCreateOptions; hostConfig: HostConfig } {
    return structuredClone({ createOpts: this.createOpts, hostConfig: this.hostConfig });
  }

  /** The wait strategy and startup timeout `start()` would use (for tests that have no engine). */
  readiness(): { strategy: WaitStrategy; startupTimeoutMs: number | undefined } {
    return { strategy: this.waitStrategy, startupTimeoutMs: this.startupTimeoutMs };
  }
}

export function waitStrategyFor(wait: WaitSpec) {
  switch (wait.kind) {
    case 'http':
      return Wait.forHttp(wait.path, wait.port).forStatusCode(wait.status);
    case 'log':
      return Wait.forLogMessage(wait.pattern);
    case 'ports':
      return Wait.forListeningPorts();
  }
}

export function runId(): string {
  return process.env.KSW_CONTAINERS_RUN ?? `pid-${process.pid}`;
}

/** The container for a spec, not started. */
export function containerFor(spec: ContainerSpec): LoopbackContainer {
  const container = new LoopbackContainer(spec.image)
    .withEnvironment({ ...spec.env })
    .withLabels({ [TIER_LABEL]: 'containers', [RUN_LABEL]: runId(), 'ksw.peer': spec.peer })
    .withWaitStrategy(waitStrategyFor(spec.wait))
    .withStartupTimeout(spec.startupTimeoutMs);
  if (spec.ports.length > 0) container.withExposedPorts(...spec.ports);
  if (spec.entrypoint) container.withEntrypoint([...spec.entrypoint]);
  if (spec.command) container.withCommand([...spec.command]);
  return container;
}

interface RunningPeer {
  readonly container: StartedTestContainer;
  /** `http://127.0.0.1:<published port>` for a container port. */
  endpoint(port: number): string;
  stop(): Promise<void>;
}

async function start(spec: ContainerSpec): Promise<RunningPeer> {
  let container: StartedTestContainer;
  try {
    container = await containerFor(spec).start();
  } catch (err) {
    throw new Error(`containers: ${spec.peer} (${spec.image}) did not start: ${(err as Error).message}`, {
      cause: err,
    });
  }
  return {
    container,
    // 127.0.0.1, not the engine's "localhost": the ports are bound to IPv4 loopback only.
    endpoint: (port) => `http://127.0.0.1:${container.getMappedPort(port)}`,
    async stop() {
      await container.stop({ timeout: spec.stopTimeoutSeconds * 1000, remove: true });
    },
  };
}

async function stopAll(peers: Array<RunningPeer | undefined>): Promise<void> {
  await Promise.allSettled(peers.map((p) => p?.stop()));
}

/** Starts containers in parallel; if one fails, the others are stopped before the error is thrown. */
async function startAll(specs: ContainerSpec[]): Promise<RunningPeer[]> {
  const results = await Promise.allSettled(specs.map(start));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    await stopAll(results.map((r) => (r.status === 'fulfilled' ? r.value : undefined)));
    throw failed.reason;
  }
  return results.map((r) => (r as PromiseFulfilledResult<RunningPeer>).value);
}

export function awsConfigFor(endpoints: PeerAwsConfig['endpoints']): PeerAwsConfig {
  return {
    region: 'us-east-1',
    endpoints,
    // MinIO checks these; kinesis-mock and DynamoDB Local (-sharedDb) accept any.
    credentials: { ...MINIO_CREDENTIALS },
    // Checksums are not what these suites test; WHEN_REQUIRED is what every S3-compatible store accepts.
    s3ChecksumMode: 'when_required',
    // kinesis-mock serves SubscribeToShard over HTTP/1.1 only.
    subscribeProtocol: 'http1.1',
  };
}

async function s3Peer(buckets: readonly string[]): Promise<S3Peer> {
  const [minio] = await startAll([CONTAINER_SPECS.minio]);
  const endpoint = minio!.endpoint(9000);
  const aws = createAwsClients(
    awsConfigSchema.parse({
      endpoints: { s3: endpoint },
      credentials: { ...MINIO_CREDENTIALS },
      s3ChecksumMode: 'when_required',
    }),
  );
  const dir = mkdtempSync(path.join(tmpdir(), 'ksw-s3-'));
  const stop = async () => {
    aws.destroy();
    await minio!.stop();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    for (const bucket of buckets) await aws.s3.send(new CreateBucketCommand({ Bucket: bucket }));
  } catch (err) {
    await stop();
    throw err;
  }
  return { aws, dir, stop };
}

export const containerPeers: PeerProvider = {
  kind: 'container',

  s3: s3Peer,

  async awsStack(): Promise<AwsStackPeer> {
    const [kinesis, dynamodb, minio] = await startAll([
      CONTAINER_SPECS.kinesisMock,
      CONTAINER_SPECS.dynamodbLocal,
      CONTAINER_SPECS.minio,
    ]);
    const awsConfig = awsConfigFor({
      kinesis: kinesis!.endpoint(4568),
      dynamodb: dynamodb!.endpoint(8000),
      s3: minio!.endpoint(9000),
    });
    const aws = createAwsClients(awsConfigSchema.parse(awsConfig));
    const dir = mkdtempSync(path.join(tmpdir(), 'ksw-test-'));
    const stop = async () => {
      aws.destroy();
      await stopAll([kinesis, dynamodb, minio]);
      rmSync(dir, { recursive: true, force: true });
    };
    try {
      await dynamodbAnswering(aws.dynamodb, 'DynamoDB Local');
    } catch (err) {
      await stop();
      throw err;
    }
    return { awsConfig, aws, dir, stop };
  },

  async dynamodbLocal() {
    const [peer] = await startAll([CONTAINER_SPECS.dynamodbLocal]);
    const dynamodb = localDynamoDBClient(peer!.endpoint(8000));
    const stop = async () => {
      dynamodb.destroy();
      await peer!.stop();
    };
    try {
      await dynamodbAnswering(dynamodb, 'DynamoDB Local');
    } catch (err) {
      await stop();
      throw err;
    }
    return { dynamodb, stop };
  },

  async openSearch() {
    const [peer] = await startAll([CONTAINER_SPECS.openSearch]);
    return connectOpenSearch(peer!.endpoint(9200), { stop: () => peer!.stop() });
  },

  async glue() {
    const [peer] = await startAll([CONTAINER_SPECS.moto]);
    const endpoint = peer!.endpoint(5000);
    try {
      await motoAnswering(endpoint);
    } catch (err) {
      await peer!.stop();
      throw err;
    }
    return { endpoint, stop: () => peer!.stop() };
  },

  async pyarrow() {
    const [peer] = await startAll([CONTAINER_SPECS.pyarrow]);
    let n = 0;
    return {
      async run(script, input) {
        const file = `/tmp/input-${n++}.parquet`;
        await peer!.container.copyContentToContainer([{ content: Buffer.from(input), target: file }]);
        const result = await peer!.container.exec(['python', '-c', script, file]);
        if (result.exitCode !== 0) throw new Error(`python exited with ${result.exitCode}: ${result.stderr}`);
        return result.stdout;
      },
      stop: () => peer!.stop(),
    };
  },
};
