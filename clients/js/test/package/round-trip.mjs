// The round trip of esm.mjs and cjs.cjs, with the client classes they got
// from the package: connect, subscribe, publish through the backend API,
// receive; everything bounded.

const { WSGATE_WS: WS, WSGATE_API: API, WSGATE_API_KEY: KEY, WSGATE_TOKEN: TOKEN } = process.env;

export async function roundTrip(WsgateClient, WsgateError) {
  const within = (ms, what, promise) =>
    Promise.race([promise, new Promise((_, reject) => setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms).unref())]);
  const client = new WsgateClient(WS, { token: TOKEN });
  try {
    const welcome = await within(5000, 'connect', client.connect());
    const group = `pack.${process.pid}`;
    let received;
    const message = new Promise((resolve) => (received = resolve));
    await within(5000, 'subscribe', client.subscribe(group, (data) => received(data)));
    const resp = await fetch(`${API}/api/v1/publish`, {
      method: 'POST',
      headers: { authorization: `Bearer ${KEY}` },
      body: JSON.stringify({ group, data: { hello: 'from the API' } }),
    });
    if (resp.status !== 200) throw new Error(`publish answered ${resp.status}`);
    const data = await within(5000, 'message', message);
    const refused = await client.publish('nopub.x', {}).catch((e) => e);
    return {
      user_id: welcome.user_id,
      data,
      refused_is_wsgate_error: refused instanceof WsgateError,
      refused_code: refused.code,
    };
  } finally {
    client.close();
  }
}
