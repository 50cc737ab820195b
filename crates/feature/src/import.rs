//! Parsing a streamed catalog (JSONL or CSV) into validated items and per-row errors.
//!
//! The parser runs on a blocking thread and reads the upload through [`ChunkReader`],
//! which pulls chunks from a channel as the gRPC stream delivers them, so a CSV field
//! may span chunks. Good rows go to a sink in batches of at most [`BATCH_ROWS`] rows
//! or [`BATCH_BYTES`] bytes, which the service stages in the store as they come: an
//! import holds a few batches in memory however large the file. The staged rows
//! become the catalog in one commit at the end, so a broken stream or a failed commit
//! still leaves the store exactly as it was.

use std::collections::BTreeMap;
use std::io::{BufRead, Read};

use serde::Deserialize;

use crate::domain::Item;

/// Most rows one import may carry (stated in the proto).
pub const MAX_ROWS: u64 = 10_000_000;
/// Row errors listed in the reply; the rest are only counted.
pub const MAX_LISTED_ERRORS: usize = 1000;
/// Longest row, in bytes. A valid row is far shorter (a title, a 64 KiB
/// description, 64 attributes); without a bound, a line that never ends, or a CSV
/// quote never closed, would be buffered whole.
pub const MAX_ROW_BYTES: usize = 1024 * 1024;
/// Rows handed to the sink at a time: large enough that staging costs one store
/// write per few thousand rows, small enough that a batch is a few MB.
pub const BATCH_ROWS: usize = 2_000;
/// A batch goes early once its rows' text passes this (rows may be up to
/// [`MAX_ROW_BYTES`] each, so a row count alone would not bound it).
pub const BATCH_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Csv,
}

/// A rejected row.
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    /// 1-based line number in the file.
    pub line: u64,
    pub reason: String,
}

/// What parsing counted; the rows themselves went to the sink.
#[derive(Debug, Default)]
pub struct Summary {
    /// Good rows handed to the sink.
    pub imported: u64,
    /// The first [`MAX_LISTED_ERRORS`] errors.
    pub errors: Vec<RowError>,
    pub rejected: u64,
}

/// What parsing produced, every row in memory (tests and the fuzz target; the
/// service uses [`parse_batches`]).
#[derive(Debug, Default)]
pub struct Parsed {
    pub items: Vec<Item>,
    /// The first [`MAX_LISTED_ERRORS`] errors.
    pub errors: Vec<RowError>,
    pub rejected: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the upload was interrupted before its end; nothing was imported")]
    Interrupted,
    #[error("CSV header: {0}")]
    Header(String),
    #[error("more than {MAX_ROWS} rows")]
    TooManyRows,
    #[error(
        "a CSV row after line {0} is longer than {MAX_ROW_BYTES} bytes (MAX_ROW_BYTES); is a quote left open?"
    )]
    RowTooLong(u64),
    #[error("reading the upload: {0}")]
    Io(String),
    /// The sink refused a batch (storing it failed); its own error is the answer.
    #[error("the rows could not be stored; nothing was imported")]
    Stopped,
}

/// `Read` over chunks sent through a channel; a `None` chunk (sender dropped without
/// [`ChunkReader::END`]) means the upload broke.
pub struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, ()>>,
    current: bytes::Bytes,
    done: bool,
}

impl std::fmt::Debug for ChunkReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkReader")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl ChunkReader {
    pub fn new(rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, ()>>) -> Self {
        Self {
            rx,
            current: bytes::Bytes::new(),
            done: false,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) if chunk.is_empty() => self.done = true,
                Some(Ok(chunk)) => self.current = chunk,
                // An explicit error or a vanished sender: the stream broke.
                Some(Err(())) | None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "upload interrupted",
                    ));
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// A JSON or CSV row before validation. Unknown JSON fields are ignored so exports
/// from other systems import as they are.
#[derive(Debug, Deserialize)]
struct RawItem {
    #[serde(default)]
    id: serde_json::Value,
    #[serde(default)]
    title: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    category: String,
    #[serde(default)]
    brand: String,
    #[serde(default)]
    price: Option<f64>,
    #[serde(default)]
    rating: Option<f64>,
    #[serde(default)]
    review_count: Option<u64>,
    #[serde(default)]
    attributes: BTreeMap<String, serde_json::Value>,
}

impl RawItem {
    fn into_item(self) -> Result<Item, String> {
        let id = match self.id {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Null => return Err("id: required".into()),
            other => return Err(format!("id: must be a string, got {other}")),
        };
        Item {
            id,
            title: self.title,
            description: self.description,
            category: self.category,
            brand: self.brand,
            price: self.price,
            rating: self.rating,
            review_count: self.review_count.unwrap_or(0),
            attributes: attribute_strings(self.attributes),
        }
        .validated()
    }
}

/// Where a batch of good rows goes.
pub type Sink<'a> = &'a mut dyn FnMut(Vec<Item>) -> Result<(), ImportError>;

/// Rows as they are parsed: the batch being filled, and the counts.
struct Rows<'a> {
    summary: Summary,
    batch: Vec<Item>,
    batch_bytes: usize,
    sink: Sink<'a>,
}

impl<'a> Rows<'a> {
    fn new(sink: Sink<'a>) -> Self {
        Self {
            summary: Summary::default(),
            batch: Vec::new(),
            batch_bytes: 0,
            sink,
        }
    }

    fn record(&mut self, line: u64, row: Result<Item, String>) -> Result<(), ImportError> {
        match row {
            Ok(item) => {
                self.summary.imported += 1;
                self.batch_bytes += text_bytes(&item);
                self.batch.push(item);
                if self.batch.len() >= BATCH_ROWS || self.batch_bytes >= BATCH_BYTES {
                    self.flush()?;
                }
            }
            Err(reason) => {
                self.summary.rejected += 1;
                if self.summary.errors.len() < MAX_LISTED_ERRORS {
                    self.summary.errors.push(RowError { line, reason });
                }
            }
        }
        if self.summary.imported + self.summary.rejected > MAX_ROWS {
            return Err(ImportError::TooManyRows);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ImportError> {
        if !self.batch.is_empty() {
            self.batch_bytes = 0;
            (self.sink)(std::mem::take(&mut self.batch))?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Summary, ImportError> {
        self.flush()?;
        Ok(self.summary)
    }
}

/// The bytes of an item's text, near enough to bound a batch.
fn text_bytes(item: &Item) -> usize {
    item.id.len()
        + item.title.len()
        + item.description.len()
        + item.category.len()
        + item.brand.len()
        + item
            .attributes
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

fn io(e: std::io::Error) -> ImportError {
    // Past the budget in the CSV header (a row's own overrun is told by line).
    if e.get_ref().is_some_and(|inner| inner.is::<RowOverBudget>()) {
        return ImportError::RowTooLong(0);
    }
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ImportError::Interrupted
    } else {
        ImportError::Io(e.to_string())
    }
}

/// Parses the whole upload, handing good rows to `sink` in batches as it goes.
/// Blocking.
pub fn parse_batches(
    format: Format,
    reader: impl Read,
    sink: Sink<'_>,
) -> Result<Summary, ImportError> {
    let mut rows = Rows::new(sink);
    match format {
        Format::Jsonl => parse_jsonl(reader, &mut rows)?,
        Format::Csv => parse_csv(reader, &mut rows)?,
    }
    rows.finish()
}

/// Parses the whole upload into memory. Blocking.
pub fn parse(format: Format, reader: impl Read) -> Result<Parsed, ImportError> {
    let mut items = Vec::new();
    let summary = parse_batches(format, reader, &mut |batch| {
        items.extend(batch);
        Ok(())
    })?;
    Ok(Parsed {
        items,
        errors: summary.errors,
        rejected: summary.rejected,
    })
}

fn parse_jsonl(reader: impl Read, out: &mut Rows<'_>) -> Result<(), ImportError> {
    let mut reader = std::io::BufReader::with_capacity(256 * 1024, reader);
    let mut line = Vec::new();
    let mut n = 0u64;
    loop {
        let read = read_line(&mut reader, &mut line, MAX_ROW_BYTES).map_err(io)?;
        if read == Line::End {
            break;
        }
        n += 1;
        if read == Line::TooLong {
            let reason = format!("longer than {MAX_ROW_BYTES} bytes (MAX_ROW_BYTES)");
            out.record(n, Err(reason))?;
            continue;
        }
        let text = match std::str::from_utf8(&line) {
            Ok(t) => t.trim(),
            Err(e) => {
                out.record(n, Err(format!("not UTF-8: {e}")))?;
                continue;
            }
        };
        if text.is_empty() {
            continue;
        }
        let row = serde_json::from_str::<RawItem>(text)
            .map_err(|e| format!("not a JSON object of the catalog format: {e}"))
            .and_then(RawItem::into_item);
        out.record(n, row)?;
    }
    Ok(())
}

/// What [`read_line`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// The input ended before another byte.
    End,
    /// A line, in the buffer (with its newline, if it had one).
    Row,
    /// A line longer than the limit: skipped to its end, the buffer empty.
    TooLong,
}

/// Reads the next line into `line`, holding at most `max` bytes of it (and its
/// newline): a longer line is read to its end but not kept.
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>, max: usize) -> std::io::Result<Line> {
    line.clear();
    let mut started = false;
    let mut too_long = false;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(match (started, too_long) {
                (false, _) => Line::End,
                (true, false) => Line::Row,
                (true, true) => Line::TooLong,
            });
        }
        started = true;
        let (piece, ends) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        if !too_long {
            if line.len() + piece.len() > max + usize::from(ends) {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(piece);
            }
        }
        let used = piece.len();
        reader.consume(used);
        if ends {
            return Ok(if too_long { Line::TooLong } else { Line::Row });
        }
    }
}

/// A reader that fails once more than [`MAX_ROW_BYTES`] (plus the CSV reader's
/// own buffer) pass without a record ending: the CSV reader would otherwise grow
/// one record without bound.
struct RowBudget<R> {
    inner: R,
    since_record: std::rc::Rc<std::cell::Cell<usize>>,
}

/// The marker error [`RowBudget`] fails with.
#[derive(Debug)]
struct RowOverBudget;

impl std::fmt::Display for RowOverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a row longer than {MAX_ROW_BYTES} bytes")
    }
}

impl std::error::Error for RowOverBudget {}

/// The CSV reader's buffer: what it may read ahead of the record it returns.
const CSV_BUFFER: usize = 64 * 1024;

impl<R: Read> Read for RowBudget<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.since_record.get() > MAX_ROW_BYTES + CSV_BUFFER {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                RowOverBudget,
            ));
        }
        let n = self.inner.read(buf)?;
        self.since_record.set(self.since_record.get() + n);
        Ok(n)
    }
}

const CSV_COLUMNS: &[&str] = &[
    "id",
    "title",
    "description",
    "category",
    "brand",
    "price",
    "rating",
    "review_count",
    "attributes",
];

fn parse_csv(reader: impl Read, out: &mut Rows<'_>) -> Result<(), ImportError> {
    let since_record = std::rc::Rc::new(std::cell::Cell::new(0));
    let reader = RowBudget {
        inner: reader,
        since_record: std::rc::Rc::clone(&since_record),
    };
    let mut csv = csv::ReaderBuilder::new()
        .flexible(true)
        .buffer_capacity(CSV_BUFFER)
        .from_reader(reader);
    let header: Vec<String> = csv
        .headers()
        .map_err(|e| csv_err(e, "header"))?
        .iter()
        .map(|h| h.trim().to_lowercase())
        .collect();
    since_record.set(0);
    for required in ["id", "title"] {
        if !header.iter().any(|h| h == required) {
            return Err(ImportError::Header(format!(
                "missing column {required:?}; have {header:?}"
            )));
        }
    }
    if let Some(unknown) = header.iter().find(|h| !CSV_COLUMNS.contains(&h.as_str())) {
        return Err(ImportError::Header(format!(
            "unknown column {unknown:?}; known: {}",
            CSV_COLUMNS.join(", ")
        )));
    }
    let col = |name: &str| header.iter().position(|h| h == name);
    let cols: Vec<Option<usize>> = CSV_COLUMNS.iter().map(|c| col(c)).collect();
    let mut rec = csv::StringRecord::new();
    let mut last_line = 1;
    loop {
        let read = csv.read_record(&mut rec);
        since_record.set(0);
        match read {
            Ok(false) => break,
            Ok(true) => {
                last_line = rec.position().map_or(last_line, csv::Position::line);
                let line = rec.position().map_or(0, csv::Position::line);
                if rec.iter().all(|f| f.trim().is_empty()) {
                    continue;
                }
                let get = |i: usize| cols[i].and_then(|c| rec.get(c)).unwrap_or("").trim();
                out.record(line, csv_row(&get))?;
            }
            Err(e) => {
                if let csv::ErrorKind::Io(io_err) = e.kind()
                    && io_err
                        .get_ref()
                        .is_some_and(|inner| inner.is::<RowOverBudget>())
                {
                    return Err(ImportError::RowTooLong(last_line));
                }
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    return Err(csv_err(e, "row"));
                }
                let line = e.position().map_or(0, csv::Position::line);
                out.record(line, Err(format!("malformed CSV: {e}")))?;
            }
        }
    }
    Ok(())
}

fn csv_err(e: csv::Error, what: &str) -> ImportError {
    match e.into_kind() {
        csv::ErrorKind::Io(io_err) => io(io_err),
        other => ImportError::Header(format!("{what}: {other:?}")),
    }
}

fn csv_row<'a>(get: &dyn Fn(usize) -> &'a str) -> Result<Item, String> {
    let num = |i: usize, name: &str| -> Result<Option<f64>, String> {
        let v = get(i);
        if v.is_empty() {
            return Ok(None);
        }
        v.parse::<f64>()
            .map(Some)
            .map_err(|_| format!("{name}: not a number: {v:?}"))
    };
    let review_count = match get(7) {
        "" => 0,
        v => v
            .parse::<u64>()
            .map_err(|_| format!("review_count: not a non-negative integer: {v:?}"))?,
    };
    Item {
        id: get(0).to_owned(),
        title: get(1).to_owned(),
        description: get(2).to_owned(),
        category: get(3).to_owned(),
        brand: get(4).to_owned(),
        price: num(5, "price")?,
        rating: num(6, "rating")?,
        review_count,
        attributes: parse_attributes(get(8))?,
    }
    .validated()
}

/// Attribute values as the catalog keeps them: strings as they are, any other JSON
/// value (number, bool, list) as its JSON text.
fn attribute_strings(
    attributes: impl IntoIterator<Item = (String, serde_json::Value)>,
) -> BTreeMap<String, String> {
    attributes
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect()
}

/// CSV attributes: a JSON object, or `key=value` pairs separated by `;`.
fn parse_attributes(s: &str) -> Result<BTreeMap<String, String>, String> {
    if s.is_empty() {
        return Ok(BTreeMap::new());
    }
    if s.starts_with('{') {
        let v: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(s).map_err(|e| format!("attributes: invalid JSON object: {e}"))?;
        return Ok(attribute_strings(v));
    }
    s.split(';')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| format!("attributes: expected key=value, got {pair:?}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_reports_bad_lines_and_keeps_good_ones() {
        let data = concat!(
            "{\"id\":\"a\",\"title\":\"Pan\",\"category\":\"Home>Kitchen\",\"price\":12.5,\"attributes\":{\"size\":28}}\n",
            "\n",
            "{\"id\":\"b\"}\n",
            "not json\n",
            "{\"id\":7,\"title\":\"Numeric id\",\"extra\":true}\n",
            "{\"id\":\"c\",\"title\":\"Bad\",\"price\":-3}\n",
        );
        let p = parse(Format::Jsonl, data.as_bytes()).expect("parsed");
        assert_eq!(p.items.len(), 2);
        assert_eq!(p.items[0].attributes["size"], "28");
        assert_eq!(p.items[1].id, "7");
        let lines: Vec<u64> = p.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 4, 6]);
        assert!(
            p.errors[0].reason.starts_with("title:"),
            "{:?}",
            p.errors[0]
        );
        assert!(
            p.errors[2].reason.starts_with("price:"),
            "{:?}",
            p.errors[2]
        );
    }

    #[test]
    fn csv_with_quotes_newlines_and_attribute_forms() {
        let data = "id,title,description,category,price,attributes\n\
                    a,\"Pan, large\",\"two\nlines\",Home > Kitchen,10,color=red;size=L\n\
                    b,Lamp,,Home,abc,\n\
                    c,Shoe,,Sports,5,\"{\"\"color\"\":\"\"blue\"\"}\"\n";
        let p = parse(Format::Csv, data.as_bytes()).expect("parsed");
        assert_eq!(p.items.len(), 2, "{:?}", p.errors);
        assert_eq!(p.items[0].title, "Pan, large");
        assert_eq!(p.items[0].attributes["size"], "L");
        assert_eq!(p.items[1].attributes["color"], "blue");
        assert_eq!(p.errors.len(), 1);
        assert_eq!(p.errors[0].line, 4);
        assert!(p.errors[0].reason.contains("price"), "{:?}", p.errors[0]);
    }

    #[test]
    fn csv_header_must_name_id_and_title_and_no_unknown_columns() {
        assert!(matches!(
            parse(Format::Csv, "title\nx\n".as_bytes()),
            Err(ImportError::Header(_))
        ));
        assert!(matches!(
            parse(Format::Csv, "id,title,colour\na,b,c\n".as_bytes()),
            Err(ImportError::Header(_))
        ));
    }

    #[test]
    fn lines_are_read_whole_up_to_the_limit() {
        let data = b"short\n0123456789\n\nlast";
        let mut reader = std::io::BufReader::with_capacity(4, &data[..]);
        let mut line = Vec::new();
        let mut got = Vec::new();
        loop {
            let read = read_line(&mut reader, &mut line, 6).expect("read");
            if read == Line::End {
                break;
            }
            got.push((read, String::from_utf8(line.clone()).expect("utf-8")));
        }
        assert_eq!(
            got,
            [
                (Line::Row, "short\n".to_owned()),
                (Line::TooLong, String::new()),
                (Line::Row, "\n".to_owned()),
                (Line::Row, "last".to_owned()),
            ]
        );
    }

    #[test]
    fn an_endless_row_is_refused_without_holding_it() {
        let good = "{\"id\":\"a\",\"title\":\"Pan\"}\n";
        let mut data = good.to_owned();
        data.push_str(&"x".repeat(MAX_ROW_BYTES + 10));
        data.push('\n');
        data.push_str(good.replace("\"a\"", "\"b\"").as_str());
        let p = parse(Format::Jsonl, data.as_bytes()).expect("parsed");
        assert_eq!(p.items.len(), 2, "the rows around it are kept");
        assert_eq!(p.errors.len(), 1);
        assert_eq!(p.errors[0].line, 2);
        assert!(
            p.errors[0].reason.contains("MAX_ROW_BYTES"),
            "{:?}",
            p.errors
        );

        // A CSV quote never closed: the rest of the file would be one field.
        let mut csv = "id,title\na,Pan\nb,\"open quote".to_owned();
        csv.push_str(&"x".repeat(2 * MAX_ROW_BYTES));
        let r = parse(Format::Csv, csv.as_bytes());
        assert!(matches!(r, Err(ImportError::RowTooLong(2))), "{r:?}");
    }

    #[test]
    fn rows_reach_the_sink_in_bounded_batches_in_file_order() {
        let mut data = String::new();
        for i in 0..(2 * BATCH_ROWS + 7) {
            data.push_str(&format!("{{\"id\":\"r{i:05}\",\"title\":\"Row {i}\"}}\n"));
        }
        // Long rows close a batch by size before it is full.
        let long = "w ".repeat(30 * 1024);
        let long_rows = BATCH_BYTES / (60 * 1024) * 2;
        for i in 0..long_rows {
            data.push_str(&format!(
                "{{\"id\":\"z{i:04}\",\"title\":\"Long\",\"description\":\"{long}\"}}\n"
            ));
        }
        data.push_str("{\"id\":\"bad\"}\n");
        let mut batches: Vec<Vec<Item>> = Vec::new();
        let summary = parse_batches(Format::Jsonl, data.as_bytes(), &mut |b| {
            batches.push(b);
            Ok(())
        })
        .expect("parsed");
        assert_eq!(summary.imported, (2 * BATCH_ROWS + 7 + long_rows) as u64);
        assert_eq!(summary.rejected, 1);
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert!(
            sizes.iter().all(|n| *n > 0 && *n <= BATCH_ROWS),
            "{sizes:?}"
        );
        for b in &batches {
            let bytes: usize = b.iter().map(text_bytes).sum();
            let last = b.last().map_or(0, text_bytes);
            assert!(
                bytes - last < BATCH_BYTES,
                "a batch closes once past the byte bound"
            );
        }
        assert!(
            sizes.len() >= 4 && sizes[2] < BATCH_ROWS,
            "the long rows closed batches by size: {sizes:?}"
        );
        let ids: Vec<&str> = batches.iter().flatten().map(|i| i.id.as_str()).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(ids, sorted, "file order");
        assert_eq!(ids.len() as u64, summary.imported);
    }

    #[test]
    fn a_refused_batch_stops_the_parse() {
        let data = "{\"id\":\"a\",\"title\":\"x\"}\n".repeat(BATCH_ROWS + 1);
        let mut calls = 0;
        let r = parse_batches(Format::Jsonl, data.as_bytes(), &mut |_| {
            calls += 1;
            Err(ImportError::Stopped)
        });
        assert!(matches!(r, Err(ImportError::Stopped)), "{r:?}");
        assert_eq!(calls, 1);
    }

    #[test]
    fn interrupted_stream_is_an_error() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.blocking_send(Ok(bytes::Bytes::from_static(
            b"{\"id\":\"a\",\"title\":\"x\"}\n",
        )))
        .expect("send");
        drop(tx);
        let r = parse(Format::Jsonl, ChunkReader::new(rx));
        assert!(matches!(r, Err(ImportError::Interrupted)), "{r:?}");
    }
}
