-- wrk script for `bench/latency.py` and `bench/paths.py`: POST one 18-feature instance (or the
-- body in BENCH_BODY) to the TF Serving predict route, and print wrk's summary as one JSON line
-- (latencies in microseconds).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BENCH_BODY") or '{"instances": [[40.1, 1.2, 0.31, 30.5, 0.25, -0.3, 25.0, 0.4, 0.52, 1.1, 2.0, 0.33, 0.1, 1.5, 0.7, 0.9, 0.2, -0.4]]}'

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d}, "latency_us": {"mean": %.1f, "min": %d, ' ..
    '"max": %d, "p50": %d, "p90": %d, "p99": %d, "p999": %d}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.min, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end

-- BENCH_PAUSE_MS (bench/concurrency.py's paced point): before each request a connection waits a
-- random pause of this mean in milliseconds, exponentially distributed so the connections do not
-- fall into step; wrk measures each request's latency from when it is sent.
local pause = tonumber(os.getenv("BENCH_PAUSE_MS") or "")
if pause then
  math.randomseed(os.time())
  delay = function()
    return math.floor(-pause * math.log(1 - math.random()) + 0.5)
  end
end
