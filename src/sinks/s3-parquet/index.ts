import type { ComponentDefinition, Sink } from '../../core/component.js';
import { type ParquetSinkConfig, parquetSinkConfigSchema } from './config.js';
import { S3ParquetSink } from './sink.js';

export {
  type ParquetColumnConfig,
  type ParquetSinkConfig,
  parquetColumnSchema,
  parquetSinkConfigSchema,
} from './config.js';
export { convertValue, stringifyJson } from './encoder.js';
export { S3ParquetSink } from './sink.js';

export const parquetSinkDefinition: ComponentDefinition<ParquetSinkConfig, Sink> = {
  description:
    'Writes events to S3 as Parquet files (DuckDB writer), one series of files per shard, keyed by the positions ' +
    'of their first and last event; acks events once their file is uploaded.',
  schema: parquetSinkConfigSchema,
  create: (name, config, ctx) => new S3ParquetSink(name, config, ctx),
};
