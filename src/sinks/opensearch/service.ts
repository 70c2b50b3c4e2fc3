/**
 * The HTTP side of the OpenSearch sink, through `@opensearch-project/opensearch`: building the client
 * (none/basic auth, or SigV4 for `es` and `aoss` with the AWS default credential chain), resolving a
 * domain endpoint, bootstrapping templates and the ISM policy, and sending one bulk request. The client
 * never retries on its own (`maxRetries: 0`): the sink retries per item with its own budget.
 */
import { Client, type ClientOptions } from '@opensearch-project/opensearch';
import { AwsSigv4Signer } from '@opensearch-project/opensearch/aws-v3';
import type { Logger } from 'pino';
import { backoffDelay, sleep } from '../../core/backoff.js';
import type { BulkItemResult } from './bulk.js';
import type { OpenSearchSinkConfig } from './config.js';
import { type CredentialProvider, lookupDomainEndpoint } from './domain.js';
import { ismPolicyBody } from './templates.js';

/** The AWS side the sink needs for SigV4 and domain lookup: the worker's region and credential chain. */
export interface AwsIdentity {
  region(): Promise<string>;
  credentials: CredentialProvider;
}

export type BulkResult =
  | { readonly kind: 'items'; readonly items: BulkItemResult[]; readonly errors: boolean }
  | { readonly kind: 'failed'; readonly status: number | undefined; readonly reason: string };

/** A request-level error of the client, as status + short reason (never the request body). */
export function describeClientError(err: unknown): { status: number | undefined; reason: string } {
  const e = err as {
    name?: string;
    message?: string;
    meta?: { statusCode?: number; body?: unknown };
  };
  const status = e?.meta?.statusCode ?? undefined;
  const body = e?.meta?.body as { error?: { type?: string; reason?: string } | string } | string | undefined;
  let detail = '';
  if (body && typeof body === 'object' && body.error) {
    detail =
      typeof body.error === 'string'
        ? body.error
        : `${body.error.type ?? 'error'}: ${body.error.reason ?? ''}`;
  } else if (typeof body === 'string') {
    detail = body.slice(0, 300);
  }
  const name = e?.name ?? 'Error';
  return {
    status: status && status > 0 ? status : undefined,
    reason: `${name}${status ? ` ${status}` : ''}: ${detail || e?.message || String(err)}`.slice(0, 1000),
  };
}

export class BootstrapError extends Error {}

export class OpenSearchService {
  private constructor(
    readonly client: Client,
    readonly endpoint: string,
    private readonly config: OpenSearchSinkConfig,
    private readonly logger: Logger,
  ) {}

  /** Resolves the endpoint (domain lookup) and builds the client. */
  static async connect(
    config: OpenSearchSinkConfig,
    aws: AwsIdentity,
    logger: Logger,
    opts: { domainLookupEndpoint?: string } = {},
  ): Promise<OpenSearchService> {
    const auth = config.auth;
    const region = auth.type === 'aws_sigv4' ? (auth.region ?? (await aws.region())) : undefined;
    let endpoint = config.endpoint;
    if (!endpoint) {
      endpoint = await lookupDomainEndpoint(
        config.domainName!,
        region!,
        aws.credentials,
        opts.domainLookupEndpoint,
      );
      logger.info({ domainName: config.domainName, endpoint }, 'OpenSearch domain endpoint found');
    }
    const options: ClientOptions = {
      node: endpoint,
      maxRetries: 0,
      requestTimeout: config.bulk.requestTimeoutMs,
      ssl: { rejectUnauthorized: config.tls.rejectUnauthorized },
      // The connection pool must never declare the only node dead and refuse requests: the sink's
      // backoff decides when to try again.
      resurrectStrategy: 'none',
      suggestCompression: false,
    };
    if (auth.type === 'basic') options.auth = { username: auth.username, password: auth.password };
    if (auth.type === 'aws_sigv4') {
      Object.assign(
        options,
        AwsSigv4Signer({
          region: region!,
          service: auth.service,
          getCredentials: () => aws.credentials(),
        }),
      );
    }
    return new OpenSearchService(new Client(options), endpoint, config, logger);
  }

  /** One bulk request; never throws (request failures come back as `failed`). */
  async bulk(body: string, signal?: AbortSignal): Promise<BulkResult> {
    let onAbort: (() => void) | undefined;
    try {
      const request = this.client.transport.request(
        {
          method: 'POST',
          path: '/_bulk',
          bulkBody: body,
          // Only what the sink reads: the response of a 1,000-item bulk shrinks from ~200 KB to a few KB.
          querystring: { filter_path: 'errors,items.*.status,items.*.error' },
        },
        { requestTimeout: this.config.bulk.requestTimeoutMs, maxRetries: 0 },
      );
      if (signal) {
        // Braces, not `() => request.abort()`: abort() returns the request, a thenable, and an EventTarget
        // listener that returns a thenable has its rejection rethrown as an uncaught exception, which
        // crashed the worker when it closed with a bulk request in flight.
        onAbort = () => {
          request.abort();
        };
        signal.addEventListener('abort', onAbort, { once: true });
      }
      const res = await request;
      const out = res.body as { errors?: boolean; items?: Array<Record<string, BulkItemResult>> };
      const items = (out.items ?? []).map((item) => Object.values(item)[0]!);
      return { kind: 'items', items, errors: out.errors === true };
    } catch (err) {
      return { kind: 'failed', ...describeClientError(err) };
    } finally {
      if (onAbort) signal?.removeEventListener('abort', onAbort);
    }
  }

  /**
   * Puts the index template and (when configured) creates the ISM policy. Idempotent: several workers may
   * run it at once. Transient failures are retried until `deadline`; anything else is a BootstrapError
   * that names the fix.
   */
  async bootstrap(
    name: string,
    templateBody: Record<string, unknown>,
    indexPatterns: readonly string[],
    signal: AbortSignal,
    timeoutMs: number,
  ): Promise<void> {
    const template = this.config.template!;
    const deadline = Date.now() + timeoutMs;
    await this.retrying('bootstrap', deadline, signal, async () => {
      if (template.ismPolicy) await this.ensureIsmPolicy(template.ismPolicy, indexPatterns);
      if (!template.overwrite) {
        const exists = await this.client.transport.request(
          { method: 'HEAD', path: `/_index_template/${encodeURIComponent(name)}` },
          { ignore: [404] },
        );
        if (exists.statusCode === 200) {
          this.logger.info(
            { template: name },
            'index template exists; left alone (template.overwrite: false)',
          );
          return;
        }
      }
      await this.client.transport.request({
        method: 'PUT',
        path: `/_index_template/${encodeURIComponent(name)}`,
        body: templateBody,
      });
      this.logger.info({ template: name, indexPatterns }, 'index template put');
    });
  }

  private async ensureIsmPolicy(
    policy: NonNullable<NonNullable<OpenSearchSinkConfig['template']>['ismPolicy']>,
    indexPatterns: readonly string[],
  ): Promise<void> {
    const path = `/_plugins/_ism/policies/${encodeURIComponent(policy.name)}`;
    const existing = await this.client.transport.request({ method: 'GET', path }, { ignore: [404] });
    if (existing.statusCode === 200) {
      // An existing policy may have been tuned by an operator: never overwrite it.
      this.logger.info({ policy: policy.name }, 'ISM policy exists; left alone');
      return;
    }
    // 404: missing (any other status threw).
    const created = await this.client.transport.request(
      { method: 'PUT', path, body: ismPolicyBody(policy, indexPatterns) },
      { ignore: [409] }, // created meanwhile by another worker
    );
    this.logger.info({ policy: policy.name, status: created.statusCode }, 'ISM policy created');
  }

  private async retrying(what: string, deadline: number, signal: AbortSignal, fn: () => Promise<void>) {
    for (let attempt = 0; ; attempt++) {
      try {
        await fn();
        return;
      } catch (err) {
        if (err instanceof BootstrapError) throw err;
        const { status, reason } = describeClientError(err);
        const transient = status === undefined || status === 429 || status >= 500;
        if (status === 400 && /no handler found for uri \[\/_plugins\/_ism/.test(reason)) {
          throw new BootstrapError(
            `template.ismPolicy is set but the cluster has no Index State Management plugin (${reason}); ` +
              'remove ismPolicy or install the plugin',
          );
        }
        if (!transient || Date.now() >= deadline || signal.aborted) {
          throw new BootstrapError(`OpenSearch ${what} failed at ${this.endpoint}: ${reason}`);
        }
        const waitMs = backoffDelay(attempt, 500, 10_000);
        this.logger.warn(
          { reason, attempt: attempt + 1, retryInMs: waitMs },
          `OpenSearch ${what} failed; retrying`,
        );
        await sleep(waitMs, signal);
      }
    }
  }

  async close(): Promise<void> {
    await this.client.close();
  }
}
