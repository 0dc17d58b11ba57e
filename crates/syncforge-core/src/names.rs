//! Validated names: collection names and record ids.
//!
//! Both are 1 to [`MAX_NAME_BYTES`](crate::MAX_NAME_BYTES) bytes of UTF-8
//! without control characters. They are checked once, where they enter (a
//! user call, a JSON record, a stored file), and then carried in these types,
//! so that backends and the engine never check them again. Cloning either
//! copies no string: a collection name is a shared string, and a record id
//! of up to 23 bytes is held inline (a longer one is shared).

use std::borrow::Borrow;
use std::cell::RefCell;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::validate::{validate_collection, validate_id};

macro_rules! validated_name {
    ($(#[$doc:meta])* $name:ident($inner:ty), $validate:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name($inner);

        impl $name {
            #[doc = concat!("A ", $what, ": 1 to 1024 bytes of UTF-8, no control characters.")]
            pub fn new(name: impl AsRef<str>) -> Result<Self> {
                let name = name.as_ref();
                $validate(name)?;
                Ok($name(<$inner>::from(name)))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                *self.0 == *other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                *self.0 == **other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                *self.0 == **other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                *self == *other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                **self == *other.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Error;

            fn try_from(name: &str) -> Result<Self> {
                $name::new(name)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;

            fn try_from(name: String) -> Result<Self> {
                $name::new(name)
            }
        }

        impl TryFrom<&String> for $name {
            type Error = Error;

            fn try_from(name: &String) -> Result<Self> {
                $name::new(name.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;

            fn from_str(name: &str) -> Result<Self> {
                $name::new(name)
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0.to_string()
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::new(&*s).map_err(serde::de::Error::custom)
            }
        }
    };
}

validated_name!(
    /// The name of a collection, validated.
    ///
    /// ```
    /// use syncforge_core::CollectionName;
    /// let notes = CollectionName::new("notes")?;
    /// assert_eq!(notes, "notes");
    /// assert!(CollectionName::new("").is_err());
    /// # Ok::<(), syncforge_core::Error>(())
    /// ```
    CollectionName(Arc<str>),
    validate_collection,
    "collection name"
);

validated_name!(
    /// The id of a record, validated.
    ///
    /// An id of up to 23 bytes is held inline, in the record that carries
    /// it: comparing and hashing ids (every store lookup and every batch's
    /// repeated-id check) then reads no other memory, and making one
    /// allocates nothing. A longer id is a shared string.
    ///
    /// ```
    /// use syncforge_core::RecordId;
    /// let id = RecordId::new("n1")?;
    /// assert_eq!(id, "n1");
    /// assert!(RecordId::new("a\nb").is_err());
    /// # Ok::<(), syncforge_core::Error>(())
    /// ```
    RecordId(smol_str::SmolStr),
    validate_id,
    "record id"
);

/// Converts a name given as a string, or already validated, into a validated
/// name type: lets a call take `"notes"` and a [`CollectionName`] alike.
/// Strings are validated; names already validated are taken as they are.
pub trait IntoName<T> {
    /// The validated name.
    fn into_name(self) -> Result<T>;

    /// `use_name` run with the validated name, lent rather than made where
    /// it can be: a collection name given as a string that was given
    /// recently on this thread is lent from where it is kept, where
    /// [`into_name`](Self::into_name) copies a shared reference to it (an
    /// atomic count, taken and given back around every call).
    fn with_name<R>(self, use_name: impl FnOnce(&T) -> R) -> Result<R>
    where
        Self: Sized,
    {
        self.into_name().map(|name| use_name(&name))
    }
}

macro_rules! into_name {
    ($name:ident, $from_str:path $(, $with_str:path)?) => {
        impl IntoName<$name> for $name {
            fn into_name(self) -> Result<$name> {
                Ok(self)
            }
        }

        impl IntoName<$name> for &$name {
            fn into_name(self) -> Result<$name> {
                Ok(self.clone())
            }
        }

        impl IntoName<$name> for &str {
            fn into_name(self) -> Result<$name> {
                $from_str(self)
            }

            $(
                fn with_name<R>(self, use_name: impl FnOnce(&$name) -> R) -> Result<R> {
                    $with_str(self, use_name)
                }
            )?
        }

        impl IntoName<$name> for String {
            fn into_name(self) -> Result<$name> {
                $name::new(self)
            }
        }

        impl IntoName<$name> for &String {
            fn into_name(self) -> Result<$name> {
                $from_str(self.as_str())
            }
        }
    };
}

into_name!(
    CollectionName,
    CollectionName::recent,
    CollectionName::with_str
);
into_name!(RecordId, RecordId::new);

/// How many collection names given as strings each thread keeps.
const RECENT_NAMES_KEPT: usize = 4;

thread_local! {
    /// The collection names this thread was given as strings last, and the
    /// slot the next one takes.
    static RECENT_NAMES: RefCell<([Option<CollectionName>; RECENT_NAMES_KEPT], usize)> =
        const { RefCell::new(([const { None }; RECENT_NAMES_KEPT], 0)) };
}

/// The name kept in `slots` that is `name`, if one is.
fn kept<'a>(slots: &'a [Option<CollectionName>], name: &str) -> Option<&'a CollectionName> {
    slots.iter().flatten().find(|known| known.as_str() == name)
}

impl CollectionName {
    /// The name as a shared string (no copy).
    pub fn as_shared(&self) -> &Arc<str> {
        &self.0
    }

    /// [`CollectionName::new`] for a name given as a string, shared with the
    /// same name given recently on this thread: a program names the same few
    /// collections on every call (`engine.put("notes", ..)`), and each call
    /// validated and copied the name again. A name is valid or not by its
    /// bytes alone, so an equal name found here is valid. Keeps a handful of
    /// names, so it cannot grow.
    fn recent(name: &str) -> Result<CollectionName> {
        RECENT_NAMES
            .try_with(|names| {
                // Lent to a `with_str` further up this thread's stack: made
                // anew, and not kept.
                let Ok(mut names) = names.try_borrow_mut() else {
                    return CollectionName::new(name);
                };
                let (slots, next) = &mut *names;
                if let Some(known) = kept(slots, name) {
                    return Ok(known.clone());
                }
                let fresh = CollectionName::new(name)?;
                slots[*next] = Some(fresh.clone());
                *next = (*next + 1) % RECENT_NAMES_KEPT;
                Ok(fresh)
            })
            // Gone (from another thread-local's destructor): made anew.
            .unwrap_or_else(|_| CollectionName::new(name))
    }

    /// [`IntoName::with_name`] of a name given as a string: a name kept by
    /// [`recent`](Self::recent) is lent while `use_name` runs, which may
    /// itself name collections (an event handler that writes): those are
    /// made as [`recent`](Self::recent) makes them, without the names kept.
    fn with_str<R>(name: &str, use_name: impl FnOnce(&CollectionName) -> R) -> Result<R> {
        // Gone (from another thread-local's destructor): made anew. Asked
        // first, so that `use_name` is not given to a closure that never runs.
        if RECENT_NAMES.try_with(|_| ()).is_err() {
            return CollectionName::new(name).map(|fresh| use_name(&fresh));
        }
        RECENT_NAMES.with(|names| {
            if let Ok(names) = names.try_borrow() {
                if let Some(known) = kept(&names.0, name) {
                    return Ok(use_name(known));
                }
            }
            CollectionName::recent(name).map(|fresh| use_name(&fresh))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A collection named by a string (`engine.put("notes", ..)`) from a
    /// destructor run while the thread's tables are torn down: the table of
    /// recent names was reached without asking whether it was still there,
    /// which panicked.
    #[test]
    fn collections_are_named_while_a_threads_locals_are_torn_down() {
        fn lend(name: &str) -> bool {
            IntoName::<CollectionName>::with_name(name, |lent| lent.as_str() == name)
                .unwrap_or(false)
        }
        assert!(crate::testing::held_while_torn_down(
            || lend("early"),
            // The table must be gone by then, or this test proves nothing.
            || RECENT_NAMES.try_with(|_| ()).is_err() && lend("late"),
        ));
    }

    #[test]
    fn names_compare_with_strings_and_look_up_by_str() {
        let id = RecordId::new("n1").unwrap();
        assert_eq!(id, "n1");
        assert_eq!("n1", id);
        assert_eq!(id.to_string(), "n1");
        let mut map = HashMap::new();
        map.insert(id, 1);
        assert_eq!(map.get("n1"), Some(&1));
    }

    #[test]
    fn ids_inline_and_shared_behave_as_their_strings() {
        use std::hash::BuildHasher;
        let hasher = foldhash::fast::FixedState::default();
        // 23 bytes are held inline, 24 and the longest allowed are shared.
        for len in [1, 23, 24, crate::MAX_NAME_BYTES] {
            let text = "i".repeat(len);
            let id = RecordId::new(&text).unwrap();
            assert_eq!(id.as_str(), text);
            assert_eq!(id, RecordId::new(text.clone()).unwrap());
            assert_eq!(hasher.hash_one(&id), hasher.hash_one(text.as_str()));
            let mut map = HashMap::new();
            map.insert(id.clone(), len);
            assert_eq!(map.get(text.as_str()), Some(&len));
            assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{text}\""));
        }
        assert!(RecordId::new("i".repeat(crate::MAX_NAME_BYTES + 1)).is_err());
        assert!(RecordId::new("a").unwrap() < RecordId::new("b".repeat(30)).unwrap());
    }

    #[test]
    fn invalid_names_are_refused_with_their_own_errors() {
        assert!(matches!(
            CollectionName::new(""),
            Err(Error::InvalidCollection { .. })
        ));
        assert!(matches!(RecordId::new(""), Err(Error::InvalidId { .. })));
        assert!(serde_json::from_str::<RecordId>("\"a\\u0000\"").is_err());
        let back: CollectionName = serde_json::from_str("\"notes\"").unwrap();
        assert_eq!(back, "notes");
    }

    #[test]
    fn into_name_takes_strings_and_names() {
        let a: CollectionName = "notes".into_name().unwrap();
        let b: CollectionName = (&a).into_name().unwrap();
        let c: CollectionName = String::from("notes").into_name().unwrap();
        assert_eq!(a, b);
        assert_eq!(b, c);
    }

    /// A name given as a string is lent from the names kept, also while a
    /// call inside the one it was lent to names collections itself (kept
    /// and new ones alike), and a bad name is refused before anything runs.
    #[test]
    fn names_are_lent_also_to_calls_that_name_collections_inside() {
        let kept: CollectionName = "lent".into_name().unwrap();
        let inner = "lent"
            .with_name(|outer: &CollectionName| {
                assert!(Arc::ptr_eq(outer.as_shared(), kept.as_shared()));
                let again = "lent"
                    .with_name(|again: &CollectionName| again.clone())
                    .unwrap();
                assert!(Arc::ptr_eq(again.as_shared(), kept.as_shared()));
                let fresh: CollectionName = "made-inside".into_name().unwrap();
                let lent_fresh = "made-inside-too"
                    .with_name(|name: &CollectionName| name.to_string())
                    .unwrap();
                (fresh.to_string(), lent_fresh)
            })
            .unwrap();
        assert_eq!(
            inner,
            ("made-inside".to_owned(), "made-inside-too".to_owned())
        );
        let mut ran = false;
        let refused = "bad\u{1}".with_name(|_: &CollectionName| ran = true);
        assert!(matches!(refused, Err(Error::InvalidCollection { .. })));
        assert!(!ran);
        let id = "r1".with_name(|id: &RecordId| id.to_string()).unwrap();
        assert_eq!(id, "r1");
    }

    #[test]
    fn recent_collection_names_are_shared_and_still_checked() {
        let names = ["a", "b", "c", "d", "e", "a"];
        let first: Vec<CollectionName> = names.iter().map(|n| n.into_name().unwrap()).collect();
        let again: CollectionName = "e".into_name().unwrap();
        assert!(Arc::ptr_eq(first[4].as_shared(), again.as_shared()));
        for (name, parsed) in names.iter().zip(&first) {
            assert_eq!(parsed, name);
        }
        for _ in 0..2 {
            let refused: Result<CollectionName> = "bad\u{1}".into_name();
            assert!(matches!(refused, Err(Error::InvalidCollection { .. })));
        }
    }
}
