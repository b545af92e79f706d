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

-- the JSON line for bench/run.py, from report.lua beside this script
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
done = require("report").done
