-- Cycles through pre-built multipart bodies (one file per body) listed in $BODIES.
local bodies, i = {}, 0
for path in string.gmatch(os.getenv("BODIES"), "[^,]+") do
  local f = assert(io.open(path, "rb")); bodies[#bodies + 1] = f:read("*all"); f:close()
end
local headers = { ["Content-Type"] = "multipart/form-data; boundary=" .. os.getenv("BOUNDARY") }
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", nil, headers, bodies[i])
end
