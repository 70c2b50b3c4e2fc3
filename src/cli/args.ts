/**
 * Argument parsing shared by every subcommand: `-h/--help` prints the command's short usage, and a bad
 * option becomes a one-line UsageError naming the option and where to look, instead of parseArgs's stack.
 */
import { type ParseArgsConfig, parseArgs } from 'node:util';

/** A mistake on the command line: printed as one line, exit code 2. */
export class UsageError extends Error {
  constructor(
    readonly command: string,
    message: string,
  ) {
    super(`${command}: ${message}; see ksw ${command} --help`);
    this.name = 'UsageError';
  }
}

type Options = NonNullable<ParseArgsConfig['options']>;

type Parsed<O extends Options> = ReturnType<typeof parseArgs<{ options: O; allowPositionals: true }>>;

/**
 * Parses `args` for `command`. Returns undefined after printing `usage` when help was asked for (the
 * command then exits 0); throws UsageError for an unknown option, a missing value or a stray argument.
 */
export function parseCommandArgs<O extends Options>(
  command: string,
  usage: string,
  args: string[],
  options: O,
  opts: { positionals?: number } = {},
): Parsed<O> | undefined {
  if (args.includes('-h') || args.includes('--help')) {
    process.stdout.write(usage);
    return undefined;
  }
  let parsed: Parsed<O>;
  try {
    parsed = parseArgs({ args, options, allowPositionals: true, strict: true }) as Parsed<O>;
  } catch (err) {
    throw new UsageError(command, describeParseError(err as Error & { code?: string }));
  }
  const allowed = opts.positionals ?? 0;
  if (parsed.positionals.length > allowed)
    throw new UsageError(
      command,
      `unexpected argument "${parsed.positionals[allowed]}"${allowed === 0 ? ' (options start with --)' : ''}`,
    );
  return parsed;
}

function describeParseError(err: Error & { code?: string }): string {
  // parseArgs messages are long and written for programmers; keep the option's name.
  const quoted = /'([^']+)'/.exec(err.message)?.[1] ?? '';
  const option = /--?[\w-]+(?!.*--)/.exec(quoted)?.[0] ?? quoted;
  if (err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') return `unknown option ${option}`;
  if (err.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE')
    return err.message.includes('does not take')
      ? `option ${option} takes no value`
      : `option ${option} needs a value`;
  return err.message.split('\n')[0]!;
}

/** Throws a UsageError when a required option is missing. */
export function required<T>(command: string, value: T | undefined, what: string): T {
  if (value === undefined || value === '') throw new UsageError(command, `missing ${what}`);
  return value;
}
