/**
 * The containers tier (`npm run test:containers`): the services tier's suites (test/services) with their
 * peers as Docker containers (test/helpers/peers/containers.ts) instead of processes. Where `docker info`
 * does not answer, it prints one line saying it skipped itself and why, and exits 0: the same suites
 * are proven with process peers by `npm run test:services`.
 *
 * With an engine: testcontainers' reaper is turned off (it publishes a port on every interface); each
 * container is labelled with this run's id and stopped by its peer, and whatever a crashed test left
 * behind is removed by that label at the end. KSW_CONTAINERS_TESTS="test/services/x.test.ts" runs only
 * the named files.
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { RUN_LABEL } from '../../test/helpers/peers/container-specs.js';
import { dockerEngine } from '../../test/helpers/peers/docker.js';

const root = path.resolve(import.meta.dirname, '../..');
const engine = dockerEngine();
if (!engine.available) {
  console.log(`containers: skipped: no Docker engine (${engine.reason})`);
  process.exit(0);
}

const run = `run-${Date.now()}-${process.pid}`;
console.log(`containers: Docker engine ${engine.version}; peers as containers on 127.0.0.1 (run ${run})`);
const tests = (process.env.KSW_CONTAINERS_TESTS ?? '').split(/\s+/).filter(Boolean);
const vitest = spawnSync(
  path.join(root, 'node_modules/.bin/vitest'),
  ['run', '--project', 'containers', ...tests],
  {
    cwd: root,
    stdio: 'inherit',
    env: {
      ...process.env,
      KSW_PEERS: 'container',
      KSW_CONTAINERS_RUN: run,
      TESTCONTAINERS_RYUK_DISABLED: 'true',
      // Ports are published on IPv4 loopback; "localhost" may resolve to ::1 first.
      TESTCONTAINERS_HOST_OVERRIDE: process.env.TESTCONTAINERS_HOST_OVERRIDE ?? '127.0.0.1',
    },
  },
);

const left = spawnSync('docker', ['ps', '-aq', '--filter', `label=${RUN_LABEL}=${run}`], {
  encoding: 'utf8',
});
const ids = (left.stdout ?? '').split('\n').filter(Boolean);
if (ids.length > 0) {
  console.log(`containers: removing ${ids.length} container(s) this run left behind: ${ids.join(' ')}`);
  spawnSync('docker', ['rm', '-f', ...ids], { stdio: 'inherit' });
}
process.exit(vitest.status ?? 1);
