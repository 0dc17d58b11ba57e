//! Byte strings scanned eight bytes at a time, for questions of the kind
//! "does this text hold a byte of this set?": whether an id holds a control
//! character, whether a string needs an escape. Each answer is exact as to
//! whether, not as to which byte; finding which is left to a byte-by-byte
//! scan, run only when the answer is yes.

/// The bytes of `bytes` past its last whole word, read as one word (in no
/// particular byte order), for a scan that asks whether some byte is one it
/// seeks, not which: the last eight bytes, which overlap bytes the scan of
/// whole words saw already; of a shorter text, its first and last four; of
/// one to three bytes, its first, middle and last, with `a` (which no scan
/// seeks) after them. Read this way, a tail takes one or two loads, or three
/// for the shortest; a copy into a padded word was a call to `memcpy` for
/// every short string.
#[inline(always)]
fn last_word(bytes: &[u8]) -> u64 {
    if let Some(last) = bytes.last_chunk::<8>() {
        return u64::from_ne_bytes(*last);
    }
    if let (Some(first), Some(last)) = (bytes.first_chunk::<4>(), bytes.last_chunk::<4>()) {
        return u64::from(u32::from_ne_bytes(*first)) << 32 | u64::from(u32::from_ne_bytes(*last));
    }
    let padded = match (bytes.first(), bytes.get(bytes.len() / 2), bytes.last()) {
        (Some(&first), Some(&middle), Some(&last)) => {
            [first, middle, last, b'a', b'a', b'a', b'a', b'a']
        }
        _ => [b'a'; 8],
    };
    u64::from_ne_bytes(padded)
}

/// Whether `holds` says yes of some word of `bytes`: each whole word, then
/// the tail as [`last_word`] reads it.
#[inline(always)]
pub(crate) fn any_word(bytes: &[u8], holds: impl Fn(u64) -> bool) -> bool {
    let (words, tail) = bytes.as_chunks::<8>();
    words.iter().any(|word| holds(u64::from_ne_bytes(*word)))
        || (!tail.is_empty() && holds(last_word(bytes)))
}

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);

/// Whether some byte of `word` is below `n`, for `n` up to 0x80. Exact as to
/// whether, not as to which: a borrow can mark a byte above one found.
#[inline]
pub(crate) fn some_byte_below(word: u64, n: u8) -> bool {
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS != 0
}

/// Whether some byte of `word` is `byte` (a zero after the exclusive or).
#[inline]
pub(crate) fn holds_byte(word: u64, byte: u8) -> bool {
    some_byte_below(word ^ (ONES * u64::from(byte)), 1)
}

/// Calls `check` with texts of every length up to two words and a tail (so
/// whole words, tails shorter than a word and a last word overlapping the
/// one before it), all `a` but for one byte of every value at every
/// position: what a scan a word at a time must answer as a scan a byte at a
/// time does.
#[cfg(test)]
pub(crate) fn every_byte_at_every_position(mut check: impl FnMut(&[u8])) {
    let mut text = [b'a'; 19];
    for len in 0..=text.len() {
        let text = &mut text[..len];
        check(text);
        for at in 0..len {
            for byte in 0..=255u8 {
                text[at] = byte;
                check(text);
            }
            text[at] = b'a';
        }
    }
}
