/**
 * The documentation holds together: every relative link of README.md and docs/*.md names a file that
 * exists and, with a #fragment, a heading of that file; the README's test commands are exactly the ones
 * CI runs; every complete config shown in the docs is one the worker accepts; docs/dependencies.md names
 * every package of package.json, with its pinned version.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'vitest';
import { parse } from 'yaml';
import { validateConfig } from '../../src/config/load.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const DOCS = path.join(ROOT, 'docs');
const pages = [
  'README.md',
  ...readdirSync(DOCS)
    .filter((f) => f.endsWith('.md'))
    .map((f) => `docs/${f}`),
];
const read = (page: string) => readFileSync(path.join(ROOT, page), 'utf8');

/** Markdown outside fenced code blocks (links and headings inside code are not links and headings). */
function prose(text: string): string {
  return text.replace(/^```[^\n]*\n[\s\S]*?^```[^\n]*$/gm, '');
}

/** GitHub's heading anchors: lowercase, punctuation dropped, spaces to hyphens, repeats numbered. */
function anchors(markdown: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const m of prose(markdown).matchAll(/^#{1,6} +(.+?) *#* *$/gm)) {
    const base = m[1]!
      .replace(/\[([^\]]*)\]\([^)]*\)/g, '$1')
      .toLowerCase()
      .replace(/[^\p{L}\p{N} _-]/gu, '')
      .replace(/ /g, '-');
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n === 0 ? base : `${base}-${n}`);
  }
  return out;
}

/** Fenced code blocks with their info string. */
function codeBlocks(markdown: string): Array<{ lang: string; body: string }> {
  return [...markdown.matchAll(/^```([^\n]*)\n([\s\S]*?)^```$/gm)].map((m) => ({
    lang: m[1]!.trim(),
    body: m[2]!,
  }));
}

describe('documentation', () => {
  it('computes GitHub anchors as GitHub does', () => {
    const a = anchors('# Fleet: leases, balancing, EFO, KPL\n## `type: s3` sink\n## Metrics\n## Metrics\n');
    assert.deepEqual([...a], ['fleet-leases-balancing-efo-kpl', 'type-s3-sink', 'metrics', 'metrics-1']);
  });

  it('every relative link names an existing file and heading', () => {
    const broken: string[] = [];
    for (const page of pages) {
      const text = prose(read(page));
      for (const m of text.matchAll(/\[[^\]]*\]\(([^)\s]+)\)/g)) {
        const target = m[1]!;
        if (/^[a-z]+:/.test(target)) continue;
        const [file, fragment] = target.split('#') as [string, string | undefined];
        const resolved =
          file === '' ? path.join(ROOT, page) : path.resolve(path.dirname(path.join(ROOT, page)), file);
        if (!existsSync(resolved)) {
          broken.push(`${page}: ${target} (no such file)`);
          continue;
        }
        if (fragment !== undefined && resolved.endsWith('.md')) {
          const known = anchors(readFileSync(resolved, 'utf8'));
          if (!known.has(fragment)) broken.push(`${page}: ${target} (no such heading)`);
        }
      }
    }
    assert.deepEqual(broken, []);
  });

  it("the README's test commands are exactly what .ci/run runs, in order", () => {
    const readme = read('README.md');
    const section = readme.split(/^## Tests$/m)[1]?.split(/^## /m)[0];
    assert.ok(section, 'README.md has a "## Tests" section');
    const block = codeBlocks(section).find((b) => b.lang === 'bash');
    assert.ok(block, 'the Tests section opens with a bash block');
    const documented = block.body
      .split('\n')
      .map((l) => l.replace(/#.*/, '').trim())
      .filter(Boolean);
    const ci = read('.ci/run')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => /^npm /.test(l))
      .map((l) => l.replace(/ --no-audit --no-fund$/, ''));
    assert.deepEqual(documented, ci);
  });

  it('every complete config in the docs validates', () => {
    let checked = 0;
    for (const page of pages) {
      for (const block of codeBlocks(read(page))) {
        if (block.lang !== 'yaml') continue;
        const doc = parse(block.body) as Record<string, unknown> | null;
        // A complete config has the three required sections; the others are fragments of one.
        if (!doc || typeof doc !== 'object' || !('consumers' in doc && 'sinks' in doc && 'dlq' in doc))
          continue;
        validateConfig(doc, `${page} (yaml block)`, {});
        checked++;
      }
    }
    assert.ok(checked >= 1, `no complete config found in the docs (checked ${checked})`);
  });

  it('docs/dependencies.md names every dependency of package.json, with its pinned version', () => {
    const pkg = JSON.parse(read('package.json')) as Record<string, Record<string, string> | undefined>;
    const page = read('docs/dependencies.md');
    const missing: string[] = [];
    for (const field of ['dependencies', 'devDependencies']) {
      for (const [name, version] of Object.entries(pkg[field] ?? {})) {
        assert.match(version, /^\d+\.\d+\.\d+(-[\w.]+)?$/, `${name}: ${version} is not an exact version`);
        // The name as code, and its version on the same line (a table row).
        const row = page.split('\n').find((l) => l.includes(`\`${name}\``));
        if (!row) missing.push(`${field}: ${name} is not named`);
        else if (!row.includes(version))
          missing.push(`${field}: ${name} ${version} is not the version named`);
      }
    }
    assert.deepEqual(missing, []);
  });
});

describe('alert rules and their runbooks', () => {
  type Rule = { alert: string; for?: string; annotations: Record<string, string> };
  const rules: Rule[] = parse(read('deploy/prometheus/alerts.yaml')).groups.flatMap(
    (g: { rules: Rule[] }) => g.rules,
  );
  const tests: Array<{ alert_rule_test: Array<{ alertname: string; exp_alerts?: unknown[] }> }> = parse(
    read('deploy/prometheus/alerts.test.yaml'),
  ).tests;
  const cases = tests.flatMap((t) => t.alert_rule_test);

  it('every alert links its own runbook section of docs/operations.md', () => {
    const headings = anchors(prose(read('docs/operations.md')));
    assert.ok(rules.length >= 25);
    for (const rule of rules) {
      const url = rule.annotations.runbook_url ?? '';
      const m = /\/docs\/operations\.md#([a-z0-9-]+)$/.exec(url);
      assert.ok(m, `${rule.alert}: runbook_url ${url || '(none)'} does not point into docs/operations.md`);
      assert.ok(headings.has(m[1]!), `${rule.alert}: no heading #${m[1]} in docs/operations.md`);
      assert.match(
        read('docs/operations.md'),
        new RegExp(`^### .*\\b${rule.alert}\\b`, 'm'),
        `${rule.alert} is not named in a runbook heading`,
      );
    }
  });

  it('every alert has a promtool case where it fires and one where it stays silent', () => {
    for (const rule of rules) {
      const mine = cases.filter((c) => c.alertname === rule.alert);
      assert.ok(
        mine.some((c) => (c.exp_alerts ?? []).length > 0),
        `${rule.alert}: no case where it fires`,
      );
      assert.ok(
        mine.some((c) => (c.exp_alerts ?? []).length === 0),
        `${rule.alert}: no case where it stays silent`,
      );
    }
  });
});
