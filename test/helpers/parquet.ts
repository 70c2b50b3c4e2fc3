import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { GetObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { DuckDBInstance } from '@duckdb/node-api';

export async function listKeys(s3: S3Client, bucket: string, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  let token: string | undefined;
  do {
    const out = await s3.send(
      new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }),
    );
    for (const o of out.Contents ?? []) keys.push(o.Key!);
    token = out.IsTruncated ? out.NextContinuationToken : undefined;
  } while (token);
  return keys;
}

/** Downloads objects under a prefix into `dir`, keeping their keys as relative paths. */
export async function download(s3: S3Client, bucket: string, prefix: string, dir: string): Promise<string[]> {
  const files: string[] = [];
  for (const key of await listKeys(s3, bucket, prefix)) {
    const out = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    const file = path.join(dir, key);
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, await out.Body!.transformToByteArray());
    files.push(file);
  }
  return files;
}

/** Runs a query in a fresh in-memory DuckDB and returns rows as objects (BIGINT as bigint). */
export async function duck(sql: string): Promise<Record<string, unknown>[]> {
  const instance = await DuckDBInstance.create(':memory:');
  const conn = await instance.connect();
  try {
    const reader = await conn.runAndReadAll(sql);
    return reader.getRowObjects() as Record<string, unknown>[];
  } finally {
    conn.closeSync();
    instance.closeSync();
  }
}
