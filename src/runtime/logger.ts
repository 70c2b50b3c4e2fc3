import { hostname } from 'node:os';
import pino, { type Logger } from 'pino';

/**
 * JSON logs to stdout (or `destination`, e.g. stderr for commands whose stdout is their result). Credentials are redacted wherever they appear in a logged object; record
 * payloads are never logged by the components (they log positions: stream, shard, sequence).
 */
export function createLogger(level: string, name = 'ksw', destination?: pino.DestinationStream): Logger {
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
  return destination ? pino(options, destination) : pino(options);
}
