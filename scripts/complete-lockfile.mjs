#!/usr/bin/env node
// npm records an optional platform package (e.g. @biomejs/cli-darwin-arm64) in package-lock.json only
// when the registry serves it; some mirrors serve only this machine's platform. `npm ci` then rejects
// the lock as out of sync. This adds the missing optional entries with their os/cpu constraints, which
// is what npm itself writes, so `npm ci` validates the lock and skips them on other platforms.
// Run after `npm install` changed the lock: `node scripts/complete-lockfile.mjs`.
import { readFileSync, writeFileSync } from 'node:fs';

const file = new URL('../package-lock.json', import.meta.url);
const lock = JSON.parse(readFileSync(file, 'utf8'));
const OS = ['darwin', 'linux', 'win32', 'android', 'freebsd', 'openbsd', 'netbsd', 'sunos', 'aix'];
const CPU = ['arm64', 'x64', 'ia32', 'arm', 'ppc64', 's390x', 'riscv64', 'loong64', 'mips64el'];

function constraints(name) {
  const base = name.split('/').pop();
  const parts = base.split('-');
  const os = OS.find((o) => parts.includes(o) || (o === 'win32' && parts.includes('windows')));
  const cpu = CPU.find(
    (c) =>
      parts.includes(c) ||
      (c === 'x64' && parts.includes('amd64')) ||
      (c === 'ia32' && parts.includes('x86')),
  );
  const out = {};
  if (os) out.os = [os];
  if (cpu) out.cpu = [cpu];
  if (parts.includes('musl')) out.libc = ['musl'];
  else if (os === 'linux' && (parts.includes('gnu') || parts.includes('glibc'))) out.libc = ['glibc'];
  return out;
}

let added = 0;
for (const [where, pkg] of Object.entries(lock.packages)) {
  for (const [dep, version] of Object.entries(pkg.optionalDependencies ?? {})) {
    const nested = `${where ? `${where}/` : ''}node_modules/${dep}`;
    if (lock.packages[nested] || lock.packages[`node_modules/${dep}`]) continue;
    const c = constraints(dep);
    if (!c.os && !c.cpu) continue; // not a platform binary: leave it to npm
    lock.packages[`node_modules/${dep}`] = {
      version,
      ...(pkg.dev ? { dev: true } : {}),
      optional: true,
      ...c,
    };
    added += 1;
  }
}
writeFileSync(file, `${JSON.stringify(lock, null, 2)}\n`);
console.log(`complete-lockfile: added ${added} optional platform entries`);
