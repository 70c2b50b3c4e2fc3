import { z } from 'zod';
import { checkIndexPattern, compileDocumentId } from './naming.js';

const MiB = 1024 * 1024;

/** `{field}` / `{$origin}` placeholders of an id template; see ids.ts. */
const idTemplate = z
  .string()
  .min(1)
  .regex(/\{[^{}]+\}/, 'an id template needs at least one {placeholder}');

export const documentIdSchema = z
  .union([
    z
      .literal('origin')
      .describe(
        "`<stream>/<shardId>/<sequence>/<subSequence>/<eventIndex>` of the record. Derived events (RED windows) get `derived-<SHA-256 of the document>` instead: their origin is only the last record they counted, so it could equal that record's own id or another window's.",
      ),
    z
      .object({
        field: z.string().min(1).describe('Dotted path of the field whose value is the id, e.g. "spanId".'),
        hash: z.boolean().default(false).describe('Use the SHA-256 (base64url) of the value instead.'),
      })
      .strict(),
    z
      .object({
        template: idTemplate.describe(
          'Placeholders `{dotted.path}` of document fields (objects as JSON with sorted keys) and `{$stream}`, ' +
            '`{$shard}`, `{$sequence}`, `{$sub}`, `{$index}` of the record origin, e.g. "{traceId}-{spanId}".',
        ),
        hash: z
          .boolean()
          .default(false)
          .describe(
            'Use the SHA-256 (base64url, 43 characters) of the rendered template: short fixed-length ids for ' +
              'templates with many or long fields. Ids longer than 512 bytes are always hashed (OpenSearch limit).',
          ),
      })
      .strict(),
  ])
  .describe(
    'How the document `_id` is made. Deterministic ids make replays idempotent: a record read twice writes the ' +
      'same document. A document missing a field the id needs goes to the dead-letter queue.',
  );

export type DocumentIdConfig = z.infer<typeof documentIdSchema>;

const authSchema = z
  .discriminatedUnion('type', [
    z.object({ type: z.literal('none') }).strict(),
    z
      .object({
        type: z.literal('basic'),
        username: z.string().min(1),
        password: z
          .string()
          .min(1)
          .describe(
            'Put an environment reference here (e.g. "$' + '{OPENSEARCH_PASSWORD}"), not a literal secret.',
          ),
      })
      .strict(),
    z
      .object({
        type: z.literal('aws_sigv4'),
        service: z
          .enum(['es', 'aoss'])
          .default('es')
          .describe(
            '`es` for Amazon OpenSearch Service domains, `aoss` for OpenSearch Serverless collections.',
          ),
        region: z
          .string()
          .min(1)
          .optional()
          .describe("Region of the domain or collection. Default: the worker's `aws.region`."),
      })
      .strict(),
  ])
  .describe(
    'none/basic for local clusters; aws_sigv4 signs every request with the credentials of the default AWS ' +
      "provider chain (IRSA, ECS task role, env; or `aws.credentials` when set), through the client's AwsSigv4Signer.",
  );

export const ismPolicySchema = z
  .object({
    name: z.string().min(1).describe('Policy id, e.g. "ksw-traces".'),
    deleteAfter: z
      .string()
      .regex(/^\d+[dhm]$/, 'a duration such as 7d, 12h or 30m')
      .describe('Delete indices this long after their creation, e.g. "7d".'),
    warmAfter: z
      .string()
      .regex(/^\d+[dhm]$/)
      .optional()
      .describe('Optional: make indices read-only and force-merge them to one segment after this age.'),
  })
  .strict()
  .describe(
    'An Index State Management policy created at start-up (when missing) and attached to new indices through ' +
      'the template (`plugins.index_state_management.policy_id`). Needs the ISM plugin (Amazon OpenSearch Service ' +
      'has it; OpenSearch Serverless does not support ISM).',
  );

export type IsmPolicyConfig = z.infer<typeof ismPolicySchema>;

export const openSearchSinkConfigSchema = z
  .object({
    type: z.literal('opensearch'),
    endpoint: z
      .url()
      .optional()
      .describe(
        'Cluster URL, e.g. https://search-traces-abc.us-east-1.es.amazonaws.com or http://127.0.0.1:9200.',
      ),
    domainName: z
      .string()
      .min(3)
      .optional()
      .describe(
        'Instead of `endpoint`: look the endpoint up at start-up by Amazon OpenSearch Service domain name ' +
          '(DescribeDomain; the VPC endpoint when the domain has one).',
      ),
    auth: authSchema.default({ type: 'none' }),
    tls: z
      .object({
        rejectUnauthorized: z
          .boolean()
          .default(true)
          .describe('Verify the server certificate. Turn off only for a local self-signed cluster.'),
      })
      .strict()
      .default({ rejectUnauthorized: true }),
    index: z
      .string()
      .min(1)
      .refine(
        (index) => /^[^A-Z\\/*?"<>| ,#:{}%]+$/.test(index.replace(/%\{[^}]*\}/g, 'x')),
        'lowercase, without \\ / * ? " < > | , # : or spaces (outside %{date} patterns)',
      )
      .describe(
        'Target index. Date patterns `%{yyyy.MM.dd}` (also yyyy, MM, dd, HH, and ISO week `xxxx.ww`) are filled ' +
          'from the document time (`timestampField`) in UTC, never from processing time, so a replay lands in the ' +
          'same index: `traces-%{yyyy.MM.dd}`. Without a pattern it names an index, a write alias or a data stream.',
      ),
    dataStream: z
      .boolean()
      .default(false)
      .describe(
        'The index is a data stream: the action is always `create`, documents get `@timestamp` from ' +
          '`timestampField`, and the bootstrapped template declares the data stream.',
      ),
    timestampField: z
      .string()
      .min(1)
      .optional()
      .describe(
        'Dotted path of the document time used for date patterns and `@timestamp`, e.g. "startTimeUnixNano" or ' +
          '"windowStart". Default: the Kinesis arrival time of the record (also stable across replays). A document ' +
          'whose field is missing or not a time goes to the dead-letter queue.',
      ),
    timestampUnit: z
      .enum(['ns', 'us', 'ms', 's'])
      .default('ms')
      .describe(
        'Unit of a numeric (or decimal string) `timestampField` since the Unix epoch; ISO-8601 strings are read as is.',
      ),
    timestampTarget: z
      .union([z.string().min(1), z.literal(false)])
      .default('@timestamp')
      .describe(
        'Field that receives the document time as an ISO-8601 date (every sub-millisecond digit kept; mapped ' +
          '`date_nanos` for spans) for time filters and Dashboards; false for none. Data streams need `@timestamp`.',
      ),
    documentId: documentIdSchema.default('origin'),
    action: z
      .enum(['create', 'index'])
      .default('create')
      .describe(
        '`create` writes a document only if its id is new: a replayed document answers 409 and counts as written ' +
          '(first write wins, no extra version). `index` overwrites (last write wins).',
      ),
    template: z
      .object({
        kind: z
          .enum(['spans', 'red_windows'])
          .describe('Which shipped mapping (src/sinks/opensearch/templates.ts) the template carries.'),
        name: z
          .string()
          .min(1)
          .optional()
          .describe('Index template name. Default: the sink name prefixed "ksw-".'),
        indexPatterns: z
          .array(z.string().min(1))
          .optional()
          .describe(
            'Index patterns the template applies to. Default: `index` with each date pattern replaced by `*`.',
          ),
        shards: z.number().int().min(1).default(1).describe('index.number_of_shards.'),
        replicas: z.number().int().min(0).default(1).describe('index.number_of_replicas.'),
        refreshInterval: z.string().default('10s').describe('index.refresh_interval (ingest-heavy default).'),
        ismPolicy: ismPolicySchema.optional(),
        overwrite: z
          .boolean()
          .default(true)
          .describe(
            'Put the template at every start-up (idempotent: same body, new version) so a newer worker ships its ' +
              'mappings; false leaves an existing template alone (an operator manages it).',
          ),
      })
      .strict()
      .optional()
      .describe(
        'Bootstrap an index template (and ISM policy) at start-up, idempotently. OpenSearch Serverless accepts ' +
          'index templates but not ISM.',
      ),
    bulk: z
      .object({
        maxDocuments: z.number().int().min(1).default(1_000).describe('Documents per bulk request at most.'),
        maxBytes: z
          .number()
          .int()
          .min(1024)
          .default(5 * MiB)
          .describe(
            'Bytes of NDJSON body per bulk request at most (a single larger document is sent alone).',
          ),
        flushIntervalMs: z
          .number()
          .int()
          .min(1)
          .default(1_000)
          .describe('Send a partial bulk request this long after its first document.'),
        concurrency: z
          .number()
          .int()
          .min(1)
          .default(4)
          .describe(
            'Bulk requests in flight at most. Adaptive: halved on 429 (down to 1), grown back by one after a ' +
              'run of throttle-free requests.',
          ),
        maxBufferedBytes: z
          .number()
          .int()
          .min(1024)
          .default(64 * MiB)
          .describe(
            'Writes wait (backpressure on the shard readers) while this many bytes are buffered, in flight or ' +
              'waiting for a retry.',
          ),
        requestTimeoutMs: z.number().int().min(100).default(60_000).describe('Timeout of one bulk request.'),
      })
      .strict()
      .prefault({}),
    retry: z
      .object({
        initialBackoffMs: z
          .number()
          .int()
          .min(1)
          .default(200)
          .describe('Backoff before the first retry; doubles per attempt, full jitter.'),
        maxBackoffMs: z.number().int().min(1).default(30_000).describe('Backoff cap.'),
        budgetMs: z
          .number()
          .int()
          .min(0)
          .default(300_000)
          .describe(
            'How long a document may keep failing with retryable errors (429, 5xx, es_rejected_execution, network) ' +
              'from its first attempt before it goes to the dead-letter queue with its last error.',
          ),
      })
      .strict()
      .prefault({}),
    offload: z
      .object({
        bucket: z.string().min(3).describe('Bucket for offloaded field values.'),
        prefix: z
          .string()
          .default('offload/')
          .describe(
            'Objects are written at `<prefix><index>/<_id>/<field path>.json`: deterministic, so a replay ' +
              'overwrites instead of adding objects. Expire them with a lifecycle rule matching the index retention.',
          ),
        maxFieldBytes: z
          .number()
          .int()
          .min(1)
          .default(32 * 1024)
          .describe('Offload a field whose JSON is larger than this many bytes.'),
        fields: z
          .array(z.string().min(1))
          .default([])
          .describe(
            'Dotted paths of fields to consider, e.g. "attributes.db.statement"; `attributes.*` considers each ' +
              'member of `attributes`. Default: every top-level field.',
          ),
        pointerField: z
          .string()
          .regex(/^[A-Za-z][A-Za-z0-9_]*$/)
          .default('offloaded')
          .describe(
            'Top-level field that receives `{"<path>": {"$s3pointer": {...}}}` for each offloaded field (mapped ' +
              'as a non-indexed object, so pointers never conflict with the field types).',
          ),
      })
      .strict()
      .optional()
      .describe(
        'Move large field values to S3 before indexing, leaving the shared S3 pointer envelope in the document.',
      ),
    closeTimeoutMs: z
      .number()
      .int()
      .min(0)
      .default(30_000)
      .describe(
        'On close, how long to keep retrying. Documents still unwritten then stay unacked and are read again after restart.',
      ),
  })
  .strict()
  .superRefine((config, ctx) => {
    try {
      checkIndexPattern(config.index);
    } catch (err) {
      ctx.addIssue({ code: 'custom', path: ['index'], message: (err as Error).message });
    }
    try {
      compileDocumentId(config.documentId);
    } catch (err) {
      ctx.addIssue({ code: 'custom', path: ['documentId'], message: (err as Error).message });
    }
    if (!config.endpoint === !config.domainName) {
      ctx.addIssue({
        code: 'custom',
        path: ['endpoint'],
        message: 'set exactly one of endpoint (a URL) or domainName (looked up with DescribeDomain)',
      });
    }
    if (config.domainName && (config.auth.type !== 'aws_sigv4' || config.auth.service !== 'es')) {
      ctx.addIssue({
        code: 'custom',
        path: ['domainName'],
        message:
          'domainName needs auth: { type: aws_sigv4, service: es } (domain lookup is for OpenSearch Service)',
      });
    }
    if (config.dataStream && config.action !== 'create') {
      ctx.addIssue({
        code: 'custom',
        path: ['action'],
        message: 'data streams accept only `create`: set action: create (the default)',
      });
    }
    if (config.dataStream && config.timestampTarget !== '@timestamp') {
      ctx.addIssue({
        code: 'custom',
        path: ['timestampTarget'],
        message: 'data streams need the document time in @timestamp: set timestampTarget: "@timestamp"',
      });
    }
    if (config.dataStream && config.index.includes('%{')) {
      ctx.addIssue({
        code: 'custom',
        path: ['index'],
        message: 'a data stream name has no date pattern: the data stream rolls its own backing indices',
      });
    }
    if (config.template?.ismPolicy && config.auth.type === 'aws_sigv4' && config.auth.service === 'aoss') {
      ctx.addIssue({
        code: 'custom',
        path: ['template', 'ismPolicy'],
        message:
          'OpenSearch Serverless has no ISM: remove ismPolicy (collections manage retention themselves)',
      });
    }
  })
  .describe(
    'Indexes events into OpenSearch with the bulk API: deterministic ids, date-pattern indices, per-item retries ' +
      'with backoff and a time budget, adaptive concurrency, dead-lettering; acks documents once indexed.',
  );

export type OpenSearchSinkConfig = z.infer<typeof openSearchSinkConfigSchema>;
