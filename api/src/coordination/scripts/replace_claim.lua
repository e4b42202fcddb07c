-- replace_claim: a compare-and-set on a claim. KEYS[1] is the claim; ARGV[1] the value the caller
-- last saw there, ARGV[2] the value to put in its place, ARGV[3] the new time to live in
-- milliseconds. Returns 1 if the claim still held ARGV[1] and now holds ARGV[2], else 0.
--
-- Several callers may find the same abandoned claim at once; only the first to replace it takes
-- it over, and the others see its new value.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
