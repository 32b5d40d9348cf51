-- wrk script for `make bench`: one request shape per mode, a unique idempotency key per
-- request (run nonce + thread id + per-thread counter), and every response checked, since a
-- benchmark of errors is worthless. Args (after --): mode nonce [expected]
--   mode: charge | plain | batch | usage | series | floor | check; series also takes from and to (ISO)  expected: batch size (batch) or used count (usage)

local threads = {}
local counter = 0
local mode, nonce, expected, pattern
-- mode charge with a key file (args[4], one API key per line): each request takes the next key,
-- so one connection's requests spread over many tenants (bench/pg_orgs.py).
local keyed = {}
-- Globals on purpose: done() reads them from each thread's Lua state with thread:get(), and
-- setup() sets `tid` there with thread:set().
ok, bad_status, bad_body = 0, 0, 0

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  mode, nonce, expected = args[1], args[2], tonumber(args[3] or "1")
  if mode == "charge" and args[4] then
    for line in io.lines(args[4]) do
      if #line > 0 then
        keyed[#keyed + 1] = {
          ["Authorization"] = "Bearer " .. line,
          ["Content-Type"] = "application/json",
          ["Host"] = wrk.headers["Host"],
        }
      end
    end
  end
  if mode == "floor" then
    wrk.method = "POST"
    wrk.path = "/graphql"
    wrk.body = '{"query":"{ __typename }"}'
  end
  if mode == "check" then
    -- The read-only pre-check of the same primitive the charges use: it must answer allowed.
    wrk.method = "POST"
    wrk.path = "/graphql"
    wrk.body = '{"query":"{ check(primitive: \\"email.send\\") { __typename ... on CheckResult { allowed remaining availableCredits } } }"}'
  end
  if mode == "series" then
    -- Daily credits and calls over the window, from the hourly rollups: the day holding the usage
    -- tenant's events must show all `expected` of them.
    pattern = '"quantity":%s*' .. string.format("%d", expected) .. "[^%d]"
    wrk.method = "POST"
    wrk.path = "/graphql"
    wrk.body = '{"query":"{ usageSeries(from: \\"' .. args[4] .. '\\", to: \\"' .. args[5]
      .. '\\", interval: DAY) { start quantity credits } }"}'
  end
  if mode == "usage" then
    -- The usage tenant's counter holds exactly `expected` calls: check the number, not just a 200.
    pattern = '"used":%s*' .. string.format("%d", expected) .. "[^%d]"
    wrk.method = "POST"
    wrk.path = "/graphql"
    wrk.body = '{"query":"{ viewer { usage { quotas { primitive used } } } }"}'
  end
end

local CHARGE_Q = '{"query":"mutation($i: MeterInput!) { charge(input: $i) { __typename ... on Charged '
  .. '{ eventId creditsUsed creditsRemaining usage { used remaining } } } }","variables":{"i":'
  .. '{"primitive":"email.send","idempotencyKey":"'
local BATCH_Q = '{"query":"mutation($items: [BatchItemInput!]!) { chargeBatch(items: $items) { __typename '
  .. '... on Charged { eventId creditsRemaining } } }","variables":{"items":['

local function key()
  counter = counter + 1
  return nonce .. "-" .. tid .. "-" .. counter
end

function request()
  if mode == "charge" then
    if #keyed > 0 then
      local body = CHARGE_Q .. key() .. '"}}}'
      local headers = keyed[(counter % #keyed) + 1]
      headers["Content-Length"] = nil  -- wrk.format sets it from the body
      return wrk.format("POST", "/graphql", headers, body)
    end
    return wrk.format("POST", "/graphql", nil, CHARGE_Q .. key() .. '"}}}')
  elseif mode == "plain" then
    return wrk.format("POST", "/v1/charge", nil, '{"primitive":"email.send","idempotency_key":"' .. key() .. '","quantity":1}')
  elseif mode == "batch" then
    local items = {}
    for i = 1, expected do
      items[i] = '{"item":{"primitive":"email.send","idempotencyKey":"' .. key() .. '"}}'
    end
    return wrk.format("POST", "/graphql", nil, BATCH_Q .. table.concat(items, ",") .. "]}}")
  end
  return wrk.format()
end

local function count(body, needle)
  local n, pos = 0, 1
  while true do
    local s = string.find(body, needle, pos, true)
    if not s then return n end
    n, pos = n + 1, s + #needle
  end
end

function response(status, headers, body)
  if status ~= 200 then
    bad_status = bad_status + 1
    return
  end
  local good
  if mode == "plain" then
    good = string.find(body, '"credits_used"', 1, true) ~= nil
  elseif mode == "floor" then
    good = string.find(body, '"__typename":"Query"', 1, true) ~= nil
  elseif mode == "check" then
    good = string.find(body, '"allowed":true', 1, true) ~= nil and string.find(body, '"errors"', 1, true) == nil
  elseif mode == "usage" or mode == "series" then
    good = string.find(body, pattern) ~= nil and string.find(body, '"errors"', 1, true) == nil
  elseif mode == "batch" then
    good = count(body, '"Charged"') == expected and string.find(body, '"errors"', 1, true) == nil
  else
    good = string.find(body, '"Charged"', 1, true) ~= nil and string.find(body, '"errors"', 1, true) == nil
  end
  if good then ok = ok + 1 else bad_body = bad_body + 1 end
end

function done(summary, latency, requests)
  local okc, bs, bb = 0, 0, 0
  for _, t in ipairs(threads) do
    okc = okc + (t:get("ok") or 0)
    bs = bs + (t:get("bad_status") or 0)
    bb = bb + (t:get("bad_body") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"ok":%d,"bad_status":%d,"bad_body":%d,'
      .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, okc, bs, bb, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
