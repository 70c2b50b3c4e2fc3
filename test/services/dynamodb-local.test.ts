/** The lease-table contract against AWS's own DynamoDB Local (Java), started here as a process. */
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { freePort, stopChild } from '../../src/local/emulators.js';
import { leaseTableSuite } from '../helpers/lease-table-suite.js';
import { waitFor } from '../helpers/stack.js';

const dir = process.env.KSW_DYNAMODB_LOCAL_DIR;
if (!dir) throw new Error('KSW_DYNAMODB_LOCAL_DIR is not set: run this tier with `npm run test:services`');

leaseTableSuite('DynamoDB Local', async () => {
  const port = await freePort();
  // scripts/services/run.sh runs this inside a network namespace that only has loopback.
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
    { stdio: 'ignore', cwd: mkdtempSync(path.join(tmpdir(), 'ksw-ddb-local-')) },
  );
  const dynamodb = new DynamoDBClient({
    region: 'us-east-1',
    endpoint: `http://127.0.0.1:${port}`,
    credentials: { accessKeyId: 'local', secretAccessKey: 'local' },
    requestHandler: new NodeHttpHandler({ connectionTimeout: 2_000 }),
    maxAttempts: 1,
  });
  await waitFor(
    async () => {
      try {
        await dynamodb.send(new (await import('@aws-sdk/client-dynamodb')).ListTablesCommand({}));
        return true;
      } catch {
        return false;
      }
    },
    60_000,
    'DynamoDB Local to answer',
  );
  return {
    dynamodb,
    async stop() {
      dynamodb.destroy();
      await stopChild(child);
    },
  };
});
