/**
 * What the command line prints for an error: one line saying what went wrong and how to fix it for the
 * mistakes a user makes (bad option, bad config, a missing file, stream or table, no credentials, nothing
 * listening at an endpoint); the stack trace only with `--debug`.
 */
import { ConfigError } from '../config/errors.js';
import { UsageError } from './args.js';

export interface ErrorReport {
  /** What to print on stderr (one line, or the config problems one per line). */
  readonly text: string;
  readonly exitCode: number;
}

interface ErrorLike {
  name?: string;
  message?: string;
  code?: string;
  path?: string;
  address?: string;
  port?: number;
  errors?: unknown[];
  cause?: unknown;
  $metadata?: unknown;
}

function firstLine(s: string): string {
  return s.split('\n')[0]!.trim();
}

/** Connection refusals come as AggregateError (one per address) from the SDK's HTTP handler. */
function refused(err: ErrorLike): ErrorLike | undefined {
  if (err.code === 'ECONNREFUSED') return err;
  for (const e of err.errors ?? []) if ((e as ErrorLike).code === 'ECONNREFUSED') return e as ErrorLike;
  if (err.cause && typeof err.cause === 'object') return refused(err.cause as ErrorLike);
  return undefined;
}

/** The one-line report of a user-facing error, or undefined when it is a bug (then: message + --debug hint). */
export function userError(command: string, raw: unknown): ErrorReport | undefined {
  if (raw instanceof UsageError) return { text: raw.message, exitCode: 2 };
  if (raw instanceof ConfigError) return { text: raw.message, exitCode: 1 };
  if (!raw || typeof raw !== 'object') return undefined;
  const err = raw as ErrorLike;
  const message = firstLine(err.message ?? '');
  // Start-up checks (src/runtime/preflight.ts) list one problem per line, each with its field and fix.
  if (err.name === 'StartupCheckError') return { text: `${command}: ${err.message}`, exitCode: 1 };
  if (err.code === 'ENOENT' && err.path)
    return { text: `${command}: no such file: ${err.path}; check the path`, exitCode: 1 };
  if (err.code === 'EACCES' && err.path)
    return { text: `${command}: permission denied: ${err.path}`, exitCode: 1 };
  if (err.name === 'CredentialsProviderError' || /could not load credentials/i.test(message))
    return {
      text:
        `${command}: no AWS credentials found; set aws.credentials in the config, export AWS_ACCESS_KEY_ID and ` +
        'AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or for the local emulators run `ksw local up` and use what it prints',
      exitCode: 1,
    };
  const conn = refused(err);
  if (conn)
    return {
      text: `${command}: nothing listens at ${conn.address ?? '?'}:${conn.port ?? '?'} (connection refused); check aws.endpoints or AWS_ENDPOINT_URL_*, or start the local stack with \`ksw local up\``,
      exitCode: 1,
    };
  if (err.$metadata !== undefined && err.name === 'ResourceNotFoundException')
    return {
      text: `${command}: ${message.replace(/\.$/, '')}; create it (for the local stack: \`ksw local up --stream NAME\`) or check the name, aws.region and aws.endpoints`,
      exitCode: 1,
    };
  if (
    err.$metadata !== undefined &&
    /^(UnrecognizedClient|InvalidSignature|AccessDenied|ExpiredToken)/.test(err.name ?? '')
  )
    return {
      text: `${command}: AWS refused the request (${err.name}): ${message}; check the credentials and the IAM policy (deploy/iam/task-role-policy.json)`,
      exitCode: 1,
    };
  return undefined;
}

/** The text for any error: the user line, or the message with a hint; the stack with `debug`. */
export function reportError(command: string, err: unknown, debug: boolean): ErrorReport {
  const stack = err instanceof Error ? (err.stack ?? err.message) : String(err);
  const user = userError(command, err);
  if (debug)
    return { text: user ? `${user.text}\n${stack}` : `${command}: ${stack}`, exitCode: user?.exitCode ?? 1 };
  if (user) return user;
  const message = err instanceof Error ? firstLine(err.message) : String(err);
  return { text: `${command}: ${message} (run with --debug for the stack trace)`, exitCode: 1 };
}
