-- wrk script: POST state reports to one agent, each newer than the last (so each one applies).
-- Used by loadtest/wrk/bench-reports.sh; AGENT and KEY come from the environment.
local agent = os.getenv("AGENT") or "bench-agent"
local state = os.getenv("STATE") or "idle"
local key = os.getenv("KEY") or ""
local counter = 0
local base = os.time()
local path = "/v1/opscore/agent/" .. agent .. "/state"
local headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key }

request = function()
  counter = counter + 1
  local secs = base + math.floor(counter / 1000000)
  local ts = os.date("!%Y-%m-%dT%H:%M:%S", secs) .. string.format(".%06d+00:00", counter % 1000000)
  local body = '{"agentId":"' .. agent .. '","timestamp":"' .. ts .. '","state":"' .. state .. '","details":{"n":' .. counter .. '}}'
  return wrk.format("POST", path, headers, body)
end

done = function(summary, latency, requests)
  local s = summary.duration / 1e6
  io.write(string.format("RESULT requests=%d seconds=%.2f rps=%.0f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f non2xx=%d errors=%d\n",
    summary.requests, s, summary.requests / s, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
