-- wrk script for scripts/bench.py: each request POSTs /embed with sentences from a file, one or
-- more per request: from a random place in the file each time, then in file order. The file
-- runs in blocks of similar sentences (short captions, long news), so a fixed start would give
-- a short run one block's lengths rather than the whole file's.
-- wrk -t1 -c64 -d10s -s embed.lua http://127.0.0.1:8000 -- <sentences file> <per request>
local sentences = {}
local per_request = 1

function init(args)
  for line in io.lines(args[1]) do
    sentences[#sentences + 1] = line
  end
  per_request = tonumber(args[2] or "1")
end

local function quote(s)
  s = s:gsub('\\', '\\\\'):gsub('"', '\\"')
  return '"' .. s .. '"'
end

function request()
  local parts = {}
  local start = math.random(#sentences)
  for i = 1, per_request do
    parts[i] = quote(sentences[(start + i - 2) % #sentences + 1])
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
