//! The Lua scripts that make each step one atomic command on the server.

/// Renews a lock if it is still ours: `KEYS[1]` lock, `ARGV[1]` our value,
/// `ARGV[2]` the lease in milliseconds.
pub(super) const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Releases a lock if it is still ours.
pub(super) const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Replaces the record if its generation is still `ARGV[1]` (empty: whatever it
/// is), then publishes `ARGV[3]` on channel `ARGV[2]`. `ARGV[4..]`: field, value
/// pairs. Answers `{1, stored}` when written, `{0, stored}` when fenced.
pub(super) const SAVE: &str = r"
local stored = redis.call('HGET', KEYS[1], 'generation') or '0'
if ARGV[1] ~= '' and stored ~= ARGV[1] then
  return {0, stored}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('PUBLISH', ARGV[2], ARGV[3])
return {1, stored}";

/// The intent hash and the server's clock: `{now_ms, field, value, …}`.
pub(super) const LOAD_INTENT: &str = r"
local t = redis.call('TIME')
local out = {string.format('%.0f', t[1] * 1000 + math.floor(t[2] / 1000))}
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
return out";

/// Compare-and-set of the intent hash: if what is stored is `ARGV[1]` (`owner|
/// generation|sha|refused`, empty for nothing), replace it by the intent in
/// `ARGV[3..6]` (owner, generation, sha, refused), stamped with the server's
/// clock, or, when `ARGV[2]` is empty, remove it. Answers 1 when done.
pub(super) const SWAP_INTENT: &str = r"
local f = redis.call('HMGET', KEYS[1], 'owner', 'generation', 'refresh_token_sha256', 'refused')
local stored = ''
if f[3] then stored = (f[1] or '') .. '|' .. (f[2] or '') .. '|' .. f[3] .. '|' .. (f[4] or '0') end
if stored ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[2] == '' then return 1 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'generation', ARGV[4],
  'refresh_token_sha256', ARGV[5], 'refused', ARGV[6],
  'at_ms', string.format('%.0f', t[1] * 1000 + math.floor(t[2] / 1000)))
return 1";
