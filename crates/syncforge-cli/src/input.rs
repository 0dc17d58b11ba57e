//! Reading records and documents from files, stdin and directories, checked
//! whole before anything is written, every fault named by its place.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::value::RawValue;
use serde_json::Value;

/// How many faults an error lists before it only counts the rest.
const FAULTS_SHOWN: usize = 20;

/// Where a value was read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Place {
    /// A line of JSON Lines, or the line where a value of a JSON array or a
    /// lone JSON value starts (1-based).
    Line(usize),
    /// A file holding one value.
    File(PathBuf),
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Line(line) => write!(f, "line {line}"),
            Place::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The faults found in an input; nothing of it was written.
#[derive(Debug)]
pub(crate) struct Malformed {
    /// What the input was (`stdin`, a path).
    source: String,
    faults: Vec<Fault>,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.faults.len();
        let noun = if count == 1 { "fault" } else { "faults" };
        write!(f, "{} has {count} {noun}; nothing was written", self.source)?;
        for (place, fault) in self.faults.iter().take(FAULTS_SHOWN) {
            write!(f, "\n  {place}: {fault}")?;
        }
        if count > FAULTS_SHOWN {
            write!(f, "\n  ... and {} more", count - FAULTS_SHOWN)?;
        }
        Ok(())
    }
}

impl std::error::Error for Malformed {}

/// A fault of an input, at its place.
type Fault = (Place, String);

/// Values read from one input, each with its place, and the places that
/// held no JSON value.
pub(crate) struct Values {
    pub(crate) source: String,
    values: Vec<(Place, Value)>,
    faults: Vec<Fault>,
}

impl Values {
    /// Converts every value with `convert`. Any fault — a place that held
    /// no JSON value, or a value `convert` refuses — refuses the whole input,
    /// listing every fault with its place, in input order.
    pub(crate) fn convert<T>(
        self,
        mut convert: impl FnMut(Value) -> syncforge::Result<T>,
    ) -> Result<Vec<T>, Malformed> {
        let mut converted = Vec::with_capacity(self.values.len());
        let mut faults = self.faults;
        for (place, value) in self.values {
            match convert(value) {
                Ok(item) => converted.push(item),
                Err(error) => faults.push((place, error.to_string())),
            }
        }
        if faults.is_empty() {
            Ok(converted)
        } else {
            faults.sort_by(|a, b| a.0.cmp(&b.0));
            Err(Malformed {
                source: self.source,
                faults,
            })
        }
    }
}

/// Reads `file` (stdin when `None` or `-`): a directory of `*.json` files,
/// one value each, or text holding JSON Lines, a JSON array or one value.
///
/// With no `file` and a terminal on stdin, nothing is waiting to be read:
/// a usage error instead of a command that waits in silence (`-` still reads
/// what is typed, to Ctrl-D).
pub(crate) fn read(file: Option<&Path>) -> Result<Values> {
    match file {
        None if std::io::IsTerminal::is_terminal(&std::io::stdin()) => Err(crate::failure::usage(
            "no input: give FILE, or pipe the records in (FILE `-` reads what you type, \
             ended by Ctrl-D)",
        )),
        None => read_stdin(),
        Some(path) if path == Path::new("-") => read_stdin(),
        Some(path) if path.is_dir() => read_directory(path),
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            Ok(parse(&path.display().to_string(), &bytes)?)
        }
    }
}

fn read_stdin() -> Result<Values> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut bytes)
        .context("cannot read stdin")?;
    Ok(parse("stdin", &bytes)?)
}

/// Reads text: a JSON array when it starts with `[`, one JSON value when it
/// holds exactly one (even over several lines), values one after another
/// (JSON Lines, or values printed over several lines each, as `jq .` and
/// `get` print them) otherwise. Text that opens an object on a line of its
/// own and does not parse is refused where the parser stopped; other text
/// that does not parse is read as JSON Lines, each bad line named.
pub(crate) fn parse(source: &str, bytes: &[u8]) -> Result<Values, Malformed> {
    let refuse = |place, fault: String| Malformed {
        source: source.to_owned(),
        faults: vec![(place, fault)],
    };
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => {
            let line = LineCounter::new(bytes).line_at(error.valid_up_to());
            return Err(refuse(Place::Line(line), "is not UTF-8 text".to_owned()));
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (values, faults) = match text.trim_start().chars().next() {
        None => (Vec::new(), Vec::new()),
        Some('[') => (
            parse_array(text).map_err(|(place, fault)| refuse(place, fault))?,
            Vec::new(),
        ),
        Some(_) => match parse_values(text) {
            Ok(values) => (values, Vec::new()),
            // A value printed over several lines (a record printed by `get`,
            // edited) is refused at the line the parser stopped at, not
            // line by line as JSON Lines.
            Err(error) if opens_a_printed_object(text) => {
                return Err(refuse(Place::Line(error.line()), without_position(&error)))
            }
            Err(_) => parse_lines(text),
        },
    };
    Ok(Values {
        source: source.to_owned(),
        values,
        faults,
    })
}

/// JSON values one after another, separated by whitespace or not, each
/// placed at the line where it starts.
fn parse_values(text: &str) -> Result<Vec<(Place, Value)>, serde_json::Error> {
    let mut lines = LineCounter::new(text.as_bytes());
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let mut values = Vec::new();
    let mut end = 0;
    while let Some(value) = stream.next() {
        let value = value?;
        let rest = text.get(end..).unwrap_or_default();
        let start = end + (rest.len() - rest.trim_start().len());
        values.push((Place::Line(lines.line_at(start)), value));
        end = stream.byte_offset();
    }
    Ok(values)
}

/// The elements of a JSON array, each placed at the line where it starts.
fn parse_array(text: &str) -> Result<Vec<(Place, Value)>, (Place, String)> {
    let elements: Vec<&RawValue> = serde_json::from_str(text)
        .map_err(|error| (Place::Line(error.line()), without_position(&error)))?;
    let mut lines = LineCounter::new(text.as_bytes());
    elements
        .into_iter()
        .map(|raw| {
            // The element borrows from `text`: its offset gives its line.
            let offset = (raw.get().as_ptr() as usize).saturating_sub(text.as_ptr() as usize);
            let place = Place::Line(lines.line_at(offset));
            serde_json::from_str(raw.get())
                .map(|value| (place.clone(), value))
                .map_err(|error| (place, without_position(&error)))
        })
        .collect()
}

/// Whether the first line that is not blank is a lone `{`, as a value
/// printed over several lines starts (`get`'s form): no JSON Lines line is.
fn opens_a_printed_object(text: &str) -> bool {
    text.lines()
        .find(|line| !line.trim().is_empty())
        .is_some_and(|line| line.trim() == "{")
}

/// JSON Lines: one value per line, blank lines skipped; the lines that hold
/// no JSON value are kept as faults, so that every one is reported.
fn parse_lines(text: &str) -> (Vec<(Place, Value)>, Vec<Fault>) {
    let mut values = Vec::new();
    let mut faults = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let place = Place::Line(index + 1);
        match serde_json::from_str(line) {
            Ok(value) => values.push((place, value)),
            Err(error) => faults.push((place, without_position(&error))),
        }
    }
    (values, faults)
}

/// A directory holding one `<name>.json` file per value (the TypeScript
/// original's collection directories), read in file-name order; a record
/// whose id starts with a dot has a file whose name does too. Other entries
/// — other extensions, subdirectories, and the `._<name>` files macOS
/// writes beside copied files (told by their first bytes, so that a record
/// whose id starts with `._` is read) — are not values and are left alone.
fn read_directory(dir: &Path) -> Result<Values> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".json") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    let mut values = Vec::with_capacity(files.len());
    let mut faults = Vec::new();
    for path in files {
        let place = Place::File(path.clone());
        let text =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let apple_double = path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with("._"))
            && text.starts_with(APPLE_DOUBLE);
        if apple_double {
            continue;
        }
        // A byte-order mark, as some editors write, as for a single file.
        let text = text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&text);
        match serde_json::from_slice(text) {
            Ok(value) => values.push((place, value)),
            Err(error) => faults.push((place, error.to_string())),
        }
    }
    Ok(Values {
        source: dir.display().to_string(),
        values,
        faults,
    })
}

/// The first bytes of the `._<name>` files macOS writes beside the files it
/// copies to a file system without its metadata (AppleDouble's magic
/// number).
const APPLE_DOUBLE: &[u8] = b"\x00\x05\x16\x07";

/// The subdirectories of a store directory of the TypeScript original (one
/// per collection), by name. Those whose names start with a dot (`.git`,
/// say) are left alone, each named in a warning: a collection so named is
/// imported on its own, naming it.
pub(crate) fn collection_dirs(store: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut dirs = Vec::new();
    for entry in
        std::fs::read_dir(store).with_context(|| format!("cannot read {}", store.display()))?
    {
        let entry = entry.with_context(|| format!("cannot read {}", store.display()))?;
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let name = entry.file_name().into_string().map_err(|name| {
            anyhow::anyhow!(
                "{}: the directory name {name:?} is not UTF-8, so it names no collection",
                store.display()
            )
        })?;
        if name.starts_with('.') {
            tracing::warn!(
                "skipping {}: a directory whose name starts with a dot is taken for a hidden \
                 one, not a collection; to import it as one, run `syncforge import STORE {name} {}`",
                path.display(),
                path.display()
            );
        } else {
            dirs.push((name, path));
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// serde_json's message without its " at line L column C" (the place is
/// given separately, and a column inside one line says little).
fn without_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) => format!("{} (column {})", &text[..at], error.column()),
        None => text,
    }
}

/// The 1-based lines of byte offsets that only grow, as an array's elements
/// come: each call counts the newlines since the last one, where counting
/// from the start for every element made a large array quadratic to read.
struct LineCounter<'a> {
    bytes: &'a [u8],
    /// Where the last count stopped, and the line there.
    offset: usize,
    line: usize,
}

impl<'a> LineCounter<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        LineCounter {
            bytes,
            offset: 0,
            line: 1,
        }
    }

    /// The 1-based line holding byte `offset`, not before the last one asked.
    fn line_at(&mut self, offset: usize) -> usize {
        let offset = offset.clamp(self.offset, self.bytes.len());
        self.line += self.bytes[self.offset..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        self.offset = offset;
        self.line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines(values: &Values) -> Vec<(usize, Value)> {
        values
            .values
            .iter()
            .map(|(place, value)| match place {
                Place::Line(line) => (*line, value.clone()),
                Place::File(path) => panic!("read from {path:?}"),
            })
            .collect()
    }

    /// The faults of `text` as a whole, before any conversion.
    fn faults(text: &[u8]) -> Malformed {
        parse("t", text)
            .and_then(|values| values.convert(Ok))
            .err()
            .unwrap()
    }

    /// An array's elements are placed by counting on from the one before,
    /// reading its text once, not once per element.
    #[test]
    fn array_elements_are_placed_in_one_pass_over_the_text() {
        let text = "[\n{\"id\":\"a\"},\n\n {\"id\":\"b\"}, {\"id\":\"c\"}\n]";
        let values = parse("t", text.as_bytes()).unwrap();
        assert_eq!(
            lines(&values),
            vec![
                (2, json!({"id": "a"})),
                (4, json!({"id": "b"})),
                (4, json!({"id": "c"}))
            ]
        );
        let mut counter = LineCounter::new(text.as_bytes());
        assert_eq!(counter.line_at(text.len()), 5);
        assert_eq!(counter.offset, text.len());
        // Asked again, or for an earlier place, it reads nothing more.
        assert_eq!(counter.line_at(0), 5);
        assert_eq!(counter.offset, text.len());
    }

    #[test]
    fn json_lines_skip_blank_lines_and_keep_line_numbers() {
        let values = parse("t", b"{\"id\":\"a\"}\n\n  \r\n{\"id\":\"b\"}\r\n").unwrap();
        assert_eq!(
            lines(&values),
            vec![(1, json!({"id": "a"})), (4, json!({"id": "b"}))]
        );
    }

    #[test]
    fn every_malformed_line_is_named() {
        let error = faults(b"{\"id\":\"a\"}\n{\"id\":\n{}\n{oops}\n");
        let places: Vec<&Place> = error.faults.iter().map(|(place, _)| place).collect();
        assert_eq!(places, vec![&Place::Line(2), &Place::Line(4)]);
        let message = error.to_string();
        assert!(
            message.starts_with("t has 2 faults; nothing was written"),
            "{message}"
        );
        assert!(message.contains("\n  line 2: "), "{message}");
    }

    #[test]
    fn arrays_place_each_element_at_its_line() {
        let values = parse("t", b"[\n  {\"id\": \"a\"},\n\n  {\n \"id\": \"b\"}\n]").unwrap();
        assert_eq!(
            lines(&values),
            vec![(2, json!({"id": "a"})), (4, json!({"id": "b"}))]
        );
        let broken = parse("t", b"[\n{\"id\": \"a\"},\n{\"id\" \"b\"}\n]")
            .err()
            .unwrap();
        assert_eq!(broken.faults[0].0, Place::Line(3));
    }

    #[test]
    fn one_value_over_several_lines_is_one_value() {
        let values = parse("t", b"\n{\n  \"id\": \"a\"\n}\n").unwrap();
        assert_eq!(lines(&values), vec![(2, json!({"id": "a"}))]);
        assert!(parse("t", b"  \n").unwrap().values.is_empty());
    }

    /// Records printed one after another over several lines each, as `jq .`
    /// prints JSON Lines and `get` prints records: each placed at its line.
    #[test]
    fn values_printed_one_after_another_are_each_a_value() {
        let text = "{\n  \"id\": \"a\"\n}\n\n{\n  \"id\": \"b\"\n}{\"id\":\"c\"}\n";
        let values = parse("t", text.as_bytes()).unwrap();
        assert_eq!(
            lines(&values),
            vec![
                (1, json!({"id": "a"})),
                (5, json!({"id": "b"})),
                (7, json!({"id": "c"}))
            ]
        );
        // The second of two printed records is broken: refused at its line.
        let error = faults(b"{\n  \"id\": \"a\"\n}\n{\n  \"id\" \"b\"\n}\n");
        assert_eq!(error.faults.len(), 1, "{error}");
        assert_eq!(error.faults[0].0, Place::Line(5), "{error}");
    }

    /// A record printed by `get`, edited, with a comma left out on line 4:
    /// one fault, at that line, instead of one for every line.
    #[test]
    fn a_printed_record_that_does_not_parse_is_refused_at_its_line() {
        let text = "{\n  \"id\": \"a\",\n  \"n\": 1\n  \"x\": 2\n}\n";
        let error = faults(text.as_bytes());
        assert_eq!(error.faults.len(), 1, "{error}");
        assert_eq!(error.faults[0].0, Place::Line(4), "{error}");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_refused_with_their_line() {
        let error = parse("t", b"{\"id\":\"a\"}\n{\"id\":\"\xff\"}\n")
            .err()
            .unwrap();
        assert_eq!(error.faults[0].0, Place::Line(2));
    }

    #[test]
    fn syntax_and_conversion_faults_are_listed_together_in_order() {
        let values = parse("t", b"{\"id\":\"a\"}\n{\"x\":1}\n{oops\n{\"y\":2}\n").unwrap();
        let error = values
            .convert(syncforge::core::Content::from_value)
            .err()
            .unwrap();
        let places: Vec<&Place> = error.faults.iter().map(|(place, _)| place).collect();
        assert_eq!(
            places,
            vec![&Place::Line(2), &Place::Line(3), &Place::Line(4)]
        );
    }

    #[test]
    fn many_faults_are_counted_past_the_first_twenty() {
        let text = "x\n".repeat(25);
        let message = faults(text.as_bytes()).to_string();
        assert!(message.contains("25 faults"), "{message}");
        assert!(message.ends_with("... and 5 more"), "{message}");
    }
}
