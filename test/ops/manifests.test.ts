/**
 * Deployment manifests, checked the way a cluster and AWS would see them:
 *  - `kustomize build` of the base and the local overlay, every object validated against the Kubernetes
 *    (and prometheus-operator) schemas, plus the rules that matter for this worker: grace period longer
 *    than the shutdown deadline, probes on /healthz and /readyz, read-only root with a writable /tmp,
 *    non-root, selectors that match, the ConfigMap's worker config valid for our schema;
 *  - the ECS task definition (same rules) and the IAM policy: every AWS API the worker's code calls is
 *    allowed by the task role policy, so a new call without a permission fails here, not in production.
 * Needs the tools scripts/ops/run.sh fetches (KSW_OPS_BIN).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { validateConfig } from '../../src/config/load.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const BIN = process.env.KSW_OPS_BIN ?? path.join(ROOT, '.local/ops/bin');

type K8sObject = {
  apiVersion: string;
  kind: string;
  metadata: {
    name: string;
    namespace?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  // biome-ignore lint/suspicious/noExplicitAny: rendered manifests of several kinds, checked field by field
  spec?: any;
  data?: Record<string, string>;
};

function kustomize(dir: string): K8sObject[] {
  const out = execFileSync(path.join(BIN, 'kustomize'), ['build', path.join(ROOT, dir)], {
    encoding: 'utf8',
  });
  return parseAllDocuments(out).map((d) => d.toJS() as K8sObject);
}

const MODELS: Record<string, () => Promise<new (data: never) => { validate(): void }>> = {
  'v1/ServiceAccount': async () => (await import('kubernetes-models/v1/ServiceAccount')).ServiceAccount,
  'v1/ConfigMap': async () => (await import('kubernetes-models/v1/ConfigMap')).ConfigMap,
  'v1/Service': async () => (await import('kubernetes-models/v1/Service')).Service,
  'v1/Namespace': async () => (await import('kubernetes-models/v1/Namespace')).Namespace,
  'apps/v1/Deployment': async () => (await import('kubernetes-models/apps/v1/Deployment')).Deployment,
  'policy/v1/PodDisruptionBudget': async () =>
    (await import('kubernetes-models/policy/v1/PodDisruptionBudget')).PodDisruptionBudget,
  'autoscaling/v2/HorizontalPodAutoscaler': async () =>
    (await import('kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler')).HorizontalPodAutoscaler,
  'monitoring.coreos.com/v1/ServiceMonitor': async () =>
    (await import('@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor'))
      .ServiceMonitor,
};

async function validateSchema(obj: K8sObject): Promise<void> {
  const load = MODELS[`${obj.apiVersion}/${obj.kind}`];
  assert.ok(load, `no schema for ${obj.apiVersion} ${obj.kind}: add it to MODELS`);
  const Model = await load();
  new Model(obj as never).validate();
}

function matches(selector: Record<string, string>, labels: Record<string, string> | undefined): boolean {
  return Object.entries(selector).every(([k, v]) => labels?.[k] === v);
}

/** The Deployment's env as a map, for interpolating the worker config like the container would. */
function containerEnv(deployment: K8sObject): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const e of deployment.spec.template.spec.containers[0].env ?? []) {
    env[e.name] = e.value ?? (e.valueFrom?.fieldRef ? 'pod-name-from-downward-api' : undefined);
  }
  return env;
}

for (const dir of ['k8s/base', 'k8s/overlays/local']) {
  describe(`kustomize build ${dir}`, () => {
    const objects = kustomize(dir);
    const byKind = (kind: string) => objects.filter((o) => o.kind === kind);

    it('renders only objects that pass the Kubernetes schemas', async () => {
      assert.ok(objects.length >= 7);
      for (const obj of objects) await validateSchema(obj);
    });

    it('gives the worker time to flush, probes, a read-only root with writable /tmp, and no root', () => {
      const [deployment] = byKind('Deployment');
      const [configMap] = byKind('ConfigMap');
      assert.ok(deployment && configMap);
      const pod = deployment.spec.template.spec;
      const container = pod.containers[0];
      const config = validateConfig(
        (parseAllDocuments(configMap.data!['worker.yaml']!)[0]!.toJS() as unknown) ?? {},
        `${dir} ConfigMap worker.yaml`,
        containerEnv(deployment),
      );
      assert.ok(
        pod.terminationGracePeriodSeconds * 1000 >= config.shutdown.deadlineMs + 10_000,
        `terminationGracePeriodSeconds ${pod.terminationGracePeriodSeconds} s must exceed shutdown.deadlineMs ${config.shutdown.deadlineMs} ms by 10 s`,
      );
      assert.equal(
        config.server.host,
        '0.0.0.0',
        'probes and Prometheus need the ops server on all interfaces',
      );
      const port = container.ports.find((p: { name: string }) => p.name === 'metrics');
      assert.equal(port.containerPort, config.server.port);
      assert.equal(container.livenessProbe.httpGet.path, '/healthz');
      assert.equal(container.readinessProbe.httpGet.path, '/readyz');
      assert.equal(container.securityContext.readOnlyRootFilesystem, true);
      assert.equal(container.securityContext.allowPrivilegeEscalation, false);
      assert.equal(pod.securityContext.runAsNonRoot, true);
      const tmp = container.volumeMounts.find((m: { mountPath: string }) => m.mountPath === '/tmp');
      assert.ok(tmp, 'Parquet files are staged in /tmp: it must be a writable volume');
      assert.ok(
        pod.volumes.find((v: { name: string; emptyDir?: unknown }) => v.name === tmp.name && v.emptyDir),
      );
      const configMount = container.volumeMounts.find(
        (m: { mountPath: string }) => m.mountPath === '/etc/ksw',
      );
      assert.equal(
        pod.volumes.find((v: { name: string }) => v.name === configMount.name).configMap.name,
        configMap.metadata.name,
      );
      assert.equal(pod.serviceAccountName, byKind('ServiceAccount')[0]!.metadata.name);
    });

    it('selectors of the Service, PDB and ServiceMonitor find the pods; the HPA targets the Deployment', () => {
      const [deployment] = byKind('Deployment');
      const podLabels = deployment!.spec.template.metadata.labels;
      assert.ok(matches(deployment!.spec.selector.matchLabels, podLabels));
      const [service] = byKind('Service');
      assert.ok(Object.keys(service!.spec.selector).length > 0 && matches(service!.spec.selector, podLabels));
      const [pdb] = byKind('PodDisruptionBudget');
      assert.ok(matches(pdb!.spec.selector.matchLabels, podLabels));
      const [monitor] = byKind('ServiceMonitor');
      assert.ok(matches(monitor!.spec.selector.matchLabels, service!.metadata.labels));
      assert.equal(monitor!.spec.endpoints[0].port, service!.spec.ports[0].name);
      // prometheus-operator names the job after the Service's jobLabel label (else after the Service):
      // the alert rules ask for job="ksw", so the label must exist on the Service and say so.
      const rules = readFileSync(path.join(ROOT, 'deploy/prometheus/alerts.yaml'), 'utf8');
      const jobs = new Set([...rules.matchAll(/\bjob="([^"]+)"/g)].map((m) => m[1]!));
      assert.deepEqual([...jobs], ['ksw']);
      assert.ok(monitor!.spec.jobLabel, 'ServiceMonitor needs jobLabel, or the job is the Service name');
      assert.equal(service!.metadata.labels?.[monitor!.spec.jobLabel], 'ksw');
      // kube-prometheus-stack's Prometheus selects ServiceMonitors by their `release` label.
      assert.ok(monitor!.metadata.labels?.release, 'ServiceMonitor needs a release label');
      // The ServiceMonitor scrapes the pods; prometheus.io annotations as well would scrape them twice.
      const annotations = deployment!.spec.template.metadata.annotations ?? {};
      assert.equal(annotations['prometheus.io/scrape'], undefined);
      const [hpa] = byKind('HorizontalPodAutoscaler');
      assert.equal(hpa!.spec.scaleTargetRef.name, deployment!.metadata.name);
      assert.ok(hpa!.spec.minReplicas <= hpa!.spec.maxReplicas);
      assert.equal(
        deployment!.spec.replicas,
        undefined,
        'no fixed replicas beside an autoscaler: every apply would reset the count',
      );
    });

    it('the V8 heap stays well below the container memory limit', () => {
      const [deployment] = byKind('Deployment');
      const container = deployment!.spec.template.spec.containers[0];
      const options = container.env.find((e: { name: string }) => e.name === 'NODE_OPTIONS').value;
      const heapMiB = Number(/--max-old-space-size=(\d+)/.exec(options)![1]);
      const limit = /^(\d+)(Mi|Gi)$/.exec(container.resources.limits.memory)!;
      const limitMiB = Number(limit[1]) * (limit[2] === 'Gi' ? 1024 : 1);
      // Room for DuckDB's native memory, buffers and the code: at most 60 % of the limit for the heap.
      assert.ok(heapMiB <= 0.6 * limitMiB, `heap ${heapMiB} MiB in a ${limitMiB} MiB limit`);
    });
  });
}

describe('base vs local overlay', () => {
  it('the base uses IRSA and no static credentials; the overlay drops the role and uses emulators', () => {
    const base = kustomize('k8s/base');
    const local = kustomize('k8s/overlays/local');
    const sa = (objs: K8sObject[]) => objs.find((o) => o.kind === 'ServiceAccount')!;
    assert.match(
      sa(base).metadata.annotations?.['eks.amazonaws.com/role-arn'] ?? '',
      /^arn:aws:iam::\d{12}:role\//,
    );
    assert.equal(sa(local).metadata.annotations, undefined);
    const worker = (objs: K8sObject[]) => objs.find((o) => o.kind === 'ConfigMap')!.data!['worker.yaml']!;
    assert.doesNotMatch(worker(base), /^\s*(credentials|endpoints):/m);
    assert.match(worker(local), /^\s*endpoints:/m);
    assert.ok(local.every((o) => o.kind === 'Namespace' || o.metadata.namespace === 'ksw-local'));
  });
});

describe('ECS task definition', () => {
  const task = JSON.parse(readFileSync(path.join(ROOT, 'deploy/ecs/task-definition.json'), 'utf8'));
  const container = task.containerDefinitions[0];

  it('stops within the grace period, logs to CloudWatch, checks health, runs read-only as non-root', () => {
    // The image's default config (examples/worker.yaml) is what the task runs, with the task's environment.
    const env = Object.fromEntries(
      container.environment.map((e: { name: string; value: string }) => [e.name, e.value]),
    );
    const config = validateConfig(
      parseAllDocuments(readFileSync(path.join(ROOT, 'examples/worker.yaml'), 'utf8'))[0]!.toJS(),
      'examples/worker.yaml',
      { ...env, HOSTNAME: 'task' },
    );
    assert.ok(container.stopTimeout * 1000 >= config.shutdown.deadlineMs + 10_000);
    assert.ok(container.stopTimeout <= 120, 'ECS caps stopTimeout at 120 s');
    assert.equal(container.logConfiguration.logDriver, 'awslogs');
    assert.deepEqual(container.healthCheck.command.slice(0, 2), ['CMD', 'node']);
    assert.match(container.healthCheck.command.at(-1), /\/healthz/);
    assert.equal(container.readonlyRootFilesystem, true);
    assert.notEqual(container.user.split(':')[0], '0');
    const tmp = container.mountPoints.find((m: { containerPath: string }) => m.containerPath === '/tmp');
    assert.ok(task.volumes.some((v: { name: string }) => v.name === tmp.sourceVolume));
    assert.equal(container.portMappings[0].containerPort, config.server.port);
    assert.equal(config.server.host, '0.0.0.0');
  });
});

/** IAM actions needed by each SDK command the worker may send. */
function iamActions(service: string, command: string): string[] {
  if (service === 's3') {
    const map: Record<string, string[]> = {
      ListObjectsV2: ['s3:ListBucket'],
      CreateMultipartUpload: ['s3:PutObject'],
      UploadPart: ['s3:PutObject'],
      CompleteMultipartUpload: ['s3:PutObject'],
      HeadObject: ['s3:GetObject'],
      HeadBucket: ['s3:ListBucket'],
    };
    return map[command] ?? [`s3:${command}`];
  }
  if (service === 'opensearch') return [`es:${command}`];
  return [`${service}:${command}`];
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = path.join(dir, f);
    return statSync(p).isDirectory() ? sourceFiles(p) : p.endsWith('.ts') ? [p] : [];
  });
}

describe('IAM task role policy', () => {
  const policy = JSON.parse(readFileSync(path.join(ROOT, 'deploy/iam/task-role-policy.json'), 'utf8'));
  const allowed = new Set<string>(
    policy.Statement.filter((s: { Effect: string }) => s.Effect === 'Allow').flatMap(
      (s: { Action: string | string[] }) => (Array.isArray(s.Action) ? s.Action : [s.Action]),
    ),
  );

  it('allows every AWS API the worker calls, and nothing with a wildcard action', () => {
    // The worker is everything but the CLI helpers that run outside it (demo, produce) and the emulators.
    const files = sourceFiles(path.join(ROOT, 'src')).filter(
      (f) => !/[/\\](cli|local|producer)[/\\]/.test(f),
    );
    const needed = new Set<string>();
    for (const file of files) {
      const text = readFileSync(file, 'utf8');
      const clients = [...text.matchAll(/from '@aws-sdk\/client-([a-z0-9-]+)'/g)].map((m) => m[1]!);
      for (const m of text.matchAll(/new ([A-Z][A-Za-z0-9]+)Command\(/g)) {
        // Creating buckets and streams is for tests and the demo; the worker never does.
        if (m[1] === 'CreateBucket' || m[1] === 'CreateStream') continue;
        // The client whose import names the command, else the file's only (non-OpenSearch) client.
        const importing = [
          ...text.matchAll(/import\s*(?:type\s*)?\{([^}]*)\}\s*from '@aws-sdk\/client-([a-z0-9-]+)'/g),
        ].find((i) => new RegExp(`\\b${m[1]}Command\\b`).test(i[1]!))?.[2];
        const service = importing ?? clients.find((c) => c !== 'opensearch') ?? clients[0];
        assert.ok(service, `${file}: ${m[1]}Command without an @aws-sdk client import`);
        for (const action of iamActions(service, m[1]!)) needed.add(action);
      }
    }
    assert.ok(
      needed.has('kinesis:GetRecords') && needed.has('dynamodb:UpdateItem') && needed.has('s3:PutObject'),
    );
    const missing = [...needed].filter((a) => !allowed.has(a));
    assert.deepEqual(missing, [], `deploy/iam/task-role-policy.json lacks ${missing.join(', ')}`);
    assert.ok(
      [...allowed].every((a) => !a.includes('*')),
      'no wildcard actions',
    );
    for (const s of policy.Statement) {
      const resources = Array.isArray(s.Resource) ? s.Resource : [s.Resource];
      assert.ok(
        resources.every((r: string) => r !== '*'),
        `statement ${s.Sid} must name its resources`,
      );
    }
  });
});

describe('shipped worker configs', () => {
  const env = {
    STREAM_NAME: 'spans',
    LAKE_BUCKET: 'lake',
    AWS_REGION: 'us-east-1',
    LEASE_TABLE: 'leases',
    POD_NAME: 'ksw-0',
    HOSTNAME: 'host',
  };

  it('every example and the compose worker config pass validation', async () => {
    const { loadConfig } = await import('../../src/config/load.js');
    const files = [
      ...readdirSync(path.join(ROOT, 'examples'))
        // *.test.yaml are `ksw test` pipeline tests (their own schema; run by test/unit/pipeline-tests.test.ts).
        .filter((f) => f.endsWith('.yaml') && !f.endsWith('.test.yaml'))
        .map((f) => `examples/${f}`),
      'deploy/compose/worker.yaml',
    ];
    assert.ok(files.length >= 3);
    for (const file of files) loadConfig(path.join(ROOT, file), env);
  });

  it('the compose worker writes only to buckets the compose stack creates, and reaches its services', async () => {
    const { loadConfig } = await import('../../src/config/load.js');
    const config = loadConfig(path.join(ROOT, 'deploy/compose/worker.yaml'), env);
    const compose = readFileSync(path.join(ROOT, 'docker-compose.yml'), 'utf8');
    const created = new Set([...compose.matchAll(/local\/([a-z0-9-]+)/g)].map((m) => m[1]!));
    const buckets = new Set<string>([config.dlq.bucket]);
    for (const sink of Object.values(config.sinks)) {
      if (sink.type === 's3_parquet') buckets.add(sink.bucket);
      if (sink.type === 'opensearch') {
        assert.match(sink.endpoint ?? '', /^http:\/\/opensearch:9200$/);
        if (sink.offload) buckets.add(sink.offload.bucket);
      }
    }
    for (const b of config.decode.s3Pointers.allowedBuckets) buckets.add(b);
    assert.deepEqual(
      [...buckets].filter((b) => !created.has(b)),
      [],
      'buckets the compose worker uses but docker-compose.yml does not create',
    );
    // The span processors are what the Grafana dashboard's RED and sampling panels show.
    assert.deepEqual(
      config.processors.map((p) => p.type),
      ['otel_spans', 'red_metrics', 'tail_sampling'],
    );
  });
});
