-- Every request names a new playback ID, so every request is a cache miss.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local thread_count = 0
function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_number", thread_count)
end

local counter = 0
function request()
  counter = counter + 1
  local id = string.format("bench%dx%dx%d", thread_number or 0, os.time(), counter)
  return wrk.format(nil, nil, nil, '{"playback_id":"' .. id .. '","audiences":["video"]}')
end
