/**
 * Endpoint lookup of an Amazon OpenSearch Service domain by name (DescribeDomain), kept apart so the
 * only AWS control-plane call of the sink is in one place (and in the IAM policy as es:DescribeDomain).
 */
import { DescribeDomainCommand, OpenSearchClient } from '@aws-sdk/client-opensearch';

/** An AWS credential provider (the shape the SDK's default chain resolves to). */
export type CredentialProvider = () => Promise<{
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly sessionToken?: string;
  readonly expiration?: Date;
}>;

export async function lookupDomainEndpoint(
  domainName: string,
  region: string,
  credentials: CredentialProvider,
  endpointOverride?: string,
): Promise<string> {
  const client = new OpenSearchClient({
    region,
    credentials,
    ...(endpointOverride ? { endpoint: endpointOverride } : {}),
  });
  try {
    const out = await client.send(new DescribeDomainCommand({ DomainName: domainName }));
    const status = out.DomainStatus;
    // A VPC domain has no public endpoint, only Endpoints.vpc; the worker then runs inside that VPC.
    const host = status?.Endpoint ?? status?.Endpoints?.vpc ?? Object.values(status?.Endpoints ?? {})[0];
    if (!host) {
      throw new Error(
        `OpenSearch domain "${domainName}" has no endpoint yet (processing: ${String(status?.Processing)})`,
      );
    }
    return `https://${host}`;
  } finally {
    client.destroy();
  }
}
