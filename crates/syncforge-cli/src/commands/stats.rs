//! `syncforge stats STORE`: what each collection holds.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Result;
use serde_json::{json, Value};
use syncforge::{CollectionName, Cursor, Record, RecordId, Stamp};

use super::Context;
use crate::cli::StatsArgs;
use crate::reader::Reader;
use crate::store::parse_url;

/// One collection's figures.
struct Figures {
    records: u64,
    deleted: u64,
    /// The cursor after the last change: where a reader that has seen
    /// everything stands.
    head: Cursor,
    newest: Option<Stamp>,
    json_bytes: u64,
}

pub(crate) async fn run(args: StatsArgs, cx: &mut Context) -> Result<()> {
    let url = parse_url("STORE", &args.store)?;
    let store = Reader::open(url, cx).await?;
    let id = store.id().await?;
    let names = store.collections().await?;
    let mut rows = Vec::with_capacity(names.len());
    for name in &names {
        rows.push((name, figures(&store, name).await?));
    }
    if cx.out.json() {
        let collections: Vec<Value> = rows
            .iter()
            .map(|(name, f)| {
                json!({
                    "collection": name.as_str(),
                    "records": f.records,
                    "deleted": f.deleted,
                    "feed_head": f.head.get(),
                    "newest_stamp": f.newest,
                    "newest_time": f.newest.as_ref().map(time),
                    "json_bytes": f.json_bytes,
                })
            })
            .collect();
        cx.out.value(&json!({
            "store": store.url().to_string(),
            "kind": store.url().kind(),
            "store_id": id,
            "collections": collections,
        }))?;
    } else {
        cx.out.line(&format!(
            "{} ({}, store {id})",
            store.url(),
            store.url().kind(),
        ))?;
        let header = [
            "collection",
            "records",
            "deleted",
            "feed head",
            "newest stamp",
            "json bytes",
        ];
        let mut table = vec![header.map(str::to_owned).to_vec()];
        for (name, f) in &rows {
            table.push(vec![
                name.to_string(),
                f.records.to_string(),
                f.deleted.to_string(),
                f.head.to_string(),
                f.newest
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |s| format!("{} {}", time(s), s.client())),
                f.json_bytes.to_string(),
            ]);
        }
        for line in layout(&table) {
            cx.out.line(&line)?;
        }
    }
    store.close_whole().await
}

/// Reads the collection's change feed once: every stored record appears in
/// it once, at its latest change (again later if it is written during the
/// read).
async fn figures(store: &Reader, name: &CollectionName) -> Result<Figures> {
    let mut tally = Tally::default();
    let head = store
        .each_change(name, |change| tally.count(&change.record))
        .await?;
    Ok(tally.figures(head))
}

/// Figures summed record by record, each record counted in the last state
/// read: one written again while the feed is read turns up again at its new
/// position, and its earlier state is taken back.
#[derive(Default)]
struct Tally {
    /// Each record's share of `deleted` and `json_bytes`.
    counted: HashMap<RecordId, (bool, u64)>,
    deleted: u64,
    newest: Option<Stamp>,
    json_bytes: u64,
}

impl Tally {
    fn count(&mut self, record: &Record) {
        let deleted = record.is_deleted();
        let bytes = record.to_json_string().len() as u64;
        let stamp = record.newest_stamp();
        if self.newest.as_ref().is_none_or(|newest| stamp > newest) {
            self.newest = Some(stamp.clone());
        }
        if let Some((was_deleted, was_bytes)) =
            self.counted.insert(record.id().clone(), (deleted, bytes))
        {
            self.deleted = self.deleted.saturating_sub(u64::from(was_deleted));
            self.json_bytes = self.json_bytes.saturating_sub(was_bytes);
        }
        self.deleted += u64::from(deleted);
        self.json_bytes += bytes;
    }

    fn figures(self, head: Cursor) -> Figures {
        Figures {
            records: self.counted.len() as u64,
            deleted: self.deleted,
            head,
            newest: self.newest,
            json_bytes: self.json_bytes,
        }
    }
}

/// The stamp's physical time, RFC 3339 with milliseconds, UTC. A stamp may
/// lie past the year 9999, which RFC 3339 cannot write: then its
/// milliseconds since the Unix epoch.
fn time(stamp: &Stamp) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(stamp.millis());
    let mut text = String::new();
    match write!(text, "{}", humantime::format_rfc3339_millis(at)) {
        Ok(()) => text,
        Err(_) => format!("{} ms after 1970-01-01T00:00:00Z", stamp.millis()),
    }
}

/// Columns padded to their widest cell: text left, numbers right.
fn layout(table: &[Vec<String>]) -> Vec<String> {
    let columns = table.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            table
                .iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    table
        .iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(c, (cell, &width))| {
                    if c == 0 || c == 4 {
                        format!("{cell:<width$}")
                    } else {
                        format!("{cell:>width$}")
                    }
                })
                .collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_written_again_during_the_read_is_counted_once_in_its_last_state() {
        let state = |id: &str, millis: u64, deleted: bool| {
            let content =
                syncforge::core::Content::from_value(json!({"id": id, "n": millis})).unwrap();
            let stamp = Stamp::new(millis, 0, "c").unwrap();
            let mut record = Record::create(content, stamp);
            if deleted {
                let tombstone = Stamp::new(millis + 1, 0, "c").unwrap();
                assert!(record.apply_delete(&tombstone).unwrap());
            }
            record
        };
        let (a, b_live, b_gone) = (
            state("a", 1_000, false),
            state("b", 2_000, false),
            state("b", 3_000, true),
        );
        let mut tally = Tally::default();
        for record in [&b_live, &a, &b_gone] {
            tally.count(record);
        }
        let f = tally.figures(Cursor::new(3));
        assert_eq!((f.records, f.deleted), (2, 1));
        let bytes = |r: &Record| r.to_json_string().len() as u64;
        assert_eq!(f.json_bytes, bytes(&a) + bytes(&b_gone));
        assert_eq!(f.newest.as_ref(), Some(b_gone.newest_stamp()));
    }

    #[test]
    fn stamps_past_the_year_9999_are_written_as_milliseconds() {
        let stamp = |millis| Stamp::new(millis, 0, "a").unwrap();
        assert_eq!(time(&stamp(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            time(&stamp(253_402_300_799_999)),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(
            time(&stamp(253_402_300_800_000)),
            "253402300800000 ms after 1970-01-01T00:00:00Z"
        );
        let largest = (1 << 48) - 1;
        assert!(time(&stamp(largest)).starts_with("281474976710655 ms"));
    }

    #[test]
    fn columns_line_up() {
        let table = vec![
            vec![
                "collection",
                "records",
                "deleted",
                "feed head",
                "newest stamp",
                "json bytes",
            ],
            vec!["notes", "3", "1", "7", "2026-01-01T00:00:00.000Z a", "842"],
        ]
        .into_iter()
        .map(|row| row.into_iter().map(str::to_owned).collect())
        .collect::<Vec<Vec<String>>>();
        let lines = layout(&table);
        assert_eq!(
            lines[1],
            "notes             3        1          7  2026-01-01T00:00:00.000Z a         842"
        );
        assert_eq!(lines[0].len(), lines[1].len());
    }

    #[test]
    fn stamps_read_as_times() {
        let stamp = Stamp::new(1_700_000_000_123, 0, "a").unwrap();
        assert_eq!(time(&stamp), "2023-11-14T22:13:20.123Z");
    }
}
