-- wrk script for bench/wrk_bench.py: POST /questions/similar with JSON bodies in turn.
--
--   wrk -t1 -c1 -d15s --latency -s bench/wrk_similar.lua http://127.0.0.1:8000/questions/similar -- BODIES
--
-- BODIES is a file with one complete JSON request body per line (wrk_bench.py writes the BANKING77
-- test questions as {"question": ..., "limit": 10}). Each wrk thread starts at its own offset and
-- takes the next body for every request. Responses that are not 2xx are counted per thread (wrk's
-- own "Non-2xx or 3xx" line counts only status >= 400); socket errors are wrk's. At the end one line
--   WRK_RESULT {json}
-- carries the counts and the latency percentiles in microseconds for the caller to parse.

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

local bodies = {}
local position = 1
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  local path = args[1]
  if path == nil then
    error("wrk_similar.lua needs the bodies file after --")
  end
  for line in io.lines(path) do
    if #line > 0 then
      table.insert(bodies, line)
    end
  end
  if #bodies == 0 then
    error("no request bodies in " .. path)
  end
  -- spread the threads over the file so that they do not send the same question at the same time
  local nthreads = tonumber(args[2]) or 1
  position = (math.floor(id * #bodies / nthreads) % #bodies) + 1
  non2xx = 0
  statuses = ""
end

function request()
  local body = bodies[position]
  position = position % #bodies + 1
  return wrk.format("POST", wrk.path, headers, body)
end

local seen = {}

function response(status, response_headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    if not seen[status] then
      seen[status] = true
      statuses = statuses .. (statuses == "" and "" or ",") .. tostring(status)
    end
  end
end

function done(summary, latency, requests)
  local bad = 0
  local codes = {}
  for _, thread in ipairs(threads) do
    bad = bad + (thread:get("non2xx") or 0)
    local s = thread:get("statuses") or ""
    if s ~= "" then
      table.insert(codes, s)
    end
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "non2xx": %d, "non2xx_statuses": "%s", '
      .. '"socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, "status_ge_400": %d, '
      .. '"latency_us": {"min": %d, "mean": %.1f, "stdev": %.1f, "max": %d, '
      .. '"p50": %d, "p90": %d, "p99": %d, "p99.9": %d}}\n',
    summary.requests, summary.duration, summary.bytes, bad, table.concat(codes, ","),
    e.connect, e.read, e.write, e.timeout, e.status,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
