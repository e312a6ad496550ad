// Run by tests/js_package.rs from a scratch project where the packed
// tarball is installed: `import ... from 'wsgate'` resolves to the package's
// ES module, which connects to a real node, subscribes, and receives what
// the backend API publishes. Prints one JSON line of what it saw.

import { WsgateClient, WsgateError } from 'wsgate';
import { roundTrip } from './round-trip.mjs';

const seen = await roundTrip(WsgateClient, WsgateError);
console.log(JSON.stringify({ ...seen, module: 'esm', resolved: import.meta.resolve('wsgate') }));
