-- wrk script for scripts/bench.py: each request POSTs /embed with sentences from a file,
-- taken in file order from a random start, one or more per request.
-- wrk -t1 -c64 -d10s -s embed.lua http://127.0.0.1:8000 -- <sentences file> <per request>
local sentences = {}
local per_request = 1
local counter = 0

function init(args)
  for line in io.lines(args[1]) do
    sentences[#sentences + 1] = line
  end
  per_request = tonumber(args[2] or "1")
  counter = math.random(#sentences)
end

local function quote(s)
  s = s:gsub('\\', '\\\\'):gsub('"', '\\"')
  return '"' .. s .. '"'
end

function request()
  local parts = {}
  for i = 1, per_request do
    counter = counter % #sentences + 1
    parts[i] = quote(sentences[counter])
  end
  local body = '{"inputs": [' .. table.concat(parts, ",") .. ']}'
  return wrk.format("POST", "/embed", {["Content-Type"] = "application/json"}, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d errors_status=%d errors_other=%d p50_us=%d p99_us=%d duration_us=%d\n",
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), summary.duration))
end
