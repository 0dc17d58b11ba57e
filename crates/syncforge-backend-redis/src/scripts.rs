//! The Lua scripts. Each write is one script, so Redis runs it without
//! interleaving any other command: a record, its index entries, the sequence
//! counter and the newest stamp change together or not at all. All keys a
//! script touches are passed in `KEYS` and share the collection's hash tag,
//! so the scripts run unchanged on a Redis Cluster.
//!
//! Numbers stay exact: sequences are at most 2^53 and formatted with `%d`
//! (Lua's default number format would print `1e+14`), or handed to
//! `redis.call` as numbers, which Redis turns into text that reads back
//! exactly (`%.17g` before Redis 7.2, the shortest such text since; a score
//! is read the same either way).

use fred::types::scripts::Script;

/// Reads values of many fields of a hash in slices, because Lua's `unpack`
/// has a limit on how many values it spreads.
const HMGET_HELPER: &str = r"
local function hmget(key, ids)
  local values = {}
  for i = 1, #ids, 1000 do
    local chunk = redis.call('HMGET', key, unpack(ids, i, math.min(i + 999, #ids)))
    for j = 1, #chunk do values[#values + 1] = chunk[j] end
  end
  return values
end
";

/// Reads the values of the first `n` ids of `entries` (an index's range
/// `WITHSCORES`: id, score, id, score...) a hundred at a time, appending
/// each id, value and (when `scores` is a table) score, while `bytes` and
/// the values read stay within `budget`; the first entry is taken whatever
/// its size. Returns the place of the first entry left out, or nil.
const READ_WITHIN_HELPER: &str = r"
local function read_within(key, entries, n, budget, bytes, ids, scores, values)
  for first = 1, n, 100 do
    local upto = math.min(first + 99, n)
    local slice = {}
    for i = first, upto do
      slice[#slice + 1] = entries[2 * i - 1]
    end
    local found = redis.call('HMGET', key, unpack(slice))
    for j = 1, #slice do
      local value = found[j]
      local size = value and #value or 0
      local at = first + j - 1
      if at > 1 and bytes + size > budget then
        return at
      end
      bytes = bytes + size
      local k = #ids + 1
      ids[k], values[k] = slice[j], value
      if scores then
        scores[k] = entries[2 * at]
      end
    end
  end
  return nil
end
";

/// `permitted(what, commands)`: fails the script with `NOPERM`, before it
/// changes anything, unless the ACL user may run each of `commands` (each
/// a command and its arguments, keys first) that the script's `what`
/// (`write`, `delete`) will run. The server checks each command of a
/// script only as it runs it, and keeps what the script changed before.
/// Redis 6.2 has no such check for scripts: nothing is asked there.
const PERMITTED_HELPER: &str = r"
local function permitted(what, commands)
  if redis.acl_check_cmd == nil then
    return
  end
  for _, command in ipairs(commands) do
    if not redis.acl_check_cmd(unpack(command)) then
      error({err = 'NOPERM syncforge: this user may not run ' .. command[1] .. ' on ' .. command[2] .. ', which the ' .. what .. ' needs; nothing was changed'})
    end
  end
end
";

/// Writes runs of `HSET` pairs (id, stored value) and the matching feed
/// (sequence, id) and time (millis, id) pairs, then the counter at
/// `last_seq` and the newest stamp `newest`; KEYS as the write scripts
/// take them: records, feed, time, seq, newest. In slices, because Lua's
/// `unpack` has a limit on how many values it spreads.
///
/// The newest set keeps at least the newest stamp written, which is what
/// [`newest_stamp`](syncforge_core::StorageBackend::newest_stamp) promises:
/// every stamp is added and all but the greatest (by byte order) dropped, so
/// a script never compares stamp strings itself (Lua compares strings by
/// locale).
///
/// A script that fails keeps what it wrote before the failure, so every
/// key is known to hold its type before the first write: the sorted sets by
/// `ZCARD`, which fails on a key of another type (`WRONGTYPE`) and changes
/// nothing; the counter by `counter`, which callers read first and which
/// must hold a whole sequence from 0 to 2^53, no less than the last in the
/// feed (a counter deleted or set back by hand would hand out sequences
/// again: a write under a cursor readers have passed, a token that matches
/// two states); the records hash by the first write itself. `SET` takes a
/// key of any type. And the ACL user is known to be allowed every command
/// the write runs ([`PERMITTED_HELPER`]): a user allowed `HSET` but not `SET`
/// wrote the record and then failed, leaving a sequence to be handed out
/// twice.
const WRITE_HELPER: &str = r"
local function counter()
  local seq = tonumber(redis.call('GET', KEYS[4]) or '0')
  if seq == nil or seq < 0 or seq > 9007199254740992 or seq ~= math.floor(seq) then
    return nil
  end
  local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')[2]
  if last and tonumber(last) > seq then
    return nil
  end
  return seq
end
local function bad_counter()
  return redis.error_reply('ERR syncforge: ' .. KEYS[4] .. ' does not hold a change sequence')
end
local function write(hset, zfeed, ztime, last_seq, newest)
  permitted('write', {{'HSET', KEYS[1], 'id', 'v'}, {'ZADD', KEYS[2], '0', 'id'},
    {'ZADD', KEYS[3], '0', 'id'}, {'SET', KEYS[4], '0'}, {'ZADD', KEYS[5], '0', 's'},
    {'ZREMRANGEBYRANK', KEYS[5], '0', '-2'}})
  redis.call('ZCARD', KEYS[2])
  redis.call('ZCARD', KEYS[3])
  redis.call('ZCARD', KEYS[5])
  for i = 1, #hset, 1000 do
    local last = math.min(i + 999, #hset)
    redis.call('HSET', KEYS[1], unpack(hset, i, last))
    redis.call('ZADD', KEYS[2], unpack(zfeed, i, last))
    redis.call('ZADD', KEYS[3], unpack(ztime, i, last))
  end
  redis.call('SET', KEYS[4], string.format('%d', last_seq))
  redis.call('ZADD', KEYS[5], 0, newest)
  redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -2)
end
local function exhausted()
  return redis.error_reply('ERR syncforge: the change sequence of ' .. KEYS[2] .. ' is exhausted (2^53)')
end
";

/// Conditional batch write.
///
/// KEYS: records, feed, time, seq, newest.
///
/// ARGV: `n`, the newest stamp of the batch, the guessed sequence `g` of the
/// first write (0 for none), `1` if no id occurs twice in the batch (else
/// `0`), then four runs of `n` values: the ids, the expectations, the
/// millis (`_timestamp`) and the values. An expectation is `''` for "must
/// not exist", the decimal sequence the record must still have, or text
/// that is no number (`-`) for "never matches" (any text Lua reads as a
/// number is compared as one: `1e3` matches 1000). The ids come as one run so that one `ZMSCORE`
/// reads every current sequence. A batch with another number of arguments
/// is refused (`ERR syncforge: malformed batch`) before anything is read or
/// written.
///
/// A value is the record's JSON, or, with a guess, `"<g + i - 1> <JSON>"`
/// for the `i`-th write: the stored form if every write before it in the
/// batch happens and the counter stood at `g - 1`, as it does for a handle
/// that wrote last. A write whose sequence matches its guess stores its
/// value as it came; any other gets its value rebuilt around its sequence —
/// so the stored value is the same either way, and a right guess saves the
/// server copying every record once more.
///
/// Checks run write by write, in order, against the state including the
/// batch's earlier writes; the writes themselves are applied together at the
/// end, so a script that fails writes nothing.
///
/// Fast path: when there is a guess, the counter stands at `g - 1`,
/// `g + n - 1` is at most 2^53, no id repeats (the script trusts the flag:
/// a batch wrongly marked `1` could have a repeated id's later write applied
/// where it should conflict) and every expectation holds against the
/// sequence `ZMSCORE` read — `''` for an absent record, or exactly the text
/// of its score — those
/// checks would pass every write, in order, with the sequences
/// `g .. g + n - 1`, and store every value as it came. The script then only
/// lays the arguments out for `HSET` and the two `ZADD`s, without the
/// general path's bookkeeping (the ids written so far, each sequence
/// formatted as text). Any other batch takes the general path; an
/// expectation the fast check does not recognize (a sequence written
/// another way, `"07"`) is compared as a number there. Both paths give the
/// same outcomes and store the same bytes.
///
/// Returns the integer `g` when the fast path wrote the batch: every write
/// happened, the `i`-th with the sequence `g + i - 1`. Otherwise an array
/// of one integer per write: its new sequence, or 0 for a conflict.
///
/// Once any write happened the newest stamp of the batch is kept (see
/// [`WRITE_HELPER`]).
const PUT_BATCH: &str = r"
local feed = KEYS[2]
local n, guess = tonumber(ARGV[1]), tonumber(ARGV[3])
if n == nil or guess == nil or #ARGV ~= 4 * n + 4 then
  return redis.error_reply('ERR syncforge: malformed batch')
end
if n == 0 then
  return {}
end
local ids, expects, millis, values = 4, 4 + n, 4 + 2 * n, 4 + 3 * n
local scores
if n <= 1000 then
  scores = redis.call('ZMSCORE', feed, unpack(ARGV, ids + 1, ids + n))
else
  scores = {}
  for i = 1, n, 1000 do
    local part = redis.call('ZMSCORE', feed, unpack(ARGV, ids + i, ids + math.min(i + 999, n)))
    for j = 1, #part do scores[i + j - 1] = part[j] end
  end
end
local seq = counter()
if seq == nil then
  return bad_counter()
end
if guess > 0 and ARGV[4] == '1' and seq == guess - 1 and n <= 9007199254740992 - seq then
  local hset, zfeed, ztime = {}, {}, {}
  local fast = true
  for i = 1, n do
    local expected, score = ARGV[expects + i], scores[i]
    if expected == '' then
      if score then
        fast = false
        break
      end
    elseif score ~= expected then
      fast = false
      break
    end
    local id = ARGV[ids + i]
    hset[2 * i - 1] = id
    hset[2 * i] = ARGV[values + i]
    -- A number: redis.call passes it on as exact text, up to 2^53.
    zfeed[2 * i - 1] = guess + i - 1
    zfeed[2 * i] = id
    ztime[2 * i - 1] = ARGV[millis + i]
    ztime[2 * i] = id
  end
  if fast then
    write(hset, zfeed, ztime, guess + n - 1, ARGV[2])
    return guess
  end
end
local written = {}
local out, hset, zfeed, ztime = {}, {}, {}, {}
local w = 0
for i = 1, n do
  local id, expected = ARGV[ids + i], ARGV[expects + i]
  local current = written[id]
  if current == nil then
    current = scores[i] and tonumber(scores[i]) or false
  end
  local matches
  if expected == '' then
    matches = current == false
  else
    matches = current ~= false and current == tonumber(expected)
  end
  if matches then
    -- Checked before counting: a double cannot hold 2^53 + 1, so the sum
    -- would round back to 2^53 and never be seen to pass it.
    if seq >= 9007199254740992 then
      return exhausted()
    end
    seq = seq + 1
    local s = string.format('%d', seq)
    local value = ARGV[values + i]
    if guess == 0 then
      value = s .. ' ' .. value
    elseif seq ~= guess + i - 1 then
      value = s .. string.sub(value, (string.find(value, ' ', 1, true)))
    end
    written[id] = seq
    hset[2 * w + 1] = id
    hset[2 * w + 2] = value
    zfeed[2 * w + 1] = s
    zfeed[2 * w + 2] = id
    ztime[2 * w + 1] = ARGV[millis + i]
    ztime[2 * w + 2] = id
    w = w + 1
    out[i] = seq
  else
    out[i] = 0
  end
end
if w > 0 then
  write(hset, zfeed, ztime, seq, ARGV[2])
end
return out
";

/// Writes one record unless its id is stored: the read and the create of a
/// put of a new record in one round trip.
///
/// KEYS: records, feed, time, seq, newest. ARGV: the id, the record's newest
/// stamp, its millis (`_timestamp`) and its JSON.
///
/// Returns an array holding the stored value when the id is stored (nothing
/// is written), else the new record's sequence.
const INSERT_IF_ABSENT: &str = r"
local id = ARGV[1]
local stored = redis.call('HGET', KEYS[1], id)
if stored then
  return {stored}
end
local seq = counter()
if seq == nil then
  return bad_counter()
end
if seq >= 9007199254740992 then
  return exhausted()
end
seq = seq + 1
local s = string.format('%d', seq)
write({id, s .. ' ' .. ARGV[4]}, {s, id}, {ARGV[3], id}, seq, ARGV[2])
return seq
";

/// Hard delete of one record from the hash and both indexes.
///
/// KEYS: records, feed, time. ARGV: id. Returns 1 if the record existed.
/// The indexes' types, and the user's right to every removal
/// ([`PERMITTED_HELPER`]), are known before the first removal, as for the
/// writes ([`WRITE_HELPER`]).
const DELETE: &str = r"
permitted('delete', {{'HDEL', KEYS[1], ARGV[1]}, {'ZREM', KEYS[2], ARGV[1]},
  {'ZREM', KEYS[3], ARGV[1]}})
redis.call('ZCARD', KEYS[2])
redis.call('ZCARD', KEYS[3])
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return removed
";

/// Removes a collection's records and indexes; keeps its sequence counter
/// (cursors stay valid) and newest stamp (clocks never go back).
///
/// KEYS: records, feed, time.
const CLEAR: &str = r"
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3])
return 1
";

/// A page of the change feed.
///
/// KEYS: records, feed. ARGV: after (exclusive), limit, byte budget.
/// Returns {more, ids, sequences, values}; a value is nil if the hash lost
/// the record (which the write scripts never let happen).
///
/// Values are read a slice at a time, and the page ends (with `more`) before
/// the record that would take its values past the budget, though it always
/// holds one record however large: neither the script's memory nor its
/// reply grows with the size of the records.
const FEED_PAGE: &str = r"
local limit, budget = tonumber(ARGV[2]), tonumber(ARGV[3])
local entries = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0, limit + 1)
local n = #entries / 2
local more = 0
if n > limit then
  more, n = 1, limit
end
local ids, scores, values = {}, {}, {}
if read_within(KEYS[1], entries, n, budget, 0, ids, scores, values) then
  more = 1
end
return {more, ids, scores, values}
";

/// A slice of the time index, in its order (by `_timestamp`, then by id
/// byte for byte), after a position.
///
/// KEYS: records, time. ARGV: after millis, page size, anchor id, byte
/// budget. With an
/// empty anchor the slice starts strictly after the millis; with one, just
/// after the anchor's entry, found by its rank, so that a slice never
/// holds more than a page however many records share a timestamp. An
/// anchor that has moved since (rewritten, or deleted) cannot be found
/// again: the slice then holds every record still at the anchor's millis
/// (some returned before, which the caller keeps once), then a page
/// strictly after them. The page after the tie is read a hundred values at
/// a time, and ends before the record whose value would take the slice's
/// values past the budget (its first record comes whatever its size), so
/// that neither the script's memory nor its reply grows with the size of
/// the records (but for a tie's).
///
/// Returns {last millis, last id (both nil when this was the last slice),
/// ids, values}.
const TIME_SLICE: &str = r"
local page = tonumber(ARGV[2])
local anchor = ARGV[3]
local entries
local tied = {}
if anchor ~= '' then
  local score = redis.call('ZSCORE', KEYS[2], anchor)
  if score and tonumber(score) == tonumber(ARGV[1]) then
    local rank = redis.call('ZRANK', KEYS[2], anchor)
    entries = redis.call('ZRANGE', KEYS[2], rank + 1, rank + page, 'WITHSCORES')
  else
    tied = redis.call('ZRANGEBYSCORE', KEYS[2], ARGV[1], ARGV[1])
  end
end
if entries == nil then
  entries = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0, page)
end
local ids = {}
for i = 1, #tied do ids[#ids + 1] = tied[i] end
local n = #entries / 2
local last, last_id = false, false
if n >= page then
  last, last_id = entries[2 * n], entries[2 * n - 1]
end
local values = hmget(KEYS[1], ids)
local budget, bytes = tonumber(ARGV[4]), 0
for i = 1, #values do
  bytes = bytes + (values[i] and #values[i] or 0)
end
local cut = read_within(KEYS[1], entries, n, budget, bytes, ids, nil, values)
if cut then
  last, last_id = entries[2 * (cut - 1)], entries[2 * (cut - 1) - 1]
end
return {last, last_id, ids, values}
";

/// Stores a metadata value unless the field holds one; returns what it holds.
///
/// KEYS: meta. ARGV: field, value.
const META_IF_ABSENT: &str = r"
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HGET', KEYS[1], ARGV[1])
";

/// The scripts, with their SHA-1 digests for `EVALSHA`.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) put_batch: Script,
    pub(crate) insert_if_absent: Script,
    pub(crate) delete: Script,
    pub(crate) clear: Script,
    pub(crate) feed_page: Script,
    pub(crate) time_slice: Script,
    pub(crate) meta_if_absent: Script,
}

impl Scripts {
    /// Every script's text, for the tests that hold the advice on missing
    /// permissions to the commands the scripts call. Named field by field:
    /// a script added to `Scripts` and not here fails to compile.
    #[cfg(test)]
    pub(crate) fn sources(&self) -> Vec<String> {
        let Scripts {
            put_batch,
            insert_if_absent,
            delete,
            clear,
            feed_page,
            time_slice,
            meta_if_absent,
        } = self;
        [
            put_batch,
            insert_if_absent,
            delete,
            clear,
            feed_page,
            time_slice,
            meta_if_absent,
        ]
        .iter()
        .filter_map(|script| script.lua().map(|lua| lua.to_string()))
        .collect()
    }

    pub(crate) fn new() -> Self {
        Scripts {
            put_batch: Script::from_lua(format!("{PERMITTED_HELPER}{WRITE_HELPER}{PUT_BATCH}")),
            insert_if_absent: Script::from_lua(format!(
                "{PERMITTED_HELPER}{WRITE_HELPER}{INSERT_IF_ABSENT}"
            )),
            delete: Script::from_lua(format!("{PERMITTED_HELPER}{DELETE}")),
            clear: Script::from_lua(CLEAR),
            feed_page: Script::from_lua(format!("{READ_WITHIN_HELPER}{FEED_PAGE}")),
            time_slice: Script::from_lua(format!("{HMGET_HELPER}{READ_WITHIN_HELPER}{TIME_SLICE}")),
            meta_if_absent: Script::from_lua(META_IF_ABSENT),
        }
    }
}
