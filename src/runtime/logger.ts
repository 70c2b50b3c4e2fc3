import { hostname } from 'node:os';
import pino, { type Logger } from 'pino';
import { prettyDestination } from './pretty-log.js';

/** json: one JSON object per line (for collectors); pretty: readable lines; auto: pretty on a terminal. */
export type LogFormat = 'json' | 'pretty' | 'auto';

/**
 * JSON logs to stdout (or `destination`, e.g. stderr for commands whose stdout is their result), or readable
 * lines with `format: pretty` (`auto`: pretty when stdout is a terminal). Credentials are redacted wherever
 * they appear in a logged object; record payloads are never logged by the components (they log positions:
 * stream, shard, sequence).
 */
export function createLogger(
  level: string,
  name = 'ksw',
  destination?: pino.DestinationStream,
  format: LogFormat = 'json',
): Logger {
  const options: pino.LoggerOptions = {
    name,
    level,
    base: { pid: process.pid, host: hostname() },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: {
      paths: [
        '*.secretAccessKey',
        '*.sessionToken',
        '*.accessKeyId',
        '*.password',
        '*.*.secretAccessKey',
        'config.aws.credentials',
      ],
      censor: '[redacted]',
    },
    formatters: { level: (label) => ({ level: label }) },
  };
  const pretty = format === 'pretty' || (format === 'auto' && !destination && process.stdout.isTTY === true);
  if (pretty) return pino(options, prettyDestination());
  return destination ? pino(options, destination) : pino(options);
}
