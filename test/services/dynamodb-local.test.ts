/** The lease-table contract against AWS's own DynamoDB Local (a JVM process, or a container). */
import { leaseTableSuite } from '../helpers/lease-table-suite.js';
import { peerKind, peers } from '../helpers/peers/index.js';

leaseTableSuite(`DynamoDB Local (${peerKind()})`, async () => (await peers()).dynamodbLocal());
