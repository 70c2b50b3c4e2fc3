/**
 * The peer provider of the tier running: `KSW_PEERS=container` (set by the containers project in
 * vitest.config.ts) gives containers, anything else the processes of the services tier. A suite calls
 * `peers()` and uses only the PeerProvider interface, so one suite runs unchanged in both tiers.
 */
import type { PeerProvider } from './types.js';

export type { AwsStackPeer, DynamoDBPeer, GluePeer, PeerProvider, PyarrowPeer, S3Peer } from './types.js';

export function peerKind(env: NodeJS.ProcessEnv = process.env): 'process' | 'container' {
  const value = env.KSW_PEERS ?? 'process';
  if (value !== 'process' && value !== 'container') {
    throw new Error(`KSW_PEERS must be "process" or "container", not ${JSON.stringify(value)}`);
  }
  return value;
}

/** Loaded lazily: the process tier never imports testcontainers, the container tier never needs the JVMs. */
export async function peers(): Promise<PeerProvider> {
  return peerKind() === 'container'
    ? (await import('./containers.js')).containerPeers
    : (await import('./process.js')).processPeers;
}
