#!/usr/bin/env node
/** ksw: the worker's command line (the commands are in ./commands.ts; `ksw --help` lists them). */

import { main } from './commands.js';

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`${String(err)}\n`);
    process.exitCode = 1;
  },
);
