/**
 * Whether this machine has a Docker engine the containers tier can use: `docker info` answers with a
 * server version. Otherwise the reason, in one line, for the tier to print when it skips itself.
 */
import { spawnSync } from 'node:child_process';

export type DockerEngine =
  | { readonly available: true; readonly version: string }
  | { readonly available: false; readonly reason: string };

function firstLine(text: string): string {
  return (
    text
      .split('\n')
      .map((l) => l.trim())
      .find(Boolean) ?? ''
  );
}

export function dockerEngine(env: NodeJS.ProcessEnv = process.env): DockerEngine {
  const result = spawnSync('docker', ['info', '--format', '{{.ServerVersion}}'], {
    env,
    encoding: 'utf8',
    timeout: 30_000,
  });
  if (result.error) {
    const code = (result.error as NodeJS.ErrnoException).code;
    return {
      available: false,
      reason: code === 'ENOENT' ? 'no docker command on PATH' : `docker info: ${result.error.message}`,
    };
  }
  if (result.status !== 0) {
    return {
      available: false,
      reason:
        firstLine(result.stderr) || firstLine(result.stdout) || `docker info exited with ${result.status}`,
    };
  }
  const version = firstLine(result.stdout);
  if (!version) return { available: false, reason: 'docker info answered without a server version' };
  return { available: true, version };
}
