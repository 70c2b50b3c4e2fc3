/**
 * Security: the operations port (/metrics, /healthz, /readyz) binds exactly where `server.host` says. With the
 * default 127.0.0.1 it must not answer on any other address of the machine.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import os from 'node:os';
import { Registry } from 'prom-client';
import { describe, it } from 'vitest';
import { startOpsServer } from '../../src/metrics/server.js';

/** Resolves 'open' when a TCP connection succeeds, else the error code (ECONNREFUSED ...). */
function probe(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port, timeout: 2_000 });
    socket.once('connect', () => {
      socket.destroy();
      resolve('open');
    });
    socket.once('timeout', () => {
      socket.destroy();
      resolve('ETIMEDOUT');
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

function externalIPv4(): string[] {
  return Object.values(os.networkInterfaces())
    .flat()
    .filter((i): i is os.NetworkInterfaceInfo => !!i && i.family === 'IPv4' && !i.internal)
    .map((i) => i.address);
}

describe('operations server binding', () => {
  it('listens on the configured loopback address only', async () => {
    const server = await startOpsServer({
      host: '127.0.0.1',
      port: 0,
      registry: new Registry(),
      ready: () => true,
    });
    try {
      assert.equal(server.address.host, '127.0.0.1');
      assert.equal(await probe('127.0.0.1', server.address.port), 'open');
      const res = await fetch(`http://127.0.0.1:${server.address.port}/healthz`);
      assert.equal(res.status, 200);
      for (const address of externalIPv4()) {
        assert.notEqual(
          await probe(address, server.address.port),
          'open',
          `the ops port answers on ${address} although server.host is 127.0.0.1`,
        );
      }
    } finally {
      await server.close();
    }
  });
});
