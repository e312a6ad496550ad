// Run by tests/js_package.rs from a scratch project where the packed
// tarball is installed: `require('wsgate')` resolves to the package's
// CommonJS build, which does what esm.mjs does.

const { WsgateClient, WsgateError } = require('wsgate');

import('./round-trip.mjs')
  .then(({ roundTrip }) => roundTrip(WsgateClient, WsgateError))
  .then((seen) => {
    console.log(JSON.stringify({ ...seen, module: 'cjs', resolved: require.resolve('wsgate') }));
  })
  .catch((e) => {
    console.error(e);
    process.exit(1);
  });
