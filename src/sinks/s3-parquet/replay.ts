/**
 * Replay detection at the start of a tenure: the manifests of files that end after the checkpoint the
 * tenure resumes from are read, and the events of those whose data object was committed (exists and
 * carries the manifest's file id) go into the tenure's replay index, so when they are read again they are
 * acked without being written a second time (see manifest.ts).
 */

import pLimit from 'p-limit';
import type { Logger } from 'pino';
import type { Tenure } from '../../core/component.js';
import type { ShardPosition } from '../../core/watermark.js';
import { manifestDir, parseManifest, ReplayIndex, startAfterCheckpoint } from './manifest.js';
import type { ParquetSinkMetrics } from './metrics.js';
import type { ParquetUploadService, RequestScope } from './service.js';

export interface ReplayReadOptions {
  readonly service: ParquetUploadService;
  readonly manifestPrefix: string;
  readonly scope: RequestScope;
  readonly metrics: ParquetSinkMetrics;
  readonly labels: { sink: string };
  readonly logger: Logger;
  /** Iceberg mode: the data keys the table holds for the shard; a file outside it is not committed. */
  readonly inTable?: ReadonlySet<string>;
}

/** The committed events after `checkpoint` of the tenure's shard; undefined when the scope ended first. */
export async function readReplayIndex(
  tenure: Tenure,
  checkpoint: ShardPosition | undefined,
  opts: ReplayReadOptions,
): Promise<ReplayIndex | undefined> {
  const { service, scope } = opts;
  const replay = new ReplayIndex();
  const dir = manifestDir(opts.manifestPrefix, tenure.stream, tenure.shardId);
  // Without a checkpoint the shard starts over, so every file may hold records about to be replayed.
  const keys = await service.listKeys(
    dir,
    checkpoint ? startAfterCheckpoint(dir, checkpoint) : undefined,
    scope,
  );
  if (!keys) return undefined;
  const limit = pLimit(8);
  let committed = 0;
  let uncommitted = 0;
  let unreadable = 0;
  let stopped = false;
  await Promise.all(
    keys.map((key) =>
      limit(async () => {
        const text = await service.getText(key, scope);
        if (text === undefined) {
          stopped = true;
          return;
        }
        if (text === null) return; // deleted since the listing
        const parsed = parseManifest(text);
        let problem = 'problem' in parsed ? parsed.problem : undefined;
        if (!problem && 'manifest' in parsed) {
          const { manifest } = parsed;
          const metadata = await service.headMetadata(manifest.dataKey, scope);
          if (metadata === undefined) {
            stopped = true;
            return;
          }
          if (
            metadata?.['ksw-file-id'] !== manifest.fileId ||
            (opts.inTable && !opts.inTable.has(manifest.dataKey))
          ) {
            // Written before a crash (or a lost lease) that came before or during the data upload.
            uncommitted += 1;
            return;
          }
          try {
            replay.add(manifest.positions);
            committed += 1;
            return;
          } catch (err) {
            problem = `positions: ${(err as Error).message}`;
          }
        }
        // Not one of ours, or damaged: it cannot block the shard (that would stop it for good), so its
        // file counts as not committed. Its events are written again; if its data object does exist,
        // they are then in two objects, which is the at-least-once side of the trade.
        unreadable += 1;
        opts.metrics.manifestsUnreadable.inc(opts.labels);
        opts.logger.warn(
          { stream: tenure.stream, shardId: tenure.shardId, key, problem },
          'unreadable manifest ignored; the events it lists are written again on replay',
        );
      }),
    ),
  );
  if (stopped) return undefined;
  if (committed + uncommitted + unreadable > 0) {
    opts.logger.info(
      {
        stream: tenure.stream,
        shardId: tenure.shardId,
        committed,
        uncommitted,
        unreadable,
        events: replay.size,
      },
      'files committed after the checkpoint found; their events will be acked without rewriting',
    );
  }
  return replay;
}
