//! Hybrid logical clock: stamps that follow wall time but never go backwards.
//!
//! A [`Stamp`] is `(millis, counter, client)`, totally ordered in that order.
//! [`Hlc::now`] issues a stamp for a local write; [`Hlc::observe`] takes in a
//! stamp received from another replica, refusing it when it lies more than the
//! configured drift ahead of local physical time. Because the counter breaks
//! ties within a millisecond and the client id breaks ties between replicas, a
//! replica never issues the same stamp twice and no two replicas issue equal
//! stamps.

use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::validate::validate_client_id;

/// Identifies a replica. Cheap to clone (shared string).
///
/// A thin pointer (`Arc<String>`, not the two-word `Arc<str>`): every field of
/// every record carries a stamp, and a stamp with a one-word client id is a
/// quarter smaller. Ids are shared: the same id made twice on one thread is
/// one string, so comparing the stamps of one writer (all fields of a record
/// written together have equal stamps) stops at the pointer instead of
/// reading both strings.
pub struct ClientId(Arc<String>);

impl Clone for ClientId {
    fn clone(&self) -> Self {
        ClientId(Arc::clone(&self.0))
    }

    /// Leaves the id as it is when it already is `source`'s shared id: a
    /// reference count is an atomic operation, which waits for every write
    /// before it, and the stamps a store keeps up to date are nearly always
    /// of the same client.
    fn clone_from(&mut self, source: &Self) {
        if !Arc::ptr_eq(&self.0, &source.0) {
            self.0 = Arc::clone(&source.0);
        }
    }
}

impl ClientId {
    /// A client id: 1 to 1024 bytes, no control characters. Anything else
    /// is refused with [`Error::InvalidArgument`](crate::Error::InvalidArgument).
    pub fn new(id: &str) -> Result<Self> {
        thread_local! {
            /// The id this thread made last. Ids come in runs (every stamp
            /// of a record read, most records of a sync, are one writer's),
            /// and an id equal to it was checked already and is shared as it.
            static LAST: RefCell<Option<ClientId>> = const { RefCell::new(None) };
        }
        // `try_with` here and below: from another thread-local's
        // destructor these tables may be gone, and the id is then checked
        // and made afresh.
        let last = LAST.try_with(|last| {
            last.borrow()
                .as_ref()
                .filter(|last| last.as_str() == id)
                .cloned()
        });
        if let Ok(Some(last)) = last {
            return Ok(last);
        }
        validate_client_id(id)?;
        let made = shared_client(id);
        let _ = LAST.try_with(|last| *last.borrow_mut() = Some(made.clone()));
        Ok(made)
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The shared copy of client id `id`. Each thread keeps a table of the short
/// ids it has seen, bounded so that a stream of ever-new ids cannot grow it
/// without limit (ids beyond the bound are simply not shared).
fn shared_client(id: &str) -> ClientId {
    const MAX_SHARED_LEN: usize = 128;
    const MAX_SHARED_IDS: usize = 1024;
    thread_local! {
        static IDS: RefCell<foldhash::HashMap<String, ClientId>> = RefCell::new(foldhash::HashMap::default());
    }
    if id.len() > MAX_SHARED_LEN {
        return ClientId(Arc::new(id.to_owned()));
    }
    IDS.try_with(|ids| {
        let mut ids = ids.borrow_mut();
        if let Some(shared) = ids.get(id) {
            return shared.clone();
        }
        let fresh = ClientId(Arc::new(id.to_owned()));
        if ids.len() < MAX_SHARED_IDS {
            ids.insert(id.to_owned(), fresh.clone());
        }
        fresh
    })
    .unwrap_or_else(|_| ClientId(Arc::new(id.to_owned())))
}

impl PartialEq for ClientId {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for ClientId {}

impl std::hash::Hash for ClientId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Ord for ClientId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.0, &other.0) {
            std::cmp::Ordering::Equal
        } else {
            self.as_str().cmp(other.as_str())
        }
    }
}

impl PartialOrd for ClientId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<&str> for ClientId {
    type Error = Error;

    fn try_from(id: &str) -> Result<Self> {
        ClientId::new(id)
    }
}

/// A client id given as a string or as a [`ClientId`]: what
/// [`Stamp::new`] takes, so that building a stamp is one fallible step.
pub trait IntoClientId {
    /// The validated client id.
    fn into_client_id(self) -> Result<ClientId>;
}

impl IntoClientId for ClientId {
    fn into_client_id(self) -> Result<ClientId> {
        Ok(self)
    }
}

impl IntoClientId for &ClientId {
    fn into_client_id(self) -> Result<ClientId> {
        Ok(self.clone())
    }
}

impl IntoClientId for &str {
    fn into_client_id(self) -> Result<ClientId> {
        ClientId::new(self)
    }
}

impl IntoClientId for &String {
    fn into_client_id(self) -> Result<ClientId> {
        ClientId::new(self)
    }
}

impl IntoClientId for String {
    fn into_client_id(self) -> Result<ClientId> {
        ClientId::new(&self)
    }
}

impl AsRef<str> for ClientId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for ClientId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ClientId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ClientId::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A hybrid-logical-clock stamp: `(millis, counter, client)`.
///
/// Ordered by milliseconds, then counter, then client id. Its string form,
/// `"{millis:012x}.{counter:08x}.{client}"`, sorts the same way as the stamp.
#[derive(PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stamp {
    millis: u64,
    counter: u32,
    client: ClientId,
}

impl Clone for Stamp {
    fn clone(&self) -> Self {
        Stamp {
            millis: self.millis,
            counter: self.counter,
            client: self.client.clone(),
        }
    }

    /// Copies the two integers, and the client id only when it differs
    /// ([`ClientId`]'s `clone_from`).
    fn clone_from(&mut self, source: &Self) {
        self.millis = source.millis;
        self.counter = source.counter;
        self.client.clone_from(&source.client);
    }
}

/// Largest millisecond value a stamp can carry (12 hex digits; year 10889).
pub const MAX_STAMP_MILLIS: u64 = (1 << 48) - 1;

thread_local! {
    /// A stamp of the client that wrote last on this thread (at first, of
    /// an empty client id that nothing ever shows).
    static LAST_WRITER: RefCell<Stamp> = RefCell::new(Stamp {
        millis: 0,
        counter: 0,
        client: ClientId(Arc::new(String::new())),
    });
}

/// A copy of a borrowed stamp, where a function takes `impl Into<Stamp>`.
impl From<&Stamp> for Stamp {
    fn from(stamp: &Stamp) -> Self {
        stamp.clone()
    }
}

impl Stamp {
    /// A stand-in for the stamp a field of a put will get: the fields of a
    /// put are laid out as a record holds them before the put is stamped,
    /// so that the record takes them as they are. Its client is the last
    /// writer on this thread, so [`assign`](Self::assign) usually finds the
    /// client id in place and copies two integers, not a shared pointer.
    /// Never seen outside: every field is stamped before a record holds it.
    #[inline]
    pub(crate) fn unstamped() -> Stamp {
        LAST_WRITER
            .try_with(|last| last.borrow().clone())
            .unwrap_or_else(|_| Stamp::of_no_writer())
    }

    /// What [`unstamped`](Self::unstamped) gives once this thread's last
    /// writer is gone (from another thread-local's destructor): a stamp of
    /// the empty client id, as at first. Out of line: it never comes on a
    /// put's path but at a thread's end.
    #[cold]
    #[inline(never)]
    fn of_no_writer() -> Stamp {
        Stamp {
            millis: 0,
            counter: 0,
            client: ClientId(Arc::new(String::new())),
        }
    }

    /// Makes this stamp equal to `to`; the client id is cloned only when it
    /// differs, and then becomes the next [`unstamped`](Self::unstamped).
    #[inline]
    pub(crate) fn assign(&mut self, to: &Stamp) {
        self.millis = to.millis;
        self.counter = to.counter;
        if !Arc::ptr_eq(&self.client.0, &to.client.0) {
            self.client = to.client.clone();
            let _ = LAST_WRITER.try_with(|last| last.borrow_mut().client = to.client.clone());
        }
    }

    /// A stamp from its parts; the client is a [`ClientId`] or a string.
    /// Fails when `millis` exceeds [`MAX_STAMP_MILLIS`] or the client id is
    /// not valid.
    ///
    /// ```
    /// use syncforge_core::Stamp;
    /// let stamp = Stamp::new(1_000, 0, "phone")?;
    /// assert_eq!(stamp.to_string(), "0000000003e8.00000000.phone");
    /// # Ok::<(), syncforge_core::Error>(())
    /// ```
    pub fn new(millis: u64, counter: u32, client: impl IntoClientId) -> Result<Self> {
        let client = client.into_client_id()?;
        if millis > MAX_STAMP_MILLIS {
            return Err(Error::InvalidStamp {
                stamp: format!("({millis}, {counter}, {client})"),
                reason: format!("milliseconds {millis} exceed the maximum {MAX_STAMP_MILLIS}"),
            });
        }
        Ok(Stamp {
            millis,
            counter,
            client,
        })
    }

    /// Milliseconds since the Unix epoch (hybrid: at least the physical time of the write).
    pub fn millis(&self) -> u64 {
        self.millis
    }

    /// Logical counter, breaking ties within one millisecond.
    pub fn counter(&self) -> u32 {
        self.counter
    }

    /// The replica that issued the stamp.
    pub fn client(&self) -> &ClientId {
        &self.client
    }

    /// Writes the part of the string form before the client id,
    /// `"{millis:012x}.{counter:08x}."`, spelt out digit by digit: through
    /// `format!` it cost about 700 instructions a stamp, and writing a
    /// record's JSON writes one stamp a field.
    pub(crate) fn write_fixed_text(&self, out: &mut impl fmt::Write) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digit = |value: u64, shift: usize| HEX[(value >> shift & 0xf) as usize];
        let mut text = [b'.'; 22];
        // `millis` is below 2^48: twelve digits hold it.
        for (i, byte) in text[..12].iter_mut().enumerate() {
            *byte = digit(self.millis, 4 * (11 - i));
        }
        for (i, byte) in text[13..21].iter_mut().enumerate() {
            *byte = digit(u64::from(self.counter), 4 * (7 - i));
        }
        // ASCII digits and dots: always text.
        out.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_fixed_text(f)?;
        f.write_str(self.client.as_str())
    }
}

impl fmt::Debug for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Stamp({self})")
    }
}

impl FromStr for Stamp {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid_stamp(s, format!("malformed: {why}"));
        const FORM: &str = "expected `MMMMMMMMMMMM.CCCCCCCC.client`";
        // A long text whose character straddles a part's end is no
        // shorter than a stamp: it is just not one.
        let part = |range: std::ops::Range<usize>| {
            s.get(range)
                .ok_or_else(|| bad(if s.len() < 22 { "too short" } else { FORM }))
        };
        let millis_hex = part(0..12)?;
        let counter_hex = part(13..21)?;
        if s.as_bytes().get(12) != Some(&b'.') || s.as_bytes().get(21) != Some(&b'.') {
            return Err(bad(FORM));
        }
        let (Some(millis), Some(counter)) = (lower_hex(millis_hex), lower_hex(counter_hex)) else {
            return Err(bad("milliseconds and counter must be lowercase hex"));
        };
        // Eight hex digits always fit.
        let counter = u32::try_from(counter).map_err(|_| bad("bad counter"))?;
        let client = ClientId::new(&s[22..]).map_err(|_| bad("bad client id"))?;
        // Twelve hex digits never exceed MAX_STAMP_MILLIS.
        Ok(Stamp {
            millis,
            counter,
            client,
        })
    }
}

/// The value of `digits`, all of them lowercase hex (at most 16 of them), or
/// `None`. One pass that checks and reads: reading a record reads a stamp a
/// field.
fn lower_hex(digits: &str) -> Option<u64> {
    digits.bytes().try_fold(0u64, |value, byte| {
        let digit = match byte {
            b'0'..=b'9' => byte - b'0',
            b'a'..=b'f' => byte - b'a' + 10,
            _ => return None,
        };
        Some(value << 4 | u64::from(digit))
    })
}

impl serde::Serialize for Stamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Stamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A source of physical time in milliseconds since the Unix epoch.
///
/// Injectable so that tests can drive time (see [`ManualTime`]).
pub trait TimeSource: Send + Sync + fmt::Debug {
    /// Current physical time, milliseconds since the Unix epoch.
    fn now_millis(&self) -> u64;
}

/// The system wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl TimeSource for SystemClock {
    fn now_millis(&self) -> u64 {
        // A clock before 1970 reads as 0; the HLC then runs on its counter.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that only moves when told to: for tests and simulations.
#[derive(Debug, Default)]
pub struct ManualTime(AtomicU64);

impl ManualTime {
    /// A manual clock showing `millis`.
    pub fn new(millis: u64) -> Self {
        ManualTime(AtomicU64::new(millis))
    }

    /// Sets the time (it may go backwards, as real wall clocks do).
    pub fn set(&self, millis: u64) {
        self.0.store(millis, Ordering::SeqCst);
    }

    /// Moves the time forward by `millis`, stopping at `u64::MAX` instead of
    /// wrapping round to the past.
    pub fn advance(&self, millis: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                Some(now.saturating_add(millis))
            });
    }
}

impl TimeSource for ManualTime {
    fn now_millis(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl<T: TimeSource + ?Sized> TimeSource for Arc<T> {
    fn now_millis(&self) -> u64 {
        (**self).now_millis()
    }
}

/// Default maximum drift of remote stamps ahead of local time: 5 minutes.
pub const DEFAULT_MAX_DRIFT: Duration = Duration::from_secs(300);

/// A hybrid logical clock for one replica.
///
/// Not `Clone`: a copy would go on from the same reading and issue the same
/// stamps as the original, for different writes. Share one clock instead
/// (the engine keeps its own behind a lock).
///
/// ```compile_fail
/// use syncforge_core::{ClientId, Hlc};
/// let clock = Hlc::new(ClientId::new("phone").unwrap());
/// let copy = clock.clone();
/// ```
#[derive(Debug)]
pub struct Hlc {
    client: ClientId,
    millis: u64,
    counter: u32,
    max_drift_ms: u64,
    time: Arc<dyn TimeSource>,
}

impl Hlc {
    /// A clock for `client` reading the system wall clock, with the default drift bound.
    pub fn new(client: ClientId) -> Self {
        Hlc::with_time(client, Arc::new(SystemClock))
    }

    /// A clock reading `time` (inject [`ManualTime`] in tests).
    pub fn with_time(client: ClientId, time: Arc<dyn TimeSource>) -> Self {
        Hlc {
            client,
            millis: 0,
            counter: 0,
            max_drift_ms: duration_ms(DEFAULT_MAX_DRIFT),
            time,
        }
    }

    /// Sets how far ahead of local physical time a remote stamp may be.
    pub fn with_max_drift(mut self, drift: Duration) -> Self {
        self.max_drift_ms = duration_ms(drift);
        self
    }

    /// The replica this clock stamps for.
    pub fn client(&self) -> &ClientId {
        &self.client
    }

    /// The configured maximum drift in milliseconds.
    pub fn max_drift_ms(&self) -> u64 {
        self.max_drift_ms
    }

    /// Current physical time of the injected time source.
    pub fn physical_millis(&self) -> u64 {
        self.time.now_millis()
    }

    /// Issues a stamp for a local event: strictly greater than every stamp
    /// this clock issued or observed before, whatever the wall clock does.
    ///
    /// Fails with [`Error::InvalidStamp`] only when no greater stamp can be
    /// represented: the clock has reached the last stamp (year 10889, which
    /// only a hand-made record seeding the clock can bring about). It never
    /// issues the same stamp twice.
    pub fn now(&mut self) -> Result<Stamp> {
        let physical = self.time.now_millis().min(MAX_STAMP_MILLIS);
        if physical > self.millis {
            self.millis = physical;
            self.counter = 0;
        } else if self.counter < u32::MAX {
            self.counter += 1;
        } else if self.millis < MAX_STAMP_MILLIS {
            // The counter is exhausted within this millisecond: borrow the next one.
            self.millis += 1;
            self.counter = 0;
        } else {
            return Err(Error::InvalidStamp {
                stamp: format!("{:012x}.{:08x}.{}", self.millis, self.counter, self.client),
                reason: "the clock has reached the largest representable stamp and cannot \
                         issue a newer one; a record stamped this far in the future was \
                         stored by hand"
                    .to_owned(),
            });
        }
        Ok(Stamp {
            millis: self.millis,
            counter: self.counter,
            client: self.client.clone(),
        })
    }

    /// How far `stamp` lies ahead of local physical time beyond the drift
    /// bound, if it does: `Some(ahead_ms)` means it must be refused.
    pub fn drift_excess(&self, stamp: &Stamp) -> Option<u64> {
        self.drift_excess_at(stamp, self.time.now_millis())
    }

    /// [`drift_excess`](Self::drift_excess) against a physical time read
    /// beforehand, so that a batch of stamps is checked with one clock read.
    pub fn drift_excess_at(&self, stamp: &Stamp, physical: u64) -> Option<u64> {
        let ahead = stamp.millis.saturating_sub(physical);
        (ahead > self.max_drift_ms).then_some(ahead)
    }

    /// Takes in a stamp received from another replica (the HLC receive rule):
    /// later local stamps will be greater than it. Refuses, without changing the
    /// clock, a stamp more than the drift bound ahead of local physical time.
    pub fn observe(&mut self, stamp: &Stamp) -> Result<()> {
        if let Some(ahead_ms) = self.drift_excess(stamp) {
            return Err(Error::StampAhead {
                stamp: stamp.to_string(),
                ahead_ms,
                max_drift_ms: self.max_drift_ms,
            });
        }
        self.seed(stamp);
        Ok(())
    }

    /// Moves the clock past `stamp` without a drift check: used when opening a
    /// store, whose stamps this replica already accepted.
    pub fn seed(&mut self, stamp: &Stamp) {
        if (stamp.millis, stamp.counter) > (self.millis, self.counter) {
            self.millis = stamp.millis;
            self.counter = stamp.counter;
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }

    #[test]
    fn string_form_round_trips_and_sorts_like_the_stamp() {
        let a = Stamp::new(1_700_000_000_000, 3, client("phone")).unwrap();
        let b = Stamp::new(1_700_000_000_000, 10, client("laptop")).unwrap();
        assert_eq!(a.to_string(), "018bcfe56800.00000003.phone");
        assert_eq!(a.to_string().parse::<Stamp>().unwrap(), a);
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
    }

    #[test]
    fn client_ids_are_shared_and_order_by_their_text() {
        let (a, again) = (client("phone"), client("phone"));
        assert!(Arc::ptr_eq(&a.0, &again.0));
        let unshared = ClientId(Arc::new("phone".to_owned()));
        assert_eq!(a, unshared);
        assert_eq!(a.cmp(&unshared), std::cmp::Ordering::Equal);
        assert!(client("laptop") < a);
    }

    /// A bad client id was refused as a bad record id ("invalid record id").
    #[test]
    fn a_bad_client_id_is_refused_as_a_client_id() {
        for bad in ["", "a\u{7}b"] {
            match Stamp::new(1, 0, bad) {
                Err(Error::InvalidArgument { name, reason }) => {
                    assert_eq!(name, "client_id");
                    assert!(reason.contains(&format!("{bad:?}")), "{reason}");
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    /// Moving the time forward by a huge step wrapped it round to the past.
    #[test]
    fn manual_time_advances_to_its_end_and_no_further() {
        let time = ManualTime::new(5);
        time.advance(u64::MAX);
        assert_eq!(time.now_millis(), u64::MAX);
        time.advance(1);
        assert_eq!(time.now_millis(), u64::MAX);
    }

    #[test]
    fn stamps_stay_three_words() {
        // Every field of every record holds one: its size is the records' size.
        assert_eq!(std::mem::size_of::<Stamp>(), 24);
        assert_eq!(std::mem::size_of::<Option<Stamp>>(), 24);
    }

    #[test]
    fn clone_from_keeps_a_shared_client_and_takes_another() {
        let phone = client("phone");
        let mut kept = Stamp::new(1, 0, phone.clone()).unwrap();
        kept.clone_from(&Stamp::new(5, 2, phone.clone()).unwrap());
        assert_eq!(kept, Stamp::new(5, 2, "phone").unwrap());
        assert!(Arc::ptr_eq(&kept.client().0, &phone.0));
        let laptop = Stamp::new(3, 1, "laptop").unwrap();
        kept.clone_from(&laptop);
        assert_eq!(kept, laptop);
        assert!(Arc::ptr_eq(&kept.client().0, &laptop.client().0));
    }

    #[test]
    fn malformed_stamps_are_refused() {
        for s in [
            "",
            "x",
            "018bcfe56800.00000003.",
            "018BCFE56800.00000003.a",
            "018bcfe56800-00000003.a",
            "018bcfe56800.0000000g.a",
        ] {
            assert!(s.parse::<Stamp>().is_err(), "{s:?}");
        }
        // Long enough, but a character straddles the end of the counter:
        // it was called too short.
        let straddling = "018bcfe56800.0000000é.client";
        let error = straddling.parse::<Stamp>().unwrap_err().to_string();
        assert!(error.contains("expected `MMMMMMMMMMMM"), "{error}");
        assert!(!error.contains("too short"), "{error}");
        let error = "018bcfe5".parse::<Stamp>().unwrap_err().to_string();
        assert!(error.contains("too short"), "{error}");
    }

    #[test]
    fn stamps_increase_when_wall_clock_goes_backwards() {
        let time = Arc::new(ManualTime::new(1000));
        let mut hlc = Hlc::with_time(client("a"), time.clone());
        let s1 = hlc.now().unwrap();
        time.set(500);
        let s2 = hlc.now().unwrap();
        assert!(s2 > s1);
        assert_eq!(s2.millis(), 1000);
    }

    #[test]
    fn the_last_representable_stamp_is_issued_once_then_refused() {
        let mut hlc = Hlc::with_time(client("a"), Arc::new(ManualTime::new(0)));
        hlc.seed(&Stamp::new(MAX_STAMP_MILLIS, u32::MAX - 1, client("z")).unwrap());
        let last = hlc.now().unwrap();
        assert_eq!(
            (last.millis(), last.counter()),
            (MAX_STAMP_MILLIS, u32::MAX)
        );
        assert_eq!(last.to_string().parse::<Stamp>().unwrap(), last);
        // No greater stamp exists: refused, never the same stamp again.
        assert!(matches!(hlc.now(), Err(Error::InvalidStamp { .. })));
        assert!(matches!(hlc.now(), Err(Error::InvalidStamp { .. })));
    }

    #[test]
    fn observe_refuses_stamps_beyond_drift_and_keeps_state() {
        let time = Arc::new(ManualTime::new(1_000_000));
        let mut hlc = Hlc::with_time(client("a"), time).with_max_drift(Duration::from_secs(1));
        let far = Stamp::new(1_002_000, 0, client("b")).unwrap();
        assert!(matches!(
            hlc.observe(&far),
            Err(Error::StampAhead { ahead_ms: 2000, .. })
        ));
        assert_eq!(hlc.now().unwrap().millis(), 1_000_000);
        let near = Stamp::new(1_000_900, 7, client("b")).unwrap();
        hlc.observe(&near).unwrap();
        let next = hlc.now().unwrap();
        assert!(next > near);
    }
}
