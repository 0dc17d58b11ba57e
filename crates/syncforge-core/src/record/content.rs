//! The user content of a write.

use serde_json::{Map, Value};

use super::json::open_object;
use super::RESERVED_KEYS;
use crate::error::Result;
use crate::names::RecordId;

/// The user content of a write: a valid id and the fields, without metadata.
///
/// Built from any JSON object with a string `id`; the reserved metadata keys
/// (`_version`, `_timestamp`, `_deleted`, `_clientId`, `_sync`) are checked
/// for type and then dropped, so a record read from the engine can be edited
/// and put back as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Content {
    pub(super) id: RecordId,
    pub(super) fields: Map<String, Value>,
}

impl Content {
    /// Validates a JSON value as record content. A field nested deeper than
    /// [`MAX_NESTING_DEPTH`](crate::MAX_NESTING_DEPTH) is refused with
    /// [`Error::InvalidRecord`](crate::Error::InvalidRecord) naming it, and
    /// the refused value is dropped without recursion.
    pub fn from_value(value: Value) -> Result<Content> {
        let (id, mut map) = open_object(value)?;
        for key in RESERVED_KEYS {
            map.remove(key);
        }
        Ok(Content { id, fields: map })
    }

    /// The record id.
    pub fn id(&self) -> &RecordId {
        &self.id
    }

    /// The user fields.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn content(v: Value) -> Content {
        Content::from_value(v).unwrap()
    }

    #[test]
    fn content_drops_metadata_after_checking_its_type() {
        let c = content(json!({"id": "a", "_version": 3, "_sync": {}, "x": 1}));
        assert_eq!(c.fields().len(), 1);
        assert!(Content::from_value(json!({"id": "a", "_deleted": 1})).is_err());
    }
}
