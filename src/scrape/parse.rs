//! Pull parsers for the Prometheus text exposition format, version 0.0.4, and for
//! OpenMetrics 1.0 text.
//!
//! # Role
//!
//! The scrape loop fetches a target's `/metrics` body into one buffer, picks the format from the
//! response's `Content-Type` with [`Format::from_content_type`] and walks the body with a
//! [`TextParser`]. Each call to [`TextParser::next_entry`] yields the next `# HELP`, `# TYPE` or
//! (OpenMetrics) `# UNIT` line or sample; in 0.0.4 other comments and blank lines are skipped.
//! The first error ends the walk: a scrape is accepted or failed as a whole, as in Prometheus.
//!
//! What is accepted follows Prometheus 2.42's `model/textparse/promparse.go` (and its lexer
//! `promlex.l`) and `openmetricsparse.go` (with `openmetricslex.l`), with the few deliberate
//! differences listed below. Both formats yield the same [`Entry`], [`Sample`], [`MetricType`]
//! and [`ParseError`] types, so the scrape loop does not otherwise care which one it parses.
//!
//! # Input and output
//!
//! * Input: the whole scrape body as `&[u8]`. It does not need to be UTF-8 as a whole (comments
//!   are not checked), and the last line needs no trailing newline.
//! * Output: [`Entry`] values that borrow from the body (zero-copy). [`Sample::series`] is the
//!   raw `name{labels}` text and serves as the scrape-cache key: identical bytes mean an
//!   identical series, so a caller that has seen them before can skip
//!   [`Sample::parse_labels`] entirely.
//!
//! # Invariants
//!
//! * **Zero-copy, no allocation on the common path.** Names, label values and help texts are
//!   borrowed from the body; an owned string is made only when a label value or help text contains
//!   a backslash escape, and for error messages.
//! * **No panics on any input.** All byte access goes through `get`, nothing is unwrapped, and
//!   arithmetic stays within the body's length. No `unsafe`.
//! * **What is validated where.** `next_entry` validates the whole line structure: the metric
//!   name, the extent of the label block (quoted values with escapes, unterminated values and
//!   blocks), the value, the timestamp, nothing trailing, the `TYPE` keyword and the UTF-8 of
//!   `HELP` texts. It does *not* look inside the label block (OpenMetrics: beyond its strict
//!   punctuation, see below). [`Sample::parse_labels`] does the label syntax, label-name rules,
//!   UTF-8 of label values, unescaping and duplicate label names. A caller must call it (or know
//!   the `series` bytes from an earlier successful call) before trusting a sample.
//! * Line numbers in errors are 1-based and count every `\n` in the body, including raw newlines
//!   inside label values.
//! * `NaN` values are returned with Prometheus's canonical bit pattern (`0x7ff8000000000001`),
//!   so a scraped value can never collide with the staleness marker.
//!
//! # Grammar accepted for 0.0.4 (as promparse does)
//!
//! * Blank lines; leading spaces and tabs before any line.
//! * `#` lines: `# HELP name text` and `# TYPE name type` (one or more spaces/tabs after `#`,
//!   after the keyword, and exactly the first blank after the name is a separator, so
//!   `# HELP x  text` has the help text `" text"`). Anything else starting with `#` is a comment
//!   (`# UNIT` and `# EOF` included).
//!   `TYPE` must be exactly one of `counter`, `gauge`, `histogram`, `summary`, `untyped`.
//!   `HELP` text is unescaped for `\\` and `\n` only; other backslash pairs stay as written.
//! * Samples: `name[ ]{labels} value [timestamp]` with spaces/tabs as separators and trailing
//!   blanks allowed. Metric names are `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names
//!   `[a-zA-Z_][a-zA-Z0-9_]*`. In the label block, blanks may surround names, `=`, values and
//!   commas; commas between pairs are optional and one trailing comma is allowed (both as in
//!   promparse). Label values are `"…"` with `\\`, `\"` and `\n` unescaped and other backslash
//!   pairs kept verbatim; a raw newline inside a value is accepted (promparse's lexer does so),
//!   a backslash directly before a newline is not.
//! * Values as Go's `strconv.ParseFloat` parses them, minus the `p`/`P`/`_` forms that
//!   promparse rejects (so no hex floats): decimal and exponent forms, `Inf`/`Infinity` with an
//!   optional sign and `NaN` without sign, case-insensitively. Values that overflow `f64` are
//!   rejected (Go reports a range error), values that underflow become 0.
//! * Timestamps: integer milliseconds.
//! * `\r\n` line endings are rejected on sample and blank lines, as in promparse (the `\r`
//!   becomes part of the value); comments tolerate them and a `HELP` text keeps the `\r`.
//!
//! # Grammar accepted for OpenMetrics (as openmetricsparse 2.42 does)
//!
//! Much stricter than 0.0.4: every line is one of the following, fields are separated by exactly
//! one space (no tabs, no leading or trailing blanks), and there are no blank lines and no other
//! comments.
//!
//! * `# HELP name text`, `# TYPE name type`, `# UNIT name unit`: exactly one space after `#`,
//!   after the keyword and after the name; the rest of the line is the text, which may be empty
//!   but needs the space before it (`# HELP name` alone is an error). `HELP` text must be UTF-8
//!   and is unescaped like a label value (`\\`, `\"`, `\n`). `TYPE` is exactly one of
//!   `counter`, `gauge`, `histogram`, `gaugehistogram`, `summary`, `info`, `stateset`, `unknown`
//!   (not `untyped`). A non-empty unit must be a suffix of the name after a `_`
//!   (`# UNIT foo_seconds seconds`); 2.42 checks this.
//! * `# EOF` must be the last line (a final newline is optional). A body that ends without it
//!   is an error, and so is anything after it, even a blank line.
//! * Samples: `name{labels} value [timestamp] [exemplar]`. No blank between the name and `{`.
//!   The label block is `{}` or `{n="v",n="v"}`: no blanks, a comma between pairs and none
//!   after the last one, no raw newlines in values (escapes as in 0.0.4). Values as in 0.0.4
//!   (so `+Inf`, `-Inf`, `NaN`, integers, exponents). Timestamps are float seconds, parsed like
//!   values, not NaN or infinite, and turned into milliseconds as Prometheus does, `int64(s *
//!   1000)`: the product is truncated toward zero, so `1795544805.895` gives
//!   `1795544805895` but `1.005` gives `1004` (the double nearest 1.005, times 1000, is
//!   1004.99…), exactly the millisecond Prometheus stores.
//! * Exemplars, ` # {labels} value [timestamp]` after the value or timestamp, are checked and
//!   dropped: the sample's name must end in `_total` or `_bucket`, the label block follows the
//!   sample rules and its values must be UTF-8, the value and timestamp follow the sample rules.
//! * `_created`, `_info`, stateset and gauge-histogram series are ordinary samples: 2.42 has no
//!   created-timestamp handling and stores `foo_created` as a series like any other.
//!
//! # Deliberate differences from promparse and openmetricsparse 2.42
//!
//! * 0.0.4: negative timestamps (`-123`) are accepted; promparse's lexer only takes digits.
//! * 0.0.4: a metric name must be followed by a blank, `{` or the end of the line. promparse
//!   lets a value start right after the name (`foo-1 2` is `foo` = -1 at ts 2); that is rejected
//!   here. The same goes for the name in `HELP`/`TYPE` lines. A value directly after `}` is
//!   accepted, as in promparse.
//! * 0.0.4: a NUL byte where promparse would end the input silently (at the start of a line) is
//!   an error. NUL bytes inside comments, help texts and label values are accepted (also in
//!   OpenMetrics, as there). The OpenMetrics lexer of 2.42 also skips NUL bytes inside the
//!   `HELP`/`TYPE`/`UNIT`/`EOF` keywords (`# HE\0LP`); here that is an error.
//! * Duplicate label names are reported by [`Sample::parse_labels`] (Prometheus reports them
//!   later, in the scrape loop). For OpenMetrics, invalid UTF-8 in a sample's label value is
//!   also reported there, not by `next_entry` as openmetricsparse does.
//! * OpenMetrics: a timestamp whose millisecond value does not fit in `i64` is an error; Go's
//!   conversion gives a platform-dependent value.
//!
//! # Not supported (yet)
//!
//! * Quoted UTF-8 metric and label names (neither format of 2.42 has them).
//! * The protobuf exposition format and native histograms.
#![deny(unsafe_code)]

use std::borrow::Cow;
use std::fmt;

/// Prometheus's canonical NaN (`value.NormalNaN`), distinct from the staleness marker.
const NORMAL_NAN_BITS: u64 = 0x7ff8_0000_0000_0001;

/// The longest excerpt of the input quoted in an error message, in bytes.
const MAX_SNIPPET: usize = 64;

/// The exposition format of a scrape body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4 (`text/plain; version=0.0.4`).
    Text004,
    /// OpenMetrics 1.0 text (`application/openmetrics-text`).
    OpenMetrics,
}

impl Format {
    /// Chooses the format from a scrape response's Content-Type as Prometheus 2.42 does
    /// (`textparse.New`): `application/openmetrics-text` (any case, any valid parameters, blanks
    /// around it) is OpenMetrics; anything else, a missing header (empty string) and a value Go's
    /// `mime.ParseMediaType` rejects (bad or duplicate parameters) are [`Format::Text004`].
    pub fn from_content_type(ct: &str) -> Format {
        let (media, params) = ct.split_at(ct.find(';').unwrap_or(ct.len()));
        // Go lowercases with simple case mapping, under which two non-ASCII letters become ASCII.
        let lower = media.trim().chars().map(|c| match c {
            '\u{130}' => 'i',
            '\u{212a}' => 'k',
            c => c.to_ascii_lowercase(),
        });
        if lower.eq("application/openmetrics-text".chars()) && media_params_valid(params) {
            Format::OpenMetrics
        } else {
            Format::Text004
        }
    }
}

/// A pull parser over one scrape body in the Prometheus text format 0.0.4 or OpenMetrics.
pub struct TextParser<'a> {
    body: &'a [u8],
    /// The body as text when all of it is UTF-8 (checked once, in one fast pass): names and
    /// help texts are then sliced from it rather than checked one by one.
    text: Option<&'a str>,
    format: Format,
    /// Offset of the next unread byte.
    pos: usize,
    /// 1-based line number of `pos`.
    line: usize,
    /// Set at the end of input or after an error.
    done: bool,
}

/// The type announced by a `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    Summary,
    /// 0.0.4 only.
    Untyped,
    /// OpenMetrics only, as are the types below.
    Info,
    Stateset,
    GaugeHistogram,
    /// OpenMetrics's `unknown`, its counterpart of `untyped`.
    Unknown,
}

/// One meaningful line of a scrape body.
#[derive(Debug)]
pub enum Entry<'a> {
    /// `# HELP metric text`; the text is unescaped (`\\` and `\n`).
    Help { metric: &'a str, text: Cow<'a, str> },
    /// `# TYPE metric kind`.
    Type { metric: &'a str, kind: MetricType },
    /// `# UNIT metric unit` (OpenMetrics only); the unit is empty or a `_`-separated suffix of
    /// the metric name.
    Unit { metric: &'a str, unit: &'a str },
    /// A sample line.
    Sample(Sample<'a>),
}

/// One sample line. Its labels are parsed on demand with [`Sample::parse_labels`].
#[derive(Debug, Clone)]
pub struct Sample<'a> {
    /// The raw bytes of `name{labels}` exactly as they appear in the body (name plus the label
    /// block including braces, or just the name if no braces), used as a scrape-cache key:
    /// identical bytes mean identical series. Never includes the blanks before the value (blanks
    /// between the name and `{`, which promparse allows, are included).
    pub series: &'a [u8],
    /// The metric name.
    pub name: &'a str,
    /// The sample value (NaN in its canonical Prometheus bit pattern).
    pub value: f64,
    /// Milliseconds, if the line had a timestamp.
    pub timestamp: Option<i64>,
    /// The label block including its braces, or empty if the line had none.
    labels: &'a [u8],
    /// The 1-based line the sample starts on.
    line: usize,
}

/// Why and where parsing failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number of the offending byte.
    pub line: usize,
    pub kind: ParseErrorKind,
}

/// The reason of a [`ParseError`]. Strings are excerpts of the input, cut to a few dozen bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// A sample line, `HELP` or `TYPE` line does not start with a valid metric name, or the name
    /// is not followed by a blank, `{` (samples only) or the end of the line.
    InvalidMetricName,
    /// A label name in the label block is missing or not `[a-zA-Z_][a-zA-Z0-9_]*`.
    InvalidLabelName,
    /// A label name is not followed by `=`.
    MissingEquals(String),
    /// A label's `=` is not followed by a double-quoted value.
    MissingLabelValue(String),
    /// The input ends inside a quoted label value.
    UnterminatedLabelValue,
    /// The line ends before the `}` closing the label block.
    UnterminatedLabelBlock,
    /// A backslash inside a label value is directly followed by a line break.
    InvalidEscape,
    /// The label block has the same label name twice.
    DuplicateLabel(String),
    /// A sample line has no value.
    MissingValue,
    /// The value is not a float as Prometheus parses it (or overflows `f64`).
    InvalidValue(String),
    /// The timestamp is not an integer number of milliseconds that fits in `i64`.
    InvalidTimestamp(String),
    /// Something follows the timestamp on a sample line.
    UnexpectedText(String),
    /// A label value or `HELP` text is not valid UTF-8.
    InvalidUtf8,
    /// A `TYPE` line names an unknown type.
    InvalidType(String),
    /// A carriage return where the format does not allow one (CRLF line endings).
    CarriageReturn,
    /// A NUL byte outside of comments, help texts and label values.
    NulByte,
    /// OpenMetrics: the body does not end with a `# EOF` line.
    MissingEof,
    /// OpenMetrics: something (even a blank line) follows `# EOF`.
    TextAfterEof(String),
    /// OpenMetrics: a blank line.
    BlankLine,
    /// OpenMetrics: a blank that is not exactly one space between two fields (a tab, two
    /// spaces, a blank at the start or end of a line, or no space before a `HELP` text).
    InvalidSeparator,
    /// OpenMetrics: a `#` line other than `# HELP`, `# TYPE`, `# UNIT` and `# EOF`.
    InvalidComment(String),
    /// OpenMetrics: a `TYPE` line names a type OpenMetrics does not have.
    InvalidOpenMetricsType(String),
    /// OpenMetrics: a `UNIT` line's unit is not a suffix of the metric name (after a `_`).
    UnitNotSuffix(String),
    /// OpenMetrics: a label value is followed by neither `,` nor `}`.
    MissingComma,
    /// OpenMetrics: an exemplar (`# {labels} value [timestamp]`) is malformed.
    InvalidExemplar(String),
    /// OpenMetrics: an exemplar on a sample whose name ends in neither `_total` nor `_bucket`.
    ExemplarNotAllowed(String),
}

impl fmt::Display for ParseErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidMetricName => f.write_str(
                "invalid metric name (expected [a-zA-Z_:][a-zA-Z0-9_:]* followed by a blank or '{')",
            ),
            Self::InvalidLabelName => {
                f.write_str("invalid label name (expected [a-zA-Z_][a-zA-Z0-9_]* or '}')")
            }
            Self::MissingEquals(name) => write!(f, "expected '=' after label name {name:?}"),
            Self::MissingLabelValue(name) => {
                write!(f, "expected a double-quoted value for label {name:?}")
            }
            Self::UnterminatedLabelValue => f.write_str("unterminated label value"),
            Self::UnterminatedLabelBlock => f.write_str("label block not closed by '}'"),
            Self::InvalidEscape => f.write_str("backslash before a line break in label value"),
            Self::DuplicateLabel(name) => write!(f, "duplicate label name {name:?}"),
            Self::MissingValue => f.write_str("missing sample value"),
            Self::InvalidValue(v) => write!(f, "invalid value {v:?}"),
            Self::InvalidTimestamp(t) => write!(f, "invalid timestamp {t:?}"),
            Self::UnexpectedText(t) => write!(f, "unexpected text {t:?} after timestamp"),
            Self::InvalidUtf8 => f.write_str("invalid UTF-8"),
            Self::InvalidType(t) => write!(
                f,
                "invalid metric type {t:?} (expected counter, gauge, histogram, summary or untyped)"
            ),
            Self::CarriageReturn => {
                f.write_str("unexpected carriage return (CRLF line endings are not allowed)")
            }
            Self::NulByte => f.write_str("unexpected NUL byte"),
            Self::MissingEof => f.write_str("data does not end with # EOF"),
            Self::TextAfterEof(t) => write!(f, "unexpected data {t:?} after # EOF"),
            Self::BlankLine => f.write_str("blank line (OpenMetrics allows none)"),
            Self::InvalidSeparator => f.write_str(
                "expected exactly one space (OpenMetrics separates fields by a single space)",
            ),
            Self::InvalidComment(t) => write!(
                f,
                "invalid comment {t:?} (OpenMetrics allows only # HELP, # TYPE, # UNIT and # EOF)"
            ),
            Self::InvalidOpenMetricsType(t) => write!(
                f,
                "invalid metric type {t:?} (expected counter, gauge, histogram, gaugehistogram, \
                 summary, info, stateset or unknown)"
            ),
            Self::UnitNotSuffix(m) => write!(f, "unit not a suffix of metric {m:?}"),
            Self::MissingComma => f.write_str("expected ',' or '}' after a label value"),
            Self::InvalidExemplar(t) => write!(
                f,
                "invalid exemplar {t:?} (expected `# {{labels}} value [timestamp]`)"
            ),
            Self::ExemplarNotAllowed(m) => write!(
                f,
                "metric name {m:?} does not support exemplars (only _total and _bucket do)"
            ),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.kind)
    }
}

impl std::error::Error for ParseError {}

impl<'a> TextParser<'a> {
    /// A parser over a whole scrape body in the text format 0.0.4.
    pub fn new(body: &'a [u8]) -> Self {
        Self::with_format(body, Format::Text004)
    }

    /// A parser over a whole scrape body in the given format.
    pub fn with_format(body: &'a [u8], format: Format) -> Self {
        TextParser {
            body,
            text: std::str::from_utf8(body).ok(),
            format,
            pos: 0,
            line: 1,
            done: false,
        }
    }

    /// Offset in the body where the next entry's text begins (comments and blank lines the
    /// parser skips before it included).
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Next entry; None at end of input (OpenMetrics: after `# EOF`). After an Err, the parser
    /// yields None (the scrape is failed as a whole).
    pub fn next_entry(&mut self) -> Option<Result<Entry<'a>, ParseError>> {
        if self.done {
            return None;
        }
        match self.entry() {
            Ok(Some(entry)) => Some(Ok(entry)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(kind) => {
                self.done = true;
                Some(Err(ParseError {
                    line: self.line,
                    kind,
                }))
            }
        }
    }

    /// Reads up to and including the next HELP, TYPE or sample line; `None` at end of input.
    /// On error, `self.line` is the line of the offending byte.
    #[inline(always)]
    fn entry(&mut self) -> Result<Option<Entry<'a>>, ParseErrorKind> {
        if self.format == Format::OpenMetrics {
            return self.om_entry();
        }
        loop {
            self.skip_blanks();
            match self.peek() {
                None => return Ok(None),
                Some(b'\n') => self.consume_newline(),
                Some(b'#') => {
                    self.pos += 1;
                    if let Some(entry) = self.comment()? {
                        return Ok(Some(entry));
                    }
                }
                Some(c) if is_metric_start(c) => return self.sample().map(Some),
                Some(c) => return Err(unexpected(c, ParseErrorKind::InvalidMetricName)),
            }
        }
    }

    /// After a `#`: a HELP or TYPE entry, or `None` for a plain comment (skipped).
    fn comment(&mut self) -> Result<Option<Entry<'a>>, ParseErrorKind> {
        if self.skip_blanks() > 0 {
            let rest = self.body.get(self.pos..).unwrap_or_default();
            let help = rest.starts_with(b"HELP");
            if (help || rest.starts_with(b"TYPE")) && rest.get(4).is_some_and(|&c| is_blank(c)) {
                self.pos += 4;
                self.skip_blanks();
                return self.metadata(help).map(Some);
            }
        }
        self.skip_line();
        Ok(None)
    }

    /// The rest of a HELP (`help`) or TYPE line after the keyword and its blanks.
    fn metadata(&mut self, help: bool) -> Result<Entry<'a>, ParseErrorKind> {
        let metric = self.metric_name()?;
        // As in promparse, the text starts after exactly one blank; further blanks belong to it.
        let (start, end) = match self.peek() {
            None | Some(b'\n') => (self.pos, self.pos),
            Some(c) if is_blank(c) => {
                let start = self.pos + 1;
                let end = self.line_end(start);
                self.pos = end;
                (start, end)
            }
            Some(c) => return Err(unexpected(c, ParseErrorKind::InvalidMetricName)),
        };
        let text = self.slice(start, end);
        let entry = if help {
            let text = self.str_at(start, end)?;
            Entry::Help {
                metric,
                text: unescape(text, false),
            }
        } else {
            let kind = match text {
                b"counter" => MetricType::Counter,
                b"gauge" => MetricType::Gauge,
                b"histogram" => MetricType::Histogram,
                b"summary" => MetricType::Summary,
                b"untyped" => MetricType::Untyped,
                _ if text.contains(&b'\r') => return Err(ParseErrorKind::CarriageReturn),
                _ => return Err(ParseErrorKind::InvalidType(snippet(text))),
            };
            Entry::Type { metric, kind }
        };
        self.consume_newline();
        Ok(entry)
    }

    /// A sample line, starting at the first byte of the metric name.
    #[inline(always)]
    fn sample(&mut self) -> Result<Entry<'a>, ParseErrorKind> {
        let line = self.line;
        let start = self.pos;
        let name = self.metric_name()?;
        let mut series_end = self.pos;
        let mut labels = &[][..];
        let blanks = self.skip_blanks();
        match self.peek() {
            Some(b'{') => {
                let block_start = self.pos;
                self.label_block()?;
                labels = self.slice(block_start, self.pos);
                series_end = self.pos;
                self.skip_blanks();
            }
            Some(c) if blanks == 0 && c != b'\n' => {
                return Err(unexpected(c, ParseErrorKind::InvalidMetricName))
            }
            _ => {}
        }
        let series = self.slice(start, series_end);

        let token = self.token();
        if token.is_empty() {
            return Err(ParseErrorKind::MissingValue);
        }
        let value = parse_value(token)?;

        self.skip_blanks();
        let mut timestamp = None;
        if !matches!(self.peek(), None | Some(b'\n')) {
            timestamp = Some(parse_timestamp(self.token())?);
            self.skip_blanks();
            if !matches!(self.peek(), None | Some(b'\n')) {
                let extra = self.token();
                return Err(bad_token(extra, ParseErrorKind::UnexpectedText));
            }
        }
        self.consume_newline();
        Ok(Entry::Sample(Sample {
            series,
            name,
            value,
            timestamp,
            labels,
            line,
        }))
    }

    /// Skips a label block from its `{` to just past its `}`, honouring quoted values.
    fn label_block(&mut self) -> Result<(), ParseErrorKind> {
        self.pos += 1;
        loop {
            self.skip_while(&NOT_BLOCK_STOP);
            match self.peek() {
                None | Some(b'\n') => return Err(ParseErrorKind::UnterminatedLabelBlock),
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'"') => {
                    self.pos += 1;
                    self.quoted()?;
                }
                Some(_) => self.pos += 1,
            }
        }
    }

    /// Skips the rest of a quoted label value, up to just past its closing quote.
    fn quoted(&mut self) -> Result<(), ParseErrorKind> {
        loop {
            self.skip_while(&NOT_QUOTED_STOP);
            match self.peek() {
                None => return Err(ParseErrorKind::UnterminatedLabelValue),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => match self.body.get(self.pos + 1) {
                    None => {
                        self.pos += 1;
                        return Err(ParseErrorKind::UnterminatedLabelValue);
                    }
                    Some(b'\n') => return Err(ParseErrorKind::InvalidEscape),
                    Some(_) => self.pos += 2,
                },
                Some(b'\n') => {
                    self.pos += 1;
                    self.line += 1;
                }
                Some(_) => self.pos += 1,
            }
        }
    }

    /// A metric name at `pos`, which is left just past it.
    fn metric_name(&mut self) -> Result<&'a str, ParseErrorKind> {
        let start = self.pos;
        match self.peek() {
            Some(c) if is_metric_start(c) => self.pos += 1,
            Some(c) => return Err(unexpected(c, ParseErrorKind::InvalidMetricName)),
            None => return Err(ParseErrorKind::InvalidMetricName),
        }
        self.skip_while(&METRIC_CHAR);
        self.str_at(start, self.pos)
    }

    /// The bytes from `pos` to the next blank, line break or end of input.
    fn token(&mut self) -> &'a [u8] {
        let start = self.pos;
        self.skip_while(&NOT_TOKEN_END);
        self.slice(start, self.pos)
    }

    /// Moves `pos` past the bytes that are in `class`. (A table and a slice scan: this runs for
    /// every byte of a body.)
    #[inline]
    fn skip_while(&mut self, class: &[bool; 256]) {
        let rest = self.body.get(self.pos..).unwrap_or_default();
        self.pos += rest
            .iter()
            .position(|&c| !class[c as usize])
            .unwrap_or(rest.len());
    }

    fn peek(&self) -> Option<u8> {
        self.body.get(self.pos).copied()
    }

    fn slice(&self, start: usize, end: usize) -> &'a [u8] {
        self.body.get(start..end).unwrap_or_default()
    }

    /// `body[start..end]` as text (an error if it is not UTF-8).
    fn str_at(&self, start: usize, end: usize) -> Result<&'a str, ParseErrorKind> {
        match self.text.and_then(|t| t.get(start..end)) {
            Some(s) => Ok(s),
            None => {
                std::str::from_utf8(self.slice(start, end)).map_err(|_| ParseErrorKind::InvalidUtf8)
            }
        }
    }

    /// Skips spaces and tabs; returns how many.
    fn skip_blanks(&mut self) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(is_blank) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// The offset of the `\n` ending the line that contains `from`, or the body's length.
    fn line_end(&self, from: usize) -> usize {
        let rest = self.body.get(from..).unwrap_or_default();
        match rest.iter().position(|&c| c == b'\n') {
            Some(i) => from + i,
            None => self.body.len(),
        }
    }

    /// Moves past the current line including its line break.
    fn skip_line(&mut self) {
        self.pos = self.line_end(self.pos);
        self.consume_newline();
    }

    /// Moves past a `\n` at `pos`, if there is one.
    fn consume_newline(&mut self) {
        if self.peek() == Some(b'\n') {
            self.pos += 1;
            self.line += 1;
        }
    }
}

/// OpenMetrics. Every line is checked where it is read, so errors carry the line they are on:
/// no OpenMetrics token spans a line break.
impl<'a> TextParser<'a> {
    /// Reads the next HELP, TYPE, UNIT or sample line; `None` after `# EOF`.
    fn om_entry(&mut self) -> Result<Option<Entry<'a>>, ParseErrorKind> {
        match self.peek() {
            None => Err(ParseErrorKind::MissingEof),
            Some(b'\n') => Err(ParseErrorKind::BlankLine),
            Some(b'#') => self.om_comment(),
            Some(c) if is_metric_start(c) => self.om_sample().map(Some),
            Some(c) if is_blank(c) => Err(ParseErrorKind::InvalidSeparator),
            Some(c) => Err(unexpected(c, ParseErrorKind::InvalidMetricName)),
        }
    }

    /// A line starting with `#`: `# EOF` (then `None`) or a HELP, TYPE or UNIT entry.
    fn om_comment(&mut self) -> Result<Option<Entry<'a>>, ParseErrorKind> {
        let rest = self.rest();
        if rest.starts_with(b"# EOF") {
            // As in openmetricslex, the keyword may be followed by one line break only.
            self.pos += 5;
            self.consume_newline();
            return match self.peek() {
                None => Ok(None),
                Some(c) => {
                    let end = self.line_end(self.pos);
                    let text = snippet(self.slice(self.pos, end));
                    Err(unexpected(c, ParseErrorKind::TextAfterEof(text)))
                }
            };
        }
        let keyword = match rest.get(..7) {
            Some(b"# HELP ") => MetaKind::Help,
            Some(b"# TYPE ") => MetaKind::Type,
            Some(b"# UNIT ") => MetaKind::Unit,
            _ => {
                let line = self.slice(self.pos, self.line_end(self.pos));
                return Err(ParseErrorKind::InvalidComment(snippet(line)));
            }
        };
        self.pos += 7;
        self.om_metadata(keyword).map(Some)
    }

    /// The rest of a HELP, TYPE or UNIT line after the keyword and its space.
    fn om_metadata(&mut self, keyword: MetaKind) -> Result<Entry<'a>, ParseErrorKind> {
        let metric = self.metric_name()?;
        match self.peek() {
            Some(b' ') => self.pos += 1,
            None | Some(b'\n' | b'\t') => return Err(ParseErrorKind::InvalidSeparator),
            Some(c) => return Err(unexpected(c, ParseErrorKind::InvalidMetricName)),
        }
        let start = self.pos;
        let end = self.line_end(start);
        if end == self.body.len() {
            // openmetricslex wants the line break; without one there is no `# EOF` either.
            return Err(ParseErrorKind::MissingEof);
        }
        self.pos = end;
        let text = self.slice(start, end);
        let entry = match keyword {
            MetaKind::Help => {
                let text = self.str_at(start, end)?;
                Entry::Help {
                    metric,
                    text: unescape(text, true),
                }
            }
            MetaKind::Type => Entry::Type {
                metric,
                kind: om_type(text)?,
            },
            MetaKind::Unit => {
                let suffix_ok = text.is_empty()
                    || metric.len() > text.len()
                        && metric.as_bytes().ends_with(text)
                        && metric.as_bytes().get(metric.len() - text.len() - 1) == Some(&b'_');
                if !suffix_ok {
                    return Err(if text.contains(&b'\r') {
                        ParseErrorKind::CarriageReturn
                    } else {
                        ParseErrorKind::UnitNotSuffix(metric.to_owned())
                    });
                }
                // A suffix of a metric name, so ASCII.
                Entry::Unit {
                    metric,
                    unit: ascii_str(text)?,
                }
            }
        };
        self.consume_newline();
        Ok(entry)
    }

    /// A sample line, starting at the first byte of the metric name.
    fn om_sample(&mut self) -> Result<Entry<'a>, ParseErrorKind> {
        let line = self.line;
        let start = self.pos;
        let name = self.metric_name()?;
        let mut labels = &[][..];
        if self.peek() == Some(b'{') {
            let block_start = self.pos;
            self.om_label_block()?;
            labels = self.slice(block_start, self.pos);
        } else if let Some(c) = self.peek().filter(|&c| !matches!(c, b' ' | b'\t' | b'\n')) {
            return Err(unexpected(c, ParseErrorKind::InvalidMetricName));
        }
        let series = self.slice(start, self.pos);
        let value = parse_value(self.om_field()?.ok_or(ParseErrorKind::MissingValue)?)?;

        let mut timestamp = None;
        if !self.om_exemplar(name)? {
            if let Some(token) = self.om_field()? {
                timestamp = Some(om_timestamp(token)?);
                if !self.om_exemplar(name)? {
                    if let Some(extra) = self.om_field()? {
                        return Err(bad_token(extra, ParseErrorKind::UnexpectedText));
                    }
                }
            }
        }
        if self.peek().is_none() {
            return Err(ParseErrorKind::MissingEof);
        }
        self.consume_newline();
        Ok(Entry::Sample(Sample {
            series,
            name,
            value,
            timestamp,
            labels,
            line,
        }))
    }

    /// The next field: `None` at the end of the line (or input), else a single space and the
    /// bytes up to the next space, line break or end of input.
    fn om_field(&mut self) -> Result<Option<&'a [u8]>, ParseErrorKind> {
        match self.peek() {
            None | Some(b'\n') => return Ok(None),
            Some(b' ') => self.pos += 1,
            Some(c) => return Err(unexpected(c, ParseErrorKind::InvalidSeparator)),
        }
        let start = self.pos;
        while self.peek().is_some_and(|c| c != b' ' && c != b'\n') {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(ParseErrorKind::InvalidSeparator);
        }
        Ok(Some(self.slice(start, self.pos)))
    }

    /// An exemplar (` # {labels} value [timestamp]`) ending the line of a sample named `name`;
    /// checked and skipped up to the line break. `false` if none starts at `pos`.
    fn om_exemplar(&mut self, name: &str) -> Result<bool, ParseErrorKind> {
        if !self.rest().starts_with(b" # {") {
            return Ok(false);
        }
        if !name.ends_with("_total") && !name.ends_with("_bucket") {
            return Err(ParseErrorKind::ExemplarNotAllowed(name.to_owned()));
        }
        let start = self.pos + 1;
        let end = self.line_end(start);
        self.pos += 3;
        self.om_exemplar_rest()
            .map_err(|_| bad_token(self.slice(start, end), ParseErrorKind::InvalidExemplar))?;
        Ok(true)
    }

    /// The work of `om_exemplar` from the `{`; the caller words the error.
    fn om_exemplar_rest(&mut self) -> Result<(), ParseErrorKind> {
        let block_start = self.pos;
        self.om_label_block()?;
        let block = self.slice(block_start, self.pos);
        // Only the values can be non-ASCII. Unlike in a sample's label values, openmetricslex
        // takes no NUL bytes here.
        std::str::from_utf8(block).map_err(|_| ParseErrorKind::InvalidUtf8)?;
        if block.contains(&0) {
            return Err(ParseErrorKind::NulByte);
        }
        parse_value(self.om_field()?.ok_or(ParseErrorKind::MissingValue)?)?;
        if let Some(token) = self.om_field()? {
            om_timestamp(token)?;
        }
        match self.peek() {
            None | Some(b'\n') => Ok(()),
            Some(c) => Err(unexpected(c, ParseErrorKind::InvalidSeparator)),
        }
    }

    /// A label block from its `{` to just past its `}`, in OpenMetrics's strict form:
    /// `{}` or `{n="v",n="v"}` with no blanks and no raw line breaks.
    fn om_label_block(&mut self) -> Result<(), ParseErrorKind> {
        self.pos += 1;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            match self.peek() {
                Some(c) if is_label_start(c) => {}
                None | Some(b'\n') => return Err(ParseErrorKind::UnterminatedLabelBlock),
                Some(c) => return Err(unexpected(c, ParseErrorKind::InvalidLabelName)),
            }
            let name_start = self.pos;
            while self.peek().is_some_and(is_label_char) {
                self.pos += 1;
            }
            let name = self.slice(name_start, self.pos);
            if self.peek() != Some(b'=') {
                return Err(ParseErrorKind::MissingEquals(snippet(name)));
            }
            self.pos += 1;
            if self.peek() != Some(b'"') {
                return Err(ParseErrorKind::MissingLabelValue(snippet(name)));
            }
            self.pos += 1;
            loop {
                match self.peek() {
                    None | Some(b'\n') => return Err(ParseErrorKind::UnterminatedLabelValue),
                    Some(b'"') => break,
                    Some(b'\\') => match self.body.get(self.pos + 1) {
                        None => {
                            self.pos += 1;
                            return Err(ParseErrorKind::UnterminatedLabelValue);
                        }
                        Some(b'\n') => return Err(ParseErrorKind::InvalidEscape),
                        Some(_) => self.pos += 2,
                    },
                    Some(_) => self.pos += 1,
                }
            }
            self.pos += 1;
            match self.peek() {
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b',') => self.pos += 1,
                None | Some(b'\n') => return Err(ParseErrorKind::UnterminatedLabelBlock),
                Some(c) => return Err(unexpected(c, ParseErrorKind::MissingComma)),
            }
        }
    }

    /// The unread rest of the body.
    fn rest(&self) -> &'a [u8] {
        self.body.get(self.pos..).unwrap_or_default()
    }
}

/// Which metadata line an OpenMetrics `#` line is.
#[derive(Clone, Copy)]
enum MetaKind {
    Help,
    Type,
    Unit,
}

/// The type word of an OpenMetrics `TYPE` line.
fn om_type(text: &[u8]) -> Result<MetricType, ParseErrorKind> {
    Ok(match text {
        b"counter" => MetricType::Counter,
        b"gauge" => MetricType::Gauge,
        b"histogram" => MetricType::Histogram,
        b"gaugehistogram" => MetricType::GaugeHistogram,
        b"summary" => MetricType::Summary,
        b"info" => MetricType::Info,
        b"stateset" => MetricType::Stateset,
        b"unknown" => MetricType::Unknown,
        _ => return Err(bad_token(text, ParseErrorKind::InvalidOpenMetricsType)),
    })
}

/// An OpenMetrics timestamp: float seconds, parsed like a value but finite, as milliseconds the
/// way openmetricsparse makes them, `int64(ts * 1000)`, which truncates toward zero.
fn om_timestamp(token: &[u8]) -> Result<i64, ParseErrorKind> {
    // -2^63 and 2^63, both exact in f64.
    const MIN: f64 = -9_223_372_036_854_775_808.0;
    const MAX: f64 = 9_223_372_036_854_775_808.0;
    let invalid = || bad_token(token, ParseErrorKind::InvalidTimestamp);
    let ms = parse_value(token).map_err(|_| invalid())? * 1000.0;
    // NaN fails both comparisons; Go's conversion out of range is platform-dependent.
    if (MIN..MAX).contains(&ms) {
        Ok(ms as i64)
    } else {
        Err(invalid())
    }
}

/// Whether the parameters after a media type (from the first `;`, or empty) parse without
/// error in Go's `mime.ParseMediaType`: `; key=value` pairs, keys being tokens compared
/// case-insensitively and never repeated, values tokens or non-empty quoted strings, blanks
/// around everything, and one trailing `;` allowed.
fn media_params_valid(mut rest: &str) -> bool {
    let mut keys: Vec<&str> = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return true;
        }
        match media_param(rest) {
            Some((key, after)) => {
                if keys.iter().any(|k| k.eq_ignore_ascii_case(key)) {
                    return false;
                }
                keys.push(key);
                rest = after;
            }
            None => return rest.trim() == ";",
        }
    }
}

/// One `; key=value` parameter at the start of `s`: the key and the rest after the value.
fn media_param(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start().strip_prefix(';')?.trim_start();
    let (key, s) = media_token(s)?;
    let s = s.trim_start().strip_prefix('=')?.trim_start();
    if let Some(quoted) = s.strip_prefix('"') {
        // A quoted string: `\` takes the next character literally; CR and LF end it badly.
        let mut literal = false;
        let mut empty = true;
        for (i, c) in quoted.char_indices() {
            match c {
                _ if literal => {
                    literal = false;
                    empty = false;
                }
                '"' if empty => return None,
                '"' => return Some((key, quoted.get(i + 1..).unwrap_or_default())),
                '\\' => literal = true,
                '\r' | '\n' => return None,
                _ => empty = false,
            }
        }
        None
    } else {
        let (_, rest) = media_token(s)?;
        Some((key, rest))
    }
}

/// A non-empty RFC 2045 token at the start of `s`, and the rest.
fn media_token(s: &str) -> Option<(&str, &str)> {
    let end = s
        .find(|c: char| !c.is_ascii_graphic() || "()<>@,;:\\\"/[]?=".contains(c))
        .unwrap_or(s.len());
    (end > 0).then(|| s.split_at(end))
}

impl<'a> Sample<'a> {
    /// Parses the label pairs (in the order written) into `out` (cleared first). Values are
    /// unescaped (\\, \", \n). Errors on bad syntax. Checking duplicates of a label name is done
    /// here too (error "duplicate label name"). On error, `out` is left empty.
    pub fn parse_labels(&self, out: &mut Vec<(&'a str, Cow<'a, str>)>) -> Result<(), ParseError> {
        out.clear();
        let block = self.labels;
        self.label_pairs(out).map_err(|(at, kind)| {
            out.clear();
            let before = block.get(..at).unwrap_or(block);
            ParseError {
                line: self.line + before.iter().filter(|&&c| c == b'\n').count(),
                kind,
            }
        })
    }

    /// The work of `parse_labels`; errors carry the offset into the block.
    fn label_pairs(
        &self,
        out: &mut Vec<(&'a str, Cow<'a, str>)>,
    ) -> Result<(), (usize, ParseErrorKind)> {
        let b: &'a [u8] = self.labels;
        if b.is_empty() {
            return Ok(());
        }
        let at = |i: usize| b.get(i).copied();
        let skip_blanks = |mut i: usize| {
            while at(i).is_some_and(is_blank) {
                i += 1;
            }
            i
        };
        let mut i = 1; // past '{'
        loop {
            i = skip_blanks(i);
            match at(i) {
                None => return Err((i, ParseErrorKind::UnterminatedLabelBlock)),
                Some(b'}') => {
                    return match b.get(i + 1..) {
                        Some([]) => Ok(()),
                        rest => Err((
                            i + 1,
                            ParseErrorKind::UnexpectedText(snippet(rest.unwrap_or_default())),
                        )),
                    };
                }
                Some(c) if is_label_start(c) => {}
                Some(c) => return Err((i, unexpected(c, ParseErrorKind::InvalidLabelName))),
            }
            let name_start = i;
            i += 1;
            while at(i).is_some_and(is_label_char) {
                i += 1;
            }
            let name = ascii_str(b.get(name_start..i).unwrap_or_default())
                .map_err(|kind| (name_start, kind))?;

            i = skip_blanks(i);
            if at(i) != Some(b'=') {
                return Err((i, ParseErrorKind::MissingEquals(name.to_owned())));
            }
            i = skip_blanks(i + 1);
            if at(i) != Some(b'"') {
                return Err((i, ParseErrorKind::MissingLabelValue(name.to_owned())));
            }
            i += 1;
            let value_start = i;
            let mut escaped = false;
            loop {
                match at(i) {
                    None => return Err((i, ParseErrorKind::UnterminatedLabelValue)),
                    Some(b'"') => break,
                    Some(b'\\') => match at(i + 1) {
                        None => return Err((i, ParseErrorKind::UnterminatedLabelValue)),
                        Some(b'\n') => return Err((i, ParseErrorKind::InvalidEscape)),
                        Some(_) => {
                            escaped = true;
                            i += 2;
                        }
                    },
                    Some(_) => i += 1,
                }
            }
            let raw = b.get(value_start..i).unwrap_or_default();
            let value = std::str::from_utf8(raw)
                .map_err(|e| (value_start + e.valid_up_to(), ParseErrorKind::InvalidUtf8))?;
            let value = if escaped {
                unescape(value, true)
            } else {
                Cow::Borrowed(value)
            };
            if out.iter().any(|(n, _)| *n == name) {
                return Err((name_start, ParseErrorKind::DuplicateLabel(name.to_owned())));
            }
            out.push((name, value));

            // Past the closing quote. The comma is optional, as in promparse.
            i = skip_blanks(i + 1);
            if at(i) == Some(b',') {
                i += 1;
            }
        }
    }
}

const fn is_blank(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// A 256-entry byte class from a predicate on `c`, built at compile time.
macro_rules! byte_class {
    (|$c:ident| $pred:expr) => {{
        let mut t = [false; 256];
        let mut i = 0;
        while i < 256 {
            let $c = i as u8;
            t[i] = $pred;
            i += 1;
        }
        t
    }};
}

const METRIC_CHAR: [bool; 256] = byte_class!(|c| is_metric_char(c));
/// Bytes a token goes on over.
const NOT_TOKEN_END: [bool; 256] = byte_class!(|c| !is_blank(c) && c != b'\n');
/// Bytes of a label block with no meaning to skipping it.
const NOT_BLOCK_STOP: [bool; 256] = byte_class!(|c| !matches!(c, b'"' | b'}' | b'\n'));
/// Bytes of a quoted value with no meaning to skipping it.
const NOT_QUOTED_STOP: [bool; 256] = byte_class!(|c| !matches!(c, b'"' | b'\\' | b'\n'));

fn is_metric_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

const fn is_metric_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

fn is_label_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_label_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The error for an unexpected byte: CR and NUL get their own kinds, anything else `otherwise`.
fn unexpected(c: u8, otherwise: ParseErrorKind) -> ParseErrorKind {
    match c {
        b'\r' => ParseErrorKind::CarriageReturn,
        0 => ParseErrorKind::NulByte,
        _ => otherwise,
    }
}

/// The error for a bad token: `CarriageReturn` if it holds a CR, else `kind` with an excerpt.
fn bad_token(token: &[u8], kind: fn(String) -> ParseErrorKind) -> ParseErrorKind {
    if token.contains(&b'\r') {
        ParseErrorKind::CarriageReturn
    } else {
        kind(snippet(token))
    }
}

/// Up to `MAX_SNIPPET` bytes of input as a string for an error message.
fn snippet(bytes: &[u8]) -> String {
    match bytes.get(..MAX_SNIPPET) {
        Some(head) if head.len() < bytes.len() => {
            let mut s = String::from_utf8_lossy(head).into_owned();
            s.push('…');
            s
        }
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Bytes already known to be ASCII name characters as `&str`.
fn ascii_str(bytes: &[u8]) -> Result<&str, ParseErrorKind> {
    std::str::from_utf8(bytes).map_err(|_| ParseErrorKind::InvalidUtf8)
}

/// A sample value as promparse reads it: Go's `strconv.ParseFloat` without `p`/`P`/`_` forms.
fn parse_value(token: &[u8]) -> Result<f64, ParseErrorKind> {
    let invalid = || bad_token(token, ParseErrorKind::InvalidValue);
    let s = std::str::from_utf8(token).map_err(|_| invalid())?;
    // Rust's grammar is Go's decimal grammar (Rust also has no hex floats, `p` or `_`), except
    // that Rust accepts a signed NaN and saturates on overflow where Go reports an error.
    let value: f64 = s.parse().map_err(|_| invalid())?;
    let unsigned = s.strip_prefix(|c| c == '+' || c == '-').unwrap_or(s);
    if value.is_nan() {
        if unsigned.len() != s.len() {
            return Err(invalid());
        }
        return Ok(f64::from_bits(NORMAL_NAN_BITS));
    }
    if value.is_infinite()
        && !unsigned.eq_ignore_ascii_case("inf")
        && !unsigned.eq_ignore_ascii_case("infinity")
    {
        return Err(invalid());
    }
    Ok(value)
}

/// A timestamp: an optional `-` and decimal digits, fitting in `i64`.
fn parse_timestamp(token: &[u8]) -> Result<i64, ParseErrorKind> {
    let invalid = || bad_token(token, ParseErrorKind::InvalidTimestamp);
    let digits = token.strip_prefix(b"-").unwrap_or(token);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    std::str::from_utf8(token)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(invalid)
}

/// Undoes the escapes of a label value (`quote`: `\\`, `\"`, `\n`) or help text (`\\`, `\n`).
/// Other backslash pairs are kept verbatim, as Go's `strings.Replacer` in promparse does.
fn unescape(s: &str, quote: bool) -> Cow<'_, str> {
    if !s.contains('\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if quote => out.push('"'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Labels<'a> = Vec<(&'a str, Cow<'a, str>)>;

    /// All entries of a body in `format`; panics (test only) on a parse error.
    fn entries_in(body: &str, format: Format) -> Vec<Entry<'_>> {
        let mut p = TextParser::with_format(body.as_bytes(), format);
        let mut out = Vec::new();
        while let Some(e) = p.next_entry() {
            match e {
                Ok(e) => out.push(e),
                Err(e) => panic!("unexpected error {e} in {body:?}"),
            }
        }
        out
    }

    /// All samples of a body in `format`; panics (test only) on a parse error.
    fn samples_in(body: &str, format: Format) -> Vec<Sample<'_>> {
        entries_in(body, format)
            .into_iter()
            .filter_map(|e| match e {
                Entry::Sample(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    fn one_sample_in(body: &str, format: Format) -> Sample<'_> {
        let mut s = samples_in(body, format);
        assert_eq!(s.len(), 1, "{body:?}");
        s.remove(0)
    }

    fn entries(body: &str) -> Vec<Entry<'_>> {
        entries_in(body, Format::Text004)
    }

    fn samples(body: &str) -> Vec<Sample<'_>> {
        samples_in(body, Format::Text004)
    }

    fn one_sample(body: &str) -> Sample<'_> {
        one_sample_in(body, Format::Text004)
    }

    fn labels<'a>(s: &Sample<'a>) -> Vec<(&'a str, String)> {
        let mut out = Labels::new();
        s.parse_labels(&mut out)
            .unwrap_or_else(|e| panic!("labels of {:?}: {e}", s.series));
        out.into_iter().map(|(n, v)| (n, v.into_owned())).collect()
    }

    /// The first error of a body, including label errors of its samples.
    fn first_error(body: &[u8]) -> Option<ParseError> {
        first_error_in(Format::Text004, body)
    }

    /// The first error of a body in `format`, including label errors of its samples.
    fn first_error_in(format: Format, body: &[u8]) -> Option<ParseError> {
        let mut p = TextParser::with_format(body, format);
        let mut out = Labels::new();
        while let Some(e) = p.next_entry() {
            match e {
                Ok(Entry::Sample(s)) => {
                    if let Err(e) = s.parse_labels(&mut out) {
                        return Some(e);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    assert!(p.next_entry().is_none(), "entries after an error");
                    return Some(e);
                }
            }
        }
        None
    }

    fn error_of(body: &str) -> ParseError {
        first_error(body.as_bytes()).unwrap_or_else(|| panic!("no error in {body:?}"))
    }

    #[test]
    fn help_type_and_samples() {
        let body = "# HELP http_requests_total The total number of HTTP requests.\n\
                    # TYPE http_requests_total counter\n\
                    http_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000\n\
                    http_requests_total{method=\"post\",code=\"400\"}    3 1395066363000\n\
                    \n\
                    # A normal comment.\n\
                    #\n\
                    # TYPE metric_without_timestamp_and_labels gauge\n\
                    metric_without_timestamp_and_labels 12.47\n";
        let e = entries(body);
        assert_eq!(e.len(), 6);
        match &e[0] {
            Entry::Help { metric, text } => {
                assert_eq!(*metric, "http_requests_total");
                assert_eq!(text, "The total number of HTTP requests.");
                assert!(matches!(text, Cow::Borrowed(_)));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            e[1],
            Entry::Type {
                metric: "http_requests_total",
                kind: MetricType::Counter
            }
        ));
        let Entry::Sample(s) = &e[2] else {
            panic!("{:?}", e[2])
        };
        assert_eq!(
            s.series,
            b"http_requests_total{method=\"post\",code=\"200\"}"
        );
        assert_eq!(s.name, "http_requests_total");
        assert_eq!(s.value, 1027.0);
        assert_eq!(s.timestamp, Some(1395066363000));
        assert_eq!(s.line, 3);
        assert_eq!(
            labels(s),
            vec![("method", "post".into()), ("code", "200".into())]
        );
        let Entry::Sample(s) = &e[3] else {
            panic!("{:?}", e[3])
        };
        assert_eq!(s.value, 3.0);
        assert_eq!(
            s.series,
            b"http_requests_total{method=\"post\",code=\"400\"}"
        );
        assert!(matches!(
            e[4],
            Entry::Type {
                kind: MetricType::Gauge,
                ..
            }
        ));
        let Entry::Sample(last) = &e[5] else {
            panic!("{:?}", e[5])
        };
        assert_eq!(last.series, b"metric_without_timestamp_and_labels");
        assert_eq!(last.value, 12.47);
        assert_eq!(last.timestamp, None);
        assert_eq!(last.line, 9);
        assert!(labels(last).is_empty());
    }

    #[test]
    fn all_types() {
        for (word, kind) in [
            ("counter", MetricType::Counter),
            ("gauge", MetricType::Gauge),
            ("histogram", MetricType::Histogram),
            ("summary", MetricType::Summary),
            ("untyped", MetricType::Untyped),
        ] {
            let body = format!("# TYPE m {word}\n");
            match entries(&body).as_slice() {
                [Entry::Type {
                    metric: "m",
                    kind: k,
                }] => assert_eq!(*k, kind),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn comments_and_blank_lines() {
        let body = "\n\n   \n\t\n#\n# \n#HELP not_help x\n# HELPER x\n# HELP\n# TYPE\n\
                    #TYPE foo bar\n# Hrandom comment\n# comment with \\ and \\n \r\n  # indented\n\
                    x 1\n";
        let s = one_sample(body);
        assert_eq!(s.line, 15);
        assert_eq!(s.name, "x");
    }

    #[test]
    fn help_text_forms() {
        let help = |body: &'static str| match entries(body).pop() {
            Some(Entry::Help { metric, text }) => (metric, text.into_owned()),
            other => panic!("{other:?}"),
        };
        assert_eq!(help("# HELP foo\n"), ("foo", String::new()));
        assert_eq!(help("# HELP foo"), ("foo", String::new()));
        assert_eq!(help("# HELP foo \n"), ("foo", String::new()));
        assert_eq!(help("# HELP foo  two\n"), ("foo", " two".into()));
        assert_eq!(
            help("#\tHELP\t\tfoo\tbar baz \n"),
            ("foo", "bar baz ".into())
        );
        assert_eq!(
            help(r#"# HELP foo a\\b\nc\"d\t"#),
            ("foo", "a\\b\nc\\\"d\\t".into())
        );
        assert_eq!(help("# HELP foo x\0y\n"), ("foo", "x\0y".into()));
        assert_eq!(help("# HELP foo ünïcödé ✓\n"), ("foo", "ünïcödé ✓".into()));
        assert_eq!(help("# HELP a:b_c x\n"), ("a:b_c", "x".into()));
        assert_eq!(help("# HELP foo x\r\n"), ("foo", "x\r".into()));
    }

    #[test]
    fn sample_forms() {
        let s = one_sample("foo 1");
        assert_eq!((s.series, s.value, s.timestamp), (&b"foo"[..], 1.0, None));
        let s = one_sample("foo{} 1\n");
        assert_eq!(s.series, b"foo{}");
        assert!(labels(&s).is_empty());
        let s = one_sample("  \tfoo\t2\t-5  \t\n");
        assert_eq!(
            (s.series, s.value, s.timestamp),
            (&b"foo"[..], 2.0, Some(-5))
        );
        let s = one_sample("foo{a=\"b\"}3");
        assert_eq!((s.series, s.value), (&b"foo{a=\"b\"}"[..], 3.0));
        let s = one_sample("foo {a=\"b\"} 4 5");
        assert_eq!(s.series, b"foo {a=\"b\"}");
        assert_eq!((s.name, s.value, s.timestamp), ("foo", 4.0, Some(5)));
        let s = one_sample("_under:score_1{_l1=\"v\"} 0\n");
        assert_eq!(s.name, "_under:score_1");
        assert_eq!(labels(&s), vec![("_l1", "v".into())]);
        let s = one_sample("go_goroutines 33  \t123123\n");
        assert_eq!(s.timestamp, Some(123123));
        // The series key is the same for the same series whatever the value.
        let v = samples("a{x=\"1\"} 1\na{x=\"1\"} 2 3\na{x=\"2\"} 1\n");
        assert_eq!(v[0].series, v[1].series);
        assert_ne!(v[0].series, v[2].series);
    }

    #[test]
    fn label_block_forms() {
        let ab = vec![("a", "1".to_string()), ("b", "2".to_string())];
        for body in [
            "m{a=\"1\",b=\"2\"} 1",
            "m{a=\"1\",b=\"2\",} 1",
            "m{ a=\"1\", b=\"2\" } 1",
            "m{ a = \"1\" , b = \"2\" , } 1",
            "m{\ta=\t\"1\"\t,b=\"2\"\t} 1",
            "m { a= \"1\", b= \"2\", } 1",
            "m{a=\"1\" b=\"2\"} 1",
            "m{a=\"1\"b=\"2\"} 1",
        ] {
            let s = one_sample(body);
            assert_eq!(labels(&s), ab, "{body:?}");
            assert_eq!(s.value, 1.0);
        }
    }

    #[test]
    fn label_value_escapes() {
        let s = one_sample(r#"m{a="x\"y",b="c:\\dir\\",c="l1\nl2",d="\t\q",e="ü}{,=",f=""} 1"#);
        assert_eq!(
            labels(&s),
            vec![
                ("a", "x\"y".into()),
                ("b", "c:\\dir\\".into()),
                ("c", "l1\nl2".into()),
                ("d", "\\t\\q".into()),
                ("e", "ü}{,=".into()),
                ("f", "".into()),
            ]
        );
        // Borrowed unless escaped.
        let mut out = Labels::new();
        s.parse_labels(&mut out).unwrap();
        assert!(matches!(out[0].1, Cow::Owned(_)));
        assert!(matches!(out[4].1, Cow::Borrowed(_)));
        // A `}` or `"` inside a value does not end the block.
        let s = one_sample(r#"m{a="}\"} 2"} 3"#);
        assert_eq!(s.value, 3.0);
        assert_eq!(labels(&s), vec![("a", "}\"} 2".into())]);
        // NUL bytes are fine in label values.
        let s = one_sample("m{a=\"x\0y\"} 1");
        assert_eq!(labels(&s), vec![("a", "x\0y".into())]);
    }

    #[test]
    fn raw_newline_in_label_value_counts_lines() {
        let body = "m{a=\"x\ny\"} 1\nn 2\nbad\n";
        let mut p = TextParser::new(body.as_bytes());
        let Some(Ok(Entry::Sample(s))) = p.next_entry() else {
            panic!()
        };
        assert_eq!(s.line, 1);
        assert_eq!(labels(&s), vec![("a", "x\ny".into())]);
        let Some(Ok(Entry::Sample(s))) = p.next_entry() else {
            panic!()
        };
        assert_eq!((s.line, s.name), (3, "n"));
        let err = p.next_entry().unwrap().unwrap_err();
        assert_eq!((err.line, err.kind), (4, ParseErrorKind::MissingValue));
        assert!(p.next_entry().is_none());
        // Label errors after a raw newline report the line they are on.
        let s = one_sample("m{a=\"x\ny\",a=\"z\"} 1");
        let err = s.parse_labels(&mut Labels::new()).unwrap_err();
        assert_eq!(err.line, 2);
        assert_eq!(err.kind, ParseErrorKind::DuplicateLabel("a".into()));
    }

    #[test]
    fn values() {
        let v = |s: &str| one_sample(&format!("m {s}\n")).value;
        for (text, want) in [
            ("1", 1.0),
            ("-0.5", -0.5),
            (".5", 0.5),
            ("5.", 5.0),
            ("+3", 3.0),
            ("1e3", 1000.0),
            ("1E+3", 1000.0),
            ("2.5e-3", 0.0025),
            ("-1.5E2", -150.0),
            ("007", 7.0),
            ("1e-400", 0.0),
            ("1.7976931348623157e308", f64::MAX),
        ] {
            assert_eq!(v(text), want, "{text}");
        }
        for text in ["+Inf", "Inf", "inf", "+inf", "INF", "infinity", "+Infinity"] {
            assert_eq!(v(text), f64::INFINITY, "{text}");
        }
        for text in ["-Inf", "-inf", "-infinity"] {
            assert_eq!(v(text), f64::NEG_INFINITY, "{text}");
        }
        for text in ["NaN", "nan", "NAN"] {
            assert_eq!(v(text).to_bits(), NORMAL_NAN_BITS, "{text}");
        }
    }

    #[test]
    fn invalid_values() {
        for text in [
            "abc", "true", "1_2", "0x1p-3", "0x1P-3", "0x10", "+nan", "-NaN", "1e999", "-1e999",
            "1e", ".", "-", "e5", "1..2", "infin", "nanx", "1,5", "1{",
        ] {
            let err = error_of(&format!("m {text}\n"));
            assert_eq!(err.line, 1);
            assert_eq!(
                err.kind,
                ParseErrorKind::InvalidValue(text.into()),
                "{text}"
            );
        }
    }

    #[test]
    fn timestamps() {
        let t = |s: &str| one_sample(&format!("m 1 {s}\n")).timestamp;
        assert_eq!(t("0"), Some(0));
        assert_eq!(t("-1"), Some(-1));
        assert_eq!(t("9223372036854775807"), Some(i64::MAX));
        assert_eq!(t("-9223372036854775808"), Some(i64::MIN));
        for text in [
            "9223372036854775808",
            "1.5",
            "+5",
            "-",
            "1e3",
            "abc",
            "12a",
            "--1",
        ] {
            let err = error_of(&format!("m 1 {text}\n"));
            assert_eq!(
                err.kind,
                ParseErrorKind::InvalidTimestamp(text.into()),
                "{text}"
            );
        }
    }

    #[test]
    fn every_error_kind_with_line() {
        use ParseErrorKind::*;
        let cases: &[(&[u8], usize, ParseErrorKind)] = &[
            (b"ok 1\n{a=\"ok\"} 1\n", 2, InvalidMetricName),
            (b"ok 1\n\n1abc 1\n", 3, InvalidMetricName),
            (b"foo-1 2\n", 1, InvalidMetricName),
            (b"foo.bar 2\n", 1, InvalidMetricName),
            (b"# HELP 1x text\n", 1, InvalidMetricName),
            (b"# HELP #\n", 1, InvalidMetricName),
            (b"# TYPE \n", 1, InvalidMetricName),
            (b"# HELP foo-bar text\n", 1, InvalidMetricName),
            (b"a 1\nb{1a=\"x\"} 1\n", 2, InvalidLabelName),
            (b"a{=\"\"} 0\n", 1, InvalidLabelName),
            (b"a{,} 0\n", 1, InvalidLabelName),
            (b"a{b=\"c\",,} 0\n", 1, InvalidLabelName),
            (b"a{\xff=\"foo\"} 1\n", 1, InvalidLabelName),
            (b"a{\"b\"=\"c\"} 1\n", 1, InvalidLabelName),
            (b"a{b} 1\n", 1, MissingEquals("b".into())),
            (b"a{b \"c\"} 1\n", 1, MissingEquals("b".into())),
            (b"a{b='c'} 1\n", 1, MissingLabelValue("b".into())),
            (b"a{b=c} 1\n", 1, MissingLabelValue("b".into())),
            (b"a{b=\0\"c\"} 1\n", 1, MissingLabelValue("b".into())),
            (b"x 1\nsomething{problem=\"", 2, UnterminatedLabelValue),
            (b"a{b=\"\0", 1, UnterminatedLabelValue),
            (b"a{b=\"c\\", 1, UnterminatedLabelValue),
            (b"a{b=\"c\"\n} 1\n", 1, UnterminatedLabelBlock),
            (b"a{b=\"c\"", 1, UnterminatedLabelBlock),
            (b"a{b=\n", 1, UnterminatedLabelBlock),
            (b"a{b=\"c\\\nd\"} 1\n", 1, InvalidEscape),
            (b"a{b=\"1\",b=\"2\"} 1\n", 1, DuplicateLabel("b".into())),
            (b"# HELP a\nx\n", 2, MissingValue),
            (b"a", 1, MissingValue),
            (b"a  \t\n", 1, MissingValue),
            (b"a{b=\"c\"}\n", 1, MissingValue),
            (b"a{b=\"c\"}  ", 1, MissingValue),
            (b"\n\na true\n", 3, InvalidValue("true".into())),
            (b"a \xff\n", 1, InvalidValue("\u{fffd}".into())),
            (b"a 1 x\n", 1, InvalidTimestamp("x".into())),
            (b"a 0 1_2\n", 1, InvalidTimestamp("1_2".into())),
            (b"a 1 2 3\n", 1, UnexpectedText("3".into())),
            (b"a 1 2 # comment\n", 1, UnexpectedText("#".into())),
            (b"a{b=\"\xff\"} 1\n", 1, InvalidUtf8),
            (b"a{b=\"ok\",c=\"\xc3\"} 1\n", 1, InvalidUtf8),
            (b"# HELP a \xff\xfe\n", 1, InvalidUtf8),
            (b"# TYPE a gauges\n", 1, InvalidType("gauges".into())),
            (b"# TYPE a  gauge\n", 1, InvalidType(" gauge".into())),
            (b"# TYPE a gauge \n", 1, InvalidType("gauge ".into())),
            (b"# TYPE a\n", 1, InvalidType("".into())),
            (b"# TYPE a Counter\n", 1, InvalidType("Counter".into())),
            (b"# TYPE a gauge\r\n", 1, CarriageReturn),
            (b"a 1\r\nb 2\r\n", 1, CarriageReturn),
            (b"a 1 2\r\n", 1, CarriageReturn),
            (b"a 1\n\r\n", 2, CarriageReturn),
            (b"a\r\n", 1, CarriageReturn),
            (b"a 1 2 \r\n", 1, CarriageReturn),
            (b"a 1\n\0", 2, NulByte),
            (b"a\0{b=\"ddd\"} 1", 1, NulByte),
            (b"a{b\0=\"hiih\"}\t1", 1, MissingEquals("b".into())),
            (b"a 0 1\0", 1, InvalidTimestamp("1\0".into())),
        ];
        for (body, line, kind) in cases {
            let (body, line) = (*body, *line);
            let err = first_error(body)
                .unwrap_or_else(|| panic!("no error in {:?}", String::from_utf8_lossy(body)));
            assert_eq!(
                (err.line, &err.kind),
                (line, kind),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn error_display() {
        let err = error_of("a 1\nb 2\nc abc\n");
        assert_eq!(err.to_string(), "line 3: invalid value \"abc\"");
        let err = error_of("a{b=\"1\",b=\"2\"} 1\n");
        assert_eq!(err.to_string(), "line 1: duplicate label name \"b\"");
        let long = format!("a {}\n", "x".repeat(1000));
        let err = error_of(&long);
        let ParseErrorKind::InvalidValue(v) = &err.kind else {
            panic!("{err:?}")
        };
        assert!(v.len() < 80 && v.ends_with('…'), "{v}");
        let boxed: Box<dyn std::error::Error> = Box::new(err);
        assert!(boxed.to_string().starts_with("line 1: invalid value"));
    }

    #[test]
    fn none_after_error_and_after_end() {
        let mut p = TextParser::new(b"a 1\nb x\nc 3\n");
        assert!(matches!(p.next_entry(), Some(Ok(Entry::Sample(_)))));
        assert!(matches!(p.next_entry(), Some(Err(_))));
        assert!(p.next_entry().is_none());
        assert!(p.next_entry().is_none());
        let mut p = TextParser::new(b"");
        assert!(p.next_entry().is_none());
        let mut p = TextParser::new(b"\n\n# only comments\n  ");
        assert!(p.next_entry().is_none());
        assert!(p.next_entry().is_none());
    }

    #[test]
    fn generated_body() {
        let mut body = String::new();
        let mut expect = 0;
        for f in 0..60 {
            body.push_str(&format!(
                "# HELP fam_{f} Family number {f}, with \\\\ and \\n.\n"
            ));
            body.push_str(&format!("# TYPE fam_{f} gauge\n"));
            for i in 0..8 {
                match i % 4 {
                    0 => body.push_str(&format!("fam_{f} {i}.5\n")),
                    1 => body.push_str(&format!(
                        "fam_{f}{{instance=\"host-{i}\",path=\"/a\\\\b\\\"c\\\"\",}} {}e-3 {}\n",
                        f * i,
                        1_700_000_000_000_i64 + i as i64
                    )),
                    2 => body.push_str(&format!("fam_{f}{{ le = \"+Inf\" , i=\"{i}\" }}\t-Inf\n")),
                    _ => body.push_str(&format!("  fam_{f}{{i=\"{i}\"}} NaN\n\n")),
                }
                expect += 1;
            }
            body.push_str("# just a comment\n");
        }
        assert!(body.lines().count() > 500);
        let mut p = TextParser::new(body.as_bytes());
        let (mut help, mut types, mut n) = (0, 0, 0);
        let mut out = Labels::new();
        while let Some(e) = p.next_entry() {
            match e.unwrap() {
                Entry::Help { text, .. } => {
                    assert!(text.contains("with \\ and \n."), "{text}");
                    help += 1;
                }
                Entry::Type { kind, .. } => {
                    assert_eq!(kind, MetricType::Gauge);
                    types += 1;
                }
                Entry::Unit { .. } => panic!("UNIT is a comment in 0.0.4"),
                Entry::Sample(s) => {
                    s.parse_labels(&mut out).unwrap();
                    if let Some((_, path)) = out.iter().find(|(n, _)| *n == "path") {
                        assert_eq!(path, "/a\\b\"c\"");
                        assert!(s.timestamp.is_some());
                    }
                    assert!(s.name.starts_with("fam_"));
                    n += 1;
                }
            }
        }
        assert_eq!((help, types, n), (60, 60, expect));
    }

    const NODE_LIKE: &str = r#"# HELP go_gc_duration_seconds A summary of the pause duration of garbage collection cycles.
# TYPE go_gc_duration_seconds summary
go_gc_duration_seconds{quantile="0"} 2.3536e-05
go_gc_duration_seconds{quantile="0.25"} 3.0165e-05
go_gc_duration_seconds{quantile="0.5"} 3.5694e-05
go_gc_duration_seconds{quantile="0.75"} 4.9283e-05
go_gc_duration_seconds{quantile="1"} 0.000151155
go_gc_duration_seconds_sum 0.040980685
go_gc_duration_seconds_count 879
# HELP go_info Information about the Go environment.
# TYPE go_info gauge
go_info{version="go1.19.8"} 1
# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.
# TYPE node_cpu_seconds_total counter
node_cpu_seconds_total{cpu="0",mode="idle"} 87654.32
node_cpu_seconds_total{cpu="0",mode="iowait"} 12.5
node_cpu_seconds_total{cpu="0",mode="system"} 321.09
node_cpu_seconds_total{cpu="0",mode="user"} 1234.56
node_cpu_seconds_total{cpu="1",mode="idle"} 87600.01
node_cpu_seconds_total{cpu="1",mode="user"} 1300.4
# HELP node_filesystem_avail_bytes Filesystem space available to non-root users in bytes.
# TYPE node_filesystem_avail_bytes gauge
node_filesystem_avail_bytes{device="/dev/mmcblk0p2",fstype="ext4",mountpoint="/"} 2.1474836e+10
node_filesystem_avail_bytes{device="tmpfs",fstype="tmpfs",mountpoint="/run"} 8.4e+07
# HELP node_network_info Non-numeric data from /sys/class/net/<iface>, value is always 1.
# TYPE node_network_info gauge
node_network_info{address="dc:a6:32:00:00:01",broadcast="ff:ff:ff:ff:ff:ff",device="eth0",duplex="full",ifalias="",operstate="up"} 1
# HELP node_scrape_collector_duration_seconds node_exporter: Duration of a collector scrape.
# TYPE node_scrape_collector_duration_seconds gauge
node_scrape_collector_duration_seconds{collector="cpu"} 0.000713
node_scrape_collector_success{collector="cpu"} 1
# HELP node_hwmon_temp_celsius Hardware monitor for temperature (input)
# TYPE node_hwmon_temp_celsius gauge
node_hwmon_temp_celsius{chip="thermal_thermal_zone0",sensor="temp1"} 48.686
# HELP http_request_duration_seconds A histogram of the request duration.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.05"} 24054
http_request_duration_seconds_bucket{le="0.1"} 33444
http_request_duration_seconds_bucket{le="+Inf"} 144320
http_request_duration_seconds_sum 53423
http_request_duration_seconds_count 144320
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.68201945706e+09
# HELP node_textfile_scrape_error 1 if there was an error opening or reading a file, 0 otherwise
# TYPE node_textfile_scrape_error gauge
node_textfile_scrape_error 0
"#;

    #[test]
    fn node_exporter_like_body() {
        let mut p = TextParser::new(NODE_LIKE.as_bytes());
        let (mut n, mut help, mut types) = (0, 0, 0);
        let mut out = Labels::new();
        let mut network_labels = 0;
        while let Some(e) = p.next_entry() {
            match e.unwrap() {
                Entry::Sample(s) => {
                    s.parse_labels(&mut out).unwrap();
                    if s.name == "node_network_info" {
                        network_labels = out.len();
                        assert_eq!(out[4], ("ifalias", Cow::Borrowed("")));
                    }
                    if s.series == br#"http_request_duration_seconds_bucket{le="+Inf"}"# {
                        assert_eq!(s.value, 144320.0);
                    }
                    n += 1;
                }
                Entry::Help { .. } => help += 1,
                Entry::Type { .. } => types += 1,
                Entry::Unit { .. } => panic!("UNIT is a comment in 0.0.4"),
            }
        }
        let lines = NODE_LIKE
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .count();
        assert_eq!(n, lines);
        assert_eq!(n, 27);
        assert_eq!((help, types), (10, 10));
        assert_eq!(network_labels, 6);
    }

    /// Deterministic xorshift64 generator.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Mutates the seeds at random and checks the parser never panics, always advances, ends
    /// after an error and reports lines within the body; returns how many bodies had an error.
    fn fuzz(format: Format, seeds: &[&[u8]], seed: u64) -> usize {
        const SPECIAL: &[u8] = b"{}\"\\=, \t\n\r\0#:_aZ9.-+eEInfNa\xff\xc3";
        let mut rng = XorShift(seed);
        let mut errors = 0;
        for iter in 0..4000 {
            let mut body = seeds[iter % seeds.len()].to_vec();
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(body.len() + 1);
                match rng.below(6) {
                    0 if at < body.len() => body[at] = rng.next() as u8,
                    1 if at < body.len() => {
                        body.remove(at);
                    }
                    2 => body.insert(at, SPECIAL[rng.below(SPECIAL.len())]),
                    3 => body.truncate(at),
                    4 if at < body.len() => {
                        let end = (at + rng.below(40)).min(body.len());
                        let chunk = body[at..end].to_vec();
                        let to = rng.below(body.len() + 1);
                        body.splice(to..to, chunk);
                    }
                    _ => body.insert(at, SPECIAL[rng.below(SPECIAL.len())]),
                }
            }
            let total_lines = body.iter().filter(|&&c| c == b'\n').count() + 1;
            let mut p = TextParser::with_format(&body, format);
            let mut out = Labels::new();
            let mut count = 0;
            let mut failed = false;
            while let Some(e) = p.next_entry() {
                count += 1;
                assert!(count <= body.len() + 1, "parser does not advance");
                match e {
                    Ok(Entry::Sample(s)) => {
                        assert!(s.series.starts_with(s.name.as_bytes()));
                        assert!(s.line >= 1 && s.line <= total_lines);
                        if let Err(err) = s.parse_labels(&mut out) {
                            assert!(out.is_empty());
                            assert!(err.line >= s.line && err.line <= total_lines);
                            let _ = err.to_string();
                        }
                    }
                    Ok(_) => {}
                    Err(err) => {
                        failed = true;
                        errors += 1;
                        assert!(err.line >= 1 && err.line <= total_lines, "{err:?}");
                        let _ = err.to_string();
                    }
                }
            }
            assert!(p.next_entry().is_none());
            if format == Format::OpenMetrics && !failed {
                let end = body.strip_suffix(b"\n").unwrap_or(&body);
                assert!(
                    end.ends_with(b"# EOF"),
                    "{:?}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
        errors
    }

    #[test]
    fn garbage_never_panics() {
        let seeds: [&[u8]; 4] = [
            NODE_LIKE.as_bytes(),
            b"# HELP m a\\\\b\\n\n# TYPE m counter\nm{a=\"x\\\"y\",b=\"z\"} 1e3 -12\nm 2\n",
            b"m{a=\"x\ny\", b = \"}\" ,} NaN 5\n# comment\r\nn -Inf\n",
            b"",
        ];
        let errors = fuzz(Format::Text004, &seeds, 0x9e37_79b9_7f4a_7c15);
        // The mutations must actually exercise the error paths.
        assert!(errors > 500, "{errors}");
    }

    /// Parses a recorded scrape from ../shared/data and checks every sample line is a sample.
    fn check_recorded(file: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/data")
            .join(file);
        let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut p = TextParser::new(&body);
        let mut out = Labels::new();
        let mut n = 0;
        while let Some(e) = p.next_entry() {
            match e {
                Ok(Entry::Sample(s)) => {
                    s.parse_labels(&mut out)
                        .unwrap_or_else(|e| panic!("{file}: {e}"));
                    n += 1;
                }
                Ok(_) => {}
                Err(e) => panic!("{file}: {e}"),
            }
        }
        let text = String::from_utf8_lossy(&body);
        let lines = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .count();
        assert!(n > 0, "{file}");
        assert_eq!(n, lines, "{file}");
    }

    #[test]
    #[ignore = "needs ../shared"]
    fn recorded_node_exporter() {
        check_recorded("node-exporter.prom");
    }

    #[test]
    #[ignore = "needs ../shared"]
    fn recorded_prometheus_self() {
        check_recorded("prometheus-self.prom");
    }

    #[test]
    #[ignore = "needs ../shared"]
    fn recorded_victoriametrics_self() {
        check_recorded("victoriametrics-self.prom");
    }

    // OpenMetrics.

    fn om_entries(body: &str) -> Vec<Entry<'_>> {
        entries_in(body, Format::OpenMetrics)
    }

    fn om_samples(body: &str) -> Vec<Sample<'_>> {
        samples_in(body, Format::OpenMetrics)
    }

    fn om_one_sample(body: &str) -> Sample<'_> {
        one_sample_in(body, Format::OpenMetrics)
    }

    fn om_error_of(body: &str) -> ParseError {
        first_error_in(Format::OpenMetrics, body.as_bytes())
            .unwrap_or_else(|| panic!("no error in {body:?}"))
    }

    const OM_BODY: &str = r#"# TYPE acme_http_router_request_seconds summary
# UNIT acme_http_router_request_seconds seconds
# HELP acme_http_router_request_seconds Latency though all of ACME's HTTP request router.
acme_http_router_request_seconds_sum{path="/api/v1",method="GET"} 9036.32
acme_http_router_request_seconds_count{path="/api/v1",method="GET"} 807283.0
acme_http_router_request_seconds_created{path="/api/v1",method="GET"} 1605281325.0
acme_http_router_request_seconds{path="/api/v1",method="GET",quantile="0.5"} NaN
# TYPE go_goroutines gauge
# HELP go_goroutines Number of goroutines that currently exist.
go_goroutines 69
# TYPE process_cpu_seconds counter
# UNIT process_cpu_seconds seconds
# HELP process_cpu_seconds Total user and system CPU time spent in seconds.
process_cpu_seconds_total 4.20072246e+06 1795544805.895 # {trace_id="KOO5S4vxi0o"} 0.67
process_cpu_seconds_created 1.6e9
# TYPE http_request_duration_seconds histogram
# HELP http_request_duration_seconds A "histogram" with \\ and \n and \" escapes.
http_request_duration_seconds_bucket{le="0.05"} 24054 # {trace_id="a",span="b"} 0.04 1795544805.5
http_request_duration_seconds_bucket{le="+Inf"} 144320 # {} +Inf
http_request_duration_seconds_sum 53423
http_request_duration_seconds_count 144320
# TYPE queue_size gaugehistogram
queue_size_bucket{le="1"} 5
queue_size_bucket{le="+Inf"} 7
queue_size_gcount 7
queue_size_gsum -3.5
# TYPE build info
build_info{version="1.2.\"3\""} 1
# TYPE feature stateset
feature{feature="a"} 1
feature{feature="b"} 0
# TYPE mystery unknown
# UNIT mystery 
mystery{} -Inf -1.5
# EOF
"#;

    #[test]
    fn openmetrics_every_type() {
        let e = om_entries(OM_BODY);
        let types: Vec<_> = e
            .iter()
            .filter_map(|e| match e {
                Entry::Type { metric, kind } => Some((*metric, *kind)),
                _ => None,
            })
            .collect();
        use MetricType::*;
        assert_eq!(
            types,
            [
                ("acme_http_router_request_seconds", Summary),
                ("go_goroutines", Gauge),
                ("process_cpu_seconds", Counter),
                ("http_request_duration_seconds", Histogram),
                ("queue_size", GaugeHistogram),
                ("build", Info),
                ("feature", Stateset),
                ("mystery", Unknown),
            ]
        );
        let units: Vec<_> = e
            .iter()
            .filter_map(|e| match e {
                Entry::Unit { metric, unit } => Some((*metric, *unit)),
                _ => None,
            })
            .collect();
        assert_eq!(
            units,
            [
                ("acme_http_router_request_seconds", "seconds"),
                ("process_cpu_seconds", "seconds"),
                ("mystery", ""),
            ]
        );
        let helps: Vec<_> = e
            .iter()
            .filter_map(|e| match e {
                Entry::Help { metric, text } => Some((*metric, text.to_string())),
                _ => None,
            })
            .collect();
        assert_eq!(helps.len(), 4);
        // OpenMetrics unescapes help texts like label values.
        assert_eq!(
            helps[3],
            (
                "http_request_duration_seconds",
                "A \"histogram\" with \\ and \n and \" escapes.".into()
            )
        );

        let s = om_samples(OM_BODY);
        let lines = OM_BODY.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(s.len(), lines);
        assert_eq!(s.len(), 19);
        // `_created` series are ordinary samples.
        assert_eq!(s[2].name, "acme_http_router_request_seconds_created");
        assert_eq!(s[2].value, 1605281325.0);
        assert_eq!(s[3].value.to_bits(), NORMAL_NAN_BITS);
        assert_eq!(labels(&s[3])[2], ("quantile", "0.5".into()));
        assert_eq!((s[4].series, s[4].value), (&b"go_goroutines"[..], 69.0));
        // Exemplars are dropped: neither in the series nor in the value or timestamp.
        assert_eq!(s[5].series, b"process_cpu_seconds_total");
        assert_eq!(s[5].value, 4.20072246e+06);
        assert_eq!(s[5].timestamp, Some(1795544805895));
        assert_eq!(s[5].line, 14);
        assert_eq!(s[6].value, 1.6e9);
        assert_eq!(
            s[7].series,
            br#"http_request_duration_seconds_bucket{le="0.05"}"#
        );
        assert_eq!((s[7].value, s[7].timestamp), (24054.0, None));
        assert_eq!(s[8].value, 144320.0);
        assert_eq!((s[14].name, s[14].value), ("queue_size_gsum", -3.5));
        assert_eq!(labels(&s[15]), vec![("version", "1.2.\"3\"".into())]);
        assert_eq!(s[17].value, 0.0);
        let last = &s[18];
        assert_eq!(last.series, b"mystery{}");
        assert!(labels(last).is_empty());
        assert_eq!(
            (last.value, last.timestamp),
            (f64::NEG_INFINITY, Some(-1500))
        );
    }

    #[test]
    fn openmetrics_eof_forms() {
        assert!(om_entries("# EOF").is_empty());
        assert!(om_entries("# EOF\n").is_empty());
        let s = om_one_sample("a 1\n# EOF");
        assert_eq!((s.name, s.value, s.line), ("a", 1.0, 1));
        // A parser ends after # EOF and stays ended.
        let mut p = TextParser::with_format(b"a 1\n# EOF\n", Format::OpenMetrics);
        assert!(matches!(p.next_entry(), Some(Ok(Entry::Sample(_)))));
        assert!(p.next_entry().is_none());
        assert!(p.next_entry().is_none());
        // In 0.0.4, # EOF and # UNIT are plain comments and anything may follow.
        let s = one_sample("# EOF\n# UNIT a_seconds seconds\na 1\n# EOF\n\n");
        assert_eq!((s.name, s.line), ("a", 3));
        assert_eq!(TextParser::new(b"x 1\n").format, Format::Text004);
    }

    #[test]
    fn openmetrics_timestamps() {
        let t = |s: &str| om_one_sample(&format!("m 1 {s}\n# EOF\n")).timestamp;
        assert_eq!(t("1795544805.895"), Some(1795544805895));
        assert_eq!(t("1795544805.5"), Some(1795544805500));
        assert_eq!(t("1795544805"), Some(1795544805000));
        assert_eq!(t("0"), Some(0));
        assert_eq!(t("-0"), Some(0));
        assert_eq!(t("1e3"), Some(1_000_000));
        assert_eq!(t("+1.5E9"), Some(1_500_000_000_000));
        assert_eq!(t("-1.5"), Some(-1500));
        assert_eq!(t("0.0009"), Some(0));
        assert_eq!(t("-0.0009"), Some(0));
        // Truncated as Prometheus's int64(ts * 1000): 1.005 * 1000 is 1004.999….
        assert_eq!(t("1.005"), Some(1004));
        // Every millisecond of a recording-like second comes out as written.
        for ms in 0..1000 {
            let text = format!("1795544805.{ms:03}");
            assert_eq!(t(&text), Some(1_795_544_805_000 + ms), "{text}");
        }
        for text in [
            "NaN",
            "+Inf",
            "-Inf",
            "inf",
            "abc",
            "1_0",
            "0x10",
            "1e400",
            "1e17",
            "-1e17",
            "1,5",
            "1.5.",
            "\u{1F600}",
        ] {
            let err = om_error_of(&format!("m 1 {text}\n# EOF\n"));
            assert_eq!(
                (err.line, err.kind),
                (1, ParseErrorKind::InvalidTimestamp(text.into())),
                "{text}"
            );
        }
    }

    #[test]
    fn openmetrics_values_and_labels() {
        let v = |s: &str| om_one_sample(&format!("m {s}\n# EOF\n")).value;
        assert_eq!(v("1"), 1.0);
        assert_eq!(v("-7"), -7.0);
        assert_eq!(v("1.5e-3"), 0.0015);
        assert_eq!(v("+Inf"), f64::INFINITY);
        assert_eq!(v("-Inf"), f64::NEG_INFINITY);
        assert_eq!(v("NaN").to_bits(), NORMAL_NAN_BITS);
        let s = om_one_sample(
            "m{a=\"x\\\"y\",b=\"c:\\\\d\",c=\"l1\\nl2\",d=\"\\t\",e=\"ü}{, =\"} 1\n# EOF\n",
        );
        assert_eq!(
            labels(&s),
            vec![
                ("a", "x\"y".into()),
                ("b", "c:\\d".into()),
                ("c", "l1\nl2".into()),
                ("d", "\\t".into()),
                ("e", "ü}{, =".into()),
            ]
        );
        // The series key is the same for the same series whatever the value and timestamp.
        let v = om_samples("a{x=\"1\"} 1\na{x=\"1\"} 2 3\na{x=\"2\"} 1\n# EOF\n");
        assert_eq!(v[0].series, v[1].series);
        assert_ne!(v[0].series, v[2].series);
    }

    #[test]
    fn openmetrics_errors_with_line() {
        use ParseErrorKind::*;
        let ex = |s: &str| InvalidExemplar(s.into());
        let cases: &[(&[u8], usize, ParseErrorKind)] = &[
            // # EOF
            (b"", 1, MissingEof),
            (b"a 1\n", 2, MissingEof),
            (b"a 1", 1, MissingEof),
            (b"a 1 2", 1, MissingEof),
            (b"a_total 1 # {a=\"b\"} 1", 1, MissingEof),
            (b"# HELP a x", 1, MissingEof),
            (b"# EOF\na 1\n", 2, TextAfterEof("a 1".into())),
            (b"a 1\n# EOF\n\n", 3, TextAfterEof("".into())),
            (b"# EOF\n# EOF\n", 2, TextAfterEof("# EOF".into())),
            (b"# EOF ", 1, TextAfterEof(" ".into())),
            (b"# EOFX\n", 1, TextAfterEof("X".into())),
            (b"# EOF\r\n", 1, CarriageReturn),
            // Blank lines, blanks and comments.
            (b"a 1\n\nb 2\n# EOF\n", 2, BlankLine),
            (b"\n# EOF\n", 1, BlankLine),
            (b" a 1\n# EOF\n", 1, InvalidSeparator),
            (b"a  1\n# EOF\n", 1, InvalidSeparator),
            (b"a\t1\n# EOF\n", 1, InvalidSeparator),
            (b"a 1 \n# EOF\n", 1, InvalidSeparator),
            (b"a 1  2\n# EOF\n", 1, InvalidSeparator),
            (b"a{} \n# EOF\n", 1, InvalidSeparator),
            (b"a{}1\n# EOF\n", 1, InvalidSeparator),
            (b"# HELP a\n# EOF\n", 1, InvalidSeparator),
            (b"# TYPE a\tgauge\n# EOF\n", 1, InvalidSeparator),
            (
                b"a 1\n# comment\n# EOF\n",
                2,
                InvalidComment("# comment".into()),
            ),
            (b"#\n# EOF\n", 1, InvalidComment("#".into())),
            (b"#HELP a x\n# EOF\n", 1, InvalidComment("#HELP a x".into())),
            (
                b"#  HELP a x\n# EOF\n",
                1,
                InvalidComment("#  HELP a x".into()),
            ),
            (b"# HELP  a x\n# EOF\n", 1, InvalidMetricName),
            (b"# HELP a-b x\n# EOF\n", 1, InvalidMetricName),
            (b"a 1\n\r\n# EOF\n", 2, CarriageReturn),
            (b"a 1\r\n# EOF\n", 1, CarriageReturn),
            // Metadata.
            (
                b"# TYPE a untyped\n# EOF\n",
                1,
                InvalidOpenMetricsType("untyped".into()),
            ),
            (
                b"# TYPE a gauge \n# EOF\n",
                1,
                InvalidOpenMetricsType("gauge ".into()),
            ),
            (b"# TYPE a \n# EOF\n", 1, InvalidOpenMetricsType("".into())),
            (
                b"# TYPE a Gauge\n# EOF\n",
                1,
                InvalidOpenMetricsType("Gauge".into()),
            ),
            (b"# TYPE a gauge\r\n# EOF\n", 1, CarriageReturn),
            (b"# UNIT a_s x\n# EOF\n", 1, UnitNotSuffix("a_s".into())),
            (b"# UNIT as s\n# EOF\n", 1, UnitNotSuffix("as".into())),
            (b"# UNIT s s\n# EOF\n", 1, UnitNotSuffix("s".into())),
            (b"# UNIT a_s _s\n# EOF\n", 1, UnitNotSuffix("a_s".into())),
            (b"# HELP a \xff\n# EOF\n", 1, InvalidUtf8),
            // Samples.
            (b"a 1\n1a 2\n# EOF\n", 2, InvalidMetricName),
            (b"a-1 2\n# EOF\n", 1, InvalidMetricName),
            (b"a\0 1\n# EOF\n", 1, NulByte),
            (b"a\n# EOF\n", 1, MissingValue),
            (b"a{b=\"c\"}\n# EOF\n", 1, MissingValue),
            (b"a x\n# EOF\n", 1, InvalidValue("x".into())),
            (b"a 1\t2\n# EOF\n", 1, InvalidValue("1\t2".into())),
            (b"a 1 2 3\n# EOF\n", 1, UnexpectedText("3".into())),
            (b"a 1 2 # x\n# EOF\n", 1, UnexpectedText("#".into())),
            (b"a 1 # x\n# EOF\n", 1, InvalidTimestamp("#".into())),
            (
                b"a 1 #{x=\"y\"} 1\n# EOF\n",
                1,
                InvalidTimestamp("#{x=\"y\"}".into()),
            ),
            // Label blocks are strict.
            (
                b"a {b=\"c\"} 1\n# EOF\n",
                1,
                InvalidValue("{b=\"c\"}".into()),
            ),
            (b"a{ b=\"c\"} 1\n# EOF\n", 1, InvalidLabelName),
            (b"a{b=\"c\",} 1\n# EOF\n", 1, InvalidLabelName),
            (b"a{,b=\"c\"} 1\n# EOF\n", 1, InvalidLabelName),
            (b"a{b=\"c\" } 1\n# EOF\n", 1, MissingComma),
            (b"a{b=\"c\"d=\"e\"} 1\n# EOF\n", 1, MissingComma),
            (b"a{b =\"c\"} 1\n# EOF\n", 1, MissingEquals("b".into())),
            (b"a{b= \"c\"} 1\n# EOF\n", 1, MissingLabelValue("b".into())),
            (b"a{b=\"c\n\"} 1\n# EOF\n", 1, UnterminatedLabelValue),
            (b"a{b=\"c\\\nd\"} 1\n# EOF\n", 1, InvalidEscape),
            (b"a{b=\"c\"\n# EOF\n", 1, UnterminatedLabelBlock),
            (
                b"a{b=\"1\",b=\"2\"} 1\n# EOF\n",
                1,
                DuplicateLabel("b".into()),
            ),
            (b"a{b=\"\xff\"} 1\n# EOF\n", 1, InvalidUtf8),
            // Exemplars.
            (
                b"a 1 # {x=\"y\"} 1\n# EOF\n",
                1,
                ExemplarNotAllowed("a".into()),
            ),
            (
                b"a_count 1 2 # {x=\"y\"} 1\n# EOF\n",
                1,
                ExemplarNotAllowed("a_count".into()),
            ),
            (b"a_total 1 # {x=\"y\"}\n# EOF\n", 1, ex("# {x=\"y\"}")),
            (b"a_total 1 # {x=\"y\"} \n# EOF\n", 1, ex("# {x=\"y\"} ")),
            (
                b"a_total 1 # {x=\"y\"}  1\n# EOF\n",
                1,
                ex("# {x=\"y\"}  1"),
            ),
            (b"a_total 1 # {x=\"y\"} z\n# EOF\n", 1, ex("# {x=\"y\"} z")),
            (
                b"a_total 1 # {x=\"y\"} 1 z\n# EOF\n",
                1,
                ex("# {x=\"y\"} 1 z"),
            ),
            (
                b"a_total 1 # {x=\"y\"} 1 NaN\n# EOF\n",
                1,
                ex("# {x=\"y\"} 1 NaN"),
            ),
            (
                b"a_total 1 # {x=\"y\"} 1 2 3\n# EOF\n",
                1,
                ex("# {x=\"y\"} 1 2 3"),
            ),
            (
                b"a_total 1 # {x=\"y\",} 1\n# EOF\n",
                1,
                ex("# {x=\"y\",} 1"),
            ),
            (b"a_total 1 # {x=y} 1\n# EOF\n", 1, ex("# {x=y} 1")),
            (b"a_total 1 # {x=\"y\" 1\n# EOF\n", 1, ex("# {x=\"y\" 1")),
            (
                b"a_total 1 # {x=\"\xff\"} 1\n# EOF\n",
                1,
                ex("# {x=\"\u{fffd}\"} 1"),
            ),
            (b"a_total 1 # {x=\"y\"} 1\r\n# EOF\n", 1, CarriageReturn),
            (
                b"a_total 1 # {x=\"y\"} 1 # {x=\"y\"} 1\n# EOF\n",
                1,
                ex("# {x=\"y\"} 1 # {x=\"y\"} 1"),
            ),
            (
                b"ok 1\nb_bucket{le=\"1\"} 1 # {x=\"y\"} 1 2 3\n# EOF\n",
                2,
                ex("# {x=\"y\"} 1 2 3"),
            ),
        ];
        for (body, line, kind) in cases {
            let text = String::from_utf8_lossy(body);
            let err = first_error_in(Format::OpenMetrics, body)
                .unwrap_or_else(|| panic!("no error in {text:?}"));
            assert_eq!((err.line, &err.kind), (*line, kind), "{text:?}");
            assert!(!err.to_string().is_empty());
        }
        // Exemplars with or without labels and timestamps are accepted on _total and _bucket.
        for body in [
            "a_total 1 # {} 1\n",
            "a_total 1 # {x=\"y\"} 1\n",
            "a_total 1 2 # {x=\"y\",z=\"\"} -1.5 3.25\n",
            "a_bucket{le=\"1\"} 1 # {a=\"b\\\"\"} NaN 1795544805.895\n",
        ] {
            let body = format!("{body}# EOF\n");
            let s = om_one_sample(&body);
            assert_eq!(s.value, 1.0, "{body:?}");
            assert!(!s.series.contains(&b'#'));
        }
    }

    #[test]
    fn openmetrics_error_display() {
        let err = om_error_of("a 1\n");
        assert_eq!(err.to_string(), "line 2: data does not end with # EOF");
        let err = om_error_of("a 1\n# EOF\nb 2\n");
        assert_eq!(
            err.to_string(),
            "line 3: unexpected data \"b 2\" after # EOF"
        );
        let err = om_error_of("a 1\n\n# EOF\n");
        assert_eq!(
            err.to_string(),
            "line 2: blank line (OpenMetrics allows none)"
        );
    }

    #[test]
    fn content_type_selects_format() {
        use Format::*;
        for (ct, want) in [
            ("application/openmetrics-text", OpenMetrics),
            (
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                OpenMetrics,
            ),
            ("application/openmetrics-text;version=0.0.1", OpenMetrics),
            (
                "  Application/OpenMetrics-Text ; Version = \"1.0.0\" ;",
                OpenMetrics,
            ),
            (
                "application/openmetrics-text; charset=\"utf-8\"",
                OpenMetrics,
            ),
            ("applİcation/openmetrics-text", OpenMetrics),
            ("", Text004),
            ("text/plain; version=0.0.4; charset=utf-8", Text004),
            ("text/plain", Text004),
            ("application/json", Text004),
            (
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily",
                Text004,
            ),
            ("application/openmetrics-text-x", Text004),
            ("application/openmetrics", Text004),
            ("openmetrics-text", Text004),
            ("application/openmetrics-text/x", Text004),
            // Go's mime.ParseMediaType fails on these, and Prometheus falls back to 0.0.4.
            ("application/openmetrics-text; version", Text004),
            ("application/openmetrics-text; version=", Text004),
            ("application/openmetrics-text; version=\"\"", Text004),
            ("application/openmetrics-text; version=\"1.0.0", Text004),
            ("application/openmetrics-text; a=1; A=2", Text004),
            ("application/openmetrics-text; a=1 b=2", Text004),
            ("application/openmetrics-text;;", Text004),
            ("application/openmetrics-text; =1", Text004),
        ] {
            assert_eq!(Format::from_content_type(ct), want, "{ct:?}");
        }
    }

    #[test]
    fn garbage_never_panics_openmetrics() {
        let seeds: [&[u8]; 4] = [
            OM_BODY.as_bytes(),
            b"# HELP m_total a\\\\b\\n\n# TYPE m counter\n# UNIT m \nm_total{a=\"x\\\"y\",b=\"z\"} 1e3 -12.5 # {t=\"1\"} 2 3\nm_created 2\n# EOF\n",
            b"m{a=\"x\"} NaN 5\nn -Inf\n# EOF",
            b"# EOF\n",
        ];
        for seed in &seeds {
            assert!(first_error_in(Format::OpenMetrics, seed).is_none());
        }
        let errors = fuzz(Format::OpenMetrics, &seeds, 0x2545_f491_4f6c_dd1d);
        assert!(errors > 2000, "{errors}");
    }

    /// Streams the first 200,000 lines of the OpenMetrics recording, ends them with `# EOF` and
    /// checks they parse without an error and with timestamps ascending in every series.
    #[test]
    #[ignore = "needs ../shared"]
    fn recorded_openmetrics() {
        use std::io::BufRead;
        const LINES: usize = 200_000;
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/node-1s.om.zst");
        assert!(path.exists(), "{}", path.display());
        let mut child = std::process::Command::new("zstd")
            .arg("-dc")
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run zstd");
        let mut body = Vec::new();
        let mut lines = 0;
        {
            let mut reader = std::io::BufReader::new(child.stdout.take().expect("stdout"));
            while lines < LINES {
                let start = body.len();
                let n = reader
                    .read_until(b'\n', &mut body)
                    .expect("read zstd output");
                if n == 0 || body[start..] == *b"# EOF\n" || body[start..] == *b"# EOF" {
                    body.truncate(start);
                    break;
                }
                if body.last() != Some(&b'\n') {
                    // A partial last line (no newline at the end of the file).
                    body.truncate(start);
                    break;
                }
                lines += 1;
            }
        }
        // The rest of the output is not wanted: stop zstd rather than wait for it.
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(lines, LINES);
        body.extend_from_slice(b"# EOF\n");

        let mut p = TextParser::with_format(&body, Format::OpenMetrics);
        let mut out = Labels::new();
        let mut last: std::collections::HashMap<&[u8], i64> = std::collections::HashMap::new();
        let (mut samples, mut meta) = (0, 0);
        while let Some(e) = p.next_entry() {
            match e {
                Ok(Entry::Sample(s)) => {
                    s.parse_labels(&mut out).unwrap_or_else(|e| panic!("{e}"));
                    let ts = s.timestamp.expect("the recording has timestamps");
                    if let Some(prev) = last.insert(s.series, ts) {
                        assert!(
                            ts > prev,
                            "line {}: {} after {prev} in {}",
                            s.line,
                            ts,
                            String::from_utf8_lossy(s.series)
                        );
                    }
                    samples += 1;
                }
                Ok(_) => meta += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(samples + meta, LINES);
        assert!(samples > 100_000 && !last.is_empty(), "{samples}");
    }
}
