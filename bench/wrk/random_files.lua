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

-- the JSON line for bench/run.py, from report.lua beside this script
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
done = require("report").done
