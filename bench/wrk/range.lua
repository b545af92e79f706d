-- wrk script: the same Range request every time; at the end, print one JSON line for bench/run.py.
--   wrk ... -s bench/wrk/range.lua URL -- <path, e.g. /artifacts/big.bin> <range, e.g. bytes=1000000-1999999>
-- Only the byte count tells a 206 from a 200 here (a response() hook would copy each 1 MB body into Lua):
-- bench/run.py checks that it is ~1,000,000 bytes a response.

local path = "/artifacts/big.bin"
local range = "bytes=1000000-1999999"

function init(args)
  if args[1] then path = args[1] end
  if args[2] then range = args[2] end
end

function request()
  return wrk.format("GET", path, { ["Range"] = range })
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
