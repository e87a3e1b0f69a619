-- wrk script: POST an ingress-shaped event with a fresh Idempotency-Key per request, the same
-- shape and size the worker sends, so both sides of the benchmark ask the same of upstream-sim.
local counter = 0
local body = '{"id":"bench","type":"order.created","occurred_at":"2026-01-01T00:00:00Z","source":"bench","data":{"n":1,"note":"benchmark payload of typical size"},"schema_version":1}'

request = function()
  counter = counter + 1
  local headers = {}
  headers["Content-Type"] = "application/json"
  headers["Idempotency-Key"] = "wrk-" .. tostring(counter) .. "-" .. tostring(math.random(1, 1000000000))
  return wrk.format("POST", "/events", headers, body)
end
