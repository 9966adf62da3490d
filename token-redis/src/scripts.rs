//! The server-side Lua scripts that make put, lease and invalidation atomic.
//!
//! Each touches the keys of one cache key only, which share a hash tag, so
//! every script runs on one cluster slot. Values are
//! `<expires_at ms>:<payload>` (see `layout.rs`); the scripts read only the
//! decimal header, never the payload, so they work on encrypted values too.

use std::sync::LazyLock;

use redis::Script;

/// Newer-wins put, announced.
///
/// KEYS[1] token key. ARGV[1] the new value, ARGV[2] its expiry (ms since
/// the epoch, also the key's `PXAT`), ARGV[3] the events channel, ARGV[4]
/// the "updated" message published on it when stored.
///
/// Returns 1 when stored (and published). When the stored value's header says it expires
/// later, stores nothing and returns the stored value, so the caller can
/// check that it really is a newer token and not a corrupt value with a
/// plausible header. A value without a readable header, or a key of another
/// type, is overwritten.
pub(crate) static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.pcall('GET', KEYS[1])
if type(cur) == 'string' then
  local sep = string.find(cur, ':', 1, true)
  if sep and sep <= 21 then
    local stored = tonumber(string.sub(cur, 1, sep - 1))
    if stored and stored > tonumber(ARGV[2]) then
      return cur
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
",
    )
});

/// Compare-and-set: replaces the value only if it is still exactly the one
/// the caller read (used to overwrite a corrupt value that claimed to be
/// newer), announced like [`PUT`].
///
/// KEYS[1] token key. ARGV[1] the value read, ARGV[2] the new value,
/// ARGV[3] its expiry in ms, ARGV[4] the events channel, ARGV[5] the
/// "updated" message. Returns 1 when replaced, 0 when the value changed
/// meanwhile.
pub(crate) static REPLACE_IF: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.pcall('GET', KEYS[1])
if type(cur) ~= 'string' or cur ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
",
    )
});

/// Takes the lease if it is free, idempotently.
///
/// KEYS[1] lease key. ARGV[1] the owner value, ARGV[2] the TTL in ms.
/// Returns 1 when taken now, 2 when this owner already held it (a retry
/// whose first reply was lost: the lease is read back, not taken twice, and
/// its TTL is not extended), 0 when someone else holds it. A key of another
/// type is foreign junk and is replaced.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.pcall('GET', KEYS[1])
if type(cur) == 'table' then
  redis.call('DEL', KEYS[1])
  cur = false
end
if cur == ARGV[1] then
  return 2
end
if cur then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
",
    )
});

/// Releases the lease only if this owner still holds it.
///
/// KEYS[1] lease key. ARGV[1] the owner value. Returns 1 when released.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.pcall('GET', KEYS[1])
if type(cur) == 'string' and cur == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
",
    )
});

/// Deletes the token only if it is still the value the caller read (the
/// rejected token), and tells the other instances.
///
/// KEYS[1] token key. ARGV[1] the value read, ARGV[2] the channel, ARGV[3]
/// the message. Returns 1 when deleted (and published).
pub(crate) static INVALIDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.pcall('GET', KEYS[1])
if type(cur) ~= 'string' or cur ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
",
    )
});
