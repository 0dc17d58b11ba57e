//! Reading records in the TypeScript library's form: metadata only, no
//! per-field stamps.

use serde_json::{Map, Value};

use super::fields::FieldState;
use super::json::SeedMeta;
use super::{Record, CLIENT_ID_KEY, TIMESTAMP_KEY, VERSION_KEY};
use crate::error::{Error, Result};
use crate::hlc::{ClientId, Stamp};
use crate::names::RecordId;
use crate::validate::check_name;
use crate::version_vector::VersionVector;

/// A record in the TypeScript library's form: every field stamped
/// `(_timestamp, 0, _clientId)`, a deleted record's tombstone
/// `(_timestamp, 1, _clientId)`, the version vector `{_clientId: _version}`.
pub(super) fn from_seed(
    id: RecordId,
    fields: Map<String, Value>,
    meta: &SeedMeta<'_>,
) -> Result<Record> {
    let missing = |key: &str| {
        Error::invalid_field(
            Some(&id),
            key,
            "is missing (a record needs `_sync`, or the metadata `_timestamp`, `_clientId` and `_version`)",
        )
    };
    let millis = meta.timestamp.ok_or_else(|| missing(TIMESTAMP_KEY))?;
    let client = meta.client.ok_or_else(|| missing(CLIENT_ID_KEY))?;
    check_name(client).map_err(|reason| Error::invalid_field(Some(&id), CLIENT_ID_KEY, reason))?;
    let client = ClientId::new(client)?;
    let version = meta.version.ok_or_else(|| missing(VERSION_KEY))?;
    let written = Stamp::new(millis, 0, client.clone())?;
    let tombstone = if meta.deleted == Some(true) {
        Some(Stamp::new(millis, 1, client.clone())?)
    } else {
        None
    };
    let mut versions = VersionVector::new();
    versions.set(client, version);
    let fields = fields
        .into_iter()
        .map(|(k, v)| (k, FieldState::checked(Some(&v), written.clone())))
        .collect();
    Ok(Record::assembled(id, fields, written, tombstone, versions))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stamp(millis: u64, counter: u32, client: &str) -> Stamp {
        Stamp::new(millis, counter, client).unwrap()
    }

    #[test]
    fn typescript_records_are_read() {
        let r = Record::from_json(json!({
            "id": "1", "name": "Alice", "_version": 2, "_timestamp": 2000, "_deleted": false, "_clientId": "a"
        }))
        .unwrap();
        assert_eq!(
            r.field_states().get("name").unwrap().stamp(),
            &stamp(2000, 0, "a")
        );
        assert_eq!(r.version(), 2);
        assert!(!r.is_deleted());
        let d = Record::from_json(json!({
            "id": "2", "_version": 3, "_timestamp": 5, "_deleted": true, "_clientId": "b"
        }))
        .unwrap();
        assert!(d.is_deleted());
        assert_eq!(d.tombstone(), Some(&stamp(5, 1, "b")));
        assert_eq!(Record::from_json(d.to_json()).unwrap(), d);
    }

    /// An empty `_clientId` was refused as an invalid record id.
    #[test]
    fn a_bad_client_id_is_refused_as_that_field() {
        let refused = Record::from_json(json!({
            "id": "3", "_version": 1, "_timestamp": 5, "_clientId": ""
        }));
        match refused {
            Err(Error::InvalidRecord { id, field, reason }) => {
                assert_eq!(id.as_deref(), Some("3"));
                assert_eq!(field.as_deref(), Some(CLIENT_ID_KEY));
                assert_eq!(reason, "must not be empty");
            }
            other => panic!("{other:?}"),
        }
    }
}
