import { leaseTableSuite } from '../helpers/lease-table-suite.js';
import { startTestStack } from '../helpers/stack.js';

leaseTableSuite('dynalite', async () => {
  const t = await startTestStack();
  return { dynamodb: t.aws.dynamodb, stop: () => t.stop() };
});
