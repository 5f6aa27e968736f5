// Flag reading shared by the benchmark scripts: `--name value` pairs and bare `--flag` switches.
'use strict';

const args = process.argv.slice(2);

/** The value after `--name`, or `def` when the flag is absent. */
function opt(name, def) {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : def;
}

/** True when the bare switch `--name` is present. */
function flag(name) {
  return args.includes(`--${name}`);
}

module.exports = { args, opt, flag };
