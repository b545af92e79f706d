-- wrk script: GET a random one of N files per request; at the end, print one JSON line for bench/run.py.
--   wrk ... -s bench/wrk/random_files.lua URL -- <path template, e.g. /artifacts/f%03d.bin> <N>

local template = "/artifacts/f%03d.bin"
local count = 200

function init(args)
  if args[1] then template = args[1] end
  if args[2] then count = tonumber(args[2]) end
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

function request()
  return wrk.format("GET", string.format(template, math.random(0, count - 1)))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
