// Generates the CommonJS build from the ES module, for `require('wsgate')`:
//
//   wsgate.cjs    wsgate.js with its `export` keywords dropped and a
//                 `module.exports` of the same names at the end
//   wsgate.d.cts  wsgate.d.ts, the types as seen from require()
//
// No bundler: wsgate.js is one file with no imports, so dropping `export`
// is the whole translation. `npm pack` runs this first (prepack); the
// generated files are committed too, so a checkout can be required as is.
// `node build-cjs.mjs --check` fails when they are stale (tests/js_package.rs
// runs it).

import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const check = process.argv.includes('--check');

const banner = (from) =>
  `// Generated from ${from} by build-cjs.mjs (npm run build); do not edit.\n`;

function cjs(source) {
  const names = [];
  const body = source.replace(/^export (class|function|const) ([A-Za-z_$][\w$]*)/gm, (_, kind, name) => {
    names.push(name);
    return `${kind} ${name}`;
  });
  if (/^\s*(export|import)\b/m.test(body)) {
    throw new Error('wsgate.js has an import or export this script does not translate');
  }
  return `${banner('wsgate.js')}'use strict';\n\n${body}\nmodule.exports = { ${names.join(', ')} };\n`;
}

const outputs = [
  ['wsgate.cjs', cjs(readFileSync(join(here, 'wsgate.js'), 'utf8'))],
  ['wsgate.d.cts', banner('wsgate.d.ts') + readFileSync(join(here, 'wsgate.d.ts'), 'utf8')],
];

let stale = [];
for (const [file, text] of outputs) {
  const path = join(here, file);
  let old = null;
  try {
    old = readFileSync(path, 'utf8');
  } catch {
    // not generated yet
  }
  if (old === text) continue;
  if (check) stale.push(file);
  else writeFileSync(path, text);
}
if (stale.length) {
  console.error(`stale: ${stale.join(', ')}; run \`npm run build\` in clients/js and commit the result`);
  process.exit(1);
}
