import type { ComponentDefinition, Sink } from '../../core/component.js';
import { type ParquetSinkConfig, parquetSinkConfigSchema } from './config.js';
import { S3ParquetSink } from './sink.js';

export {
  type ParquetColumnConfig,
  type ParquetSinkConfig,
  parquetColumnSchema,
  parquetSinkConfigSchema,
} from './config.js';
export { convertValue, stringifyJson } from './convert.js';
export { S3ParquetSink } from './sink.js';

export const parquetSinkDefinition: ComponentDefinition<ParquetSinkConfig, Sink> = {
  description:
    'Writes events to S3 as Parquet files (DuckDB writer) with built-in schemas for spans and RED windows or ' +
    'declared columns (nested lists, maps, structs), Hive-style partitions, rotation by rows, bytes, age and a ' +
    'memory cap, and per-file manifests; keys come from the positions of the first and last event; events are ' +
    'acked once their file is uploaded.',
  schema: parquetSinkConfigSchema,
  create: (name, config, ctx) => new S3ParquetSink(name, config, ctx),
};
