#!/usr/bin/env node
/** ksw: the worker's command line (the commands are in ./commands.ts; `ksw --help` lists them). */

// The AWS SDK prints a 9-line warning on Node < 22 on every command (its releases after early January 2027
// need Node 22; the pinned versions work on 20). `ksw run` logs one line about it instead (commands.ts).
if (Number(process.versions.node.split('.')[0]) < 22)
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

const { main } = await import('./commands.js');

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`${String(err)}\n`);
    process.exitCode = 1;
  },
);
