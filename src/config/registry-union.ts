import { z } from 'zod';
import { describeIssue, keysAt } from './errors.js';

/**
 * A schema that dispatches on `type:` to the schema of the registered component, so an error names the
 * known types when `type` is wrong, and otherwise speaks only of that component's own fields.
 */
export function byType<T>(
  registry: Readonly<Record<string, { schema: z.ZodType }>>,
  kind: string,
): z.ZodType<T> {
  return z
    .looseObject({
      type: z.string({ error: `${kind} needs a type: one of ${Object.keys(registry).join(', ')}` }),
    })
    .transform((value, ctx) => {
      const def = registry[value.type];
      if (!def) {
        ctx.addIssue({
          code: 'custom',
          path: ['type'],
          message: `unknown ${kind} type "${value.type}"; known types: ${Object.keys(registry).join(', ')}`,
        });
        return z.NEVER;
      }
      const parsed = def.schema.safeParse(value, { reportInput: true });
      if (!parsed.success) {
        for (const issue of parsed.error.issues) {
          ctx.addIssue({
            code: 'custom',
            path: issue.path as PropertyKey[],
            message: describeIssue(issue, keysAt(def.schema, issue.path)),
          });
        }
        return z.NEVER;
      }
      return parsed.data as T;
    }) as unknown as z.ZodType<T>;
}
