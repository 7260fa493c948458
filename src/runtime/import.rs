//! `perch import FILE`: backfill an OpenMetrics file with timestamps into the store.
//!
//! The file is what `promtool tsdb create-blocks-from openmetrics` reads (plain, or compressed
//! with zstd when it ends in `.zst`). It is streamed in slices of whole lines, so memory is bounded
//! by the slice and the batch of samples waiting to be written, not by the file. Samples are
//! grouped per series and written as blocks through the store's import path, which accepts data
//! older than what the store holds; the byte budget holds throughout. A line that does not parse
//! stops the import with its line number; what was written before it stays.

use crate::config::Flags;
use crate::model::{Labels, LabelsBuilder, Sample, METRIC_NAME};
use crate::scrape::parse::{Entry, Format, TextParser};
use crate::storage::backend::FileBackend;
use crate::storage::flash::FlashStorage;
use crate::storage::Storage;
use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;

/// Bytes of text parsed at a time.
const SLICE: usize = 4 << 20;
/// Samples held before they are written out as blocks.
const BATCH_SAMPLES: usize = 4 << 20;

/// What an import did.
#[derive(Debug, Default, Clone, Copy)]
pub struct ImportReport {
    pub samples: u64,
    pub series: usize,
    pub bytes_read: u64,
}

/// Imports `file` into the store the flags name.
pub fn run(file: &Path, flags: &Flags) -> Result<ImportReport, String> {
    let backend = FileBackend::new(&flags.storage_path)
        .map_err(|e| format!("{}: {e}", flags.storage_path.display()))?;
    let (store, _) = FlashStorage::open(Box::new(backend), super::store_options(flags))
        .map_err(|e| format!("{}: {e}", flags.storage_path.display()))?;
    let f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let total = f.metadata().map(|m| m.len()).unwrap_or(0);
    let counted = CountingReader {
        inner: f,
        count: std::rc::Rc::new(std::cell::Cell::new(0)),
    };
    let count = counted.count.clone();
    let reader: Box<dyn Read> = if file.extension().is_some_and(|e| e == "zst") {
        Box::new(
            zstd::stream::read::Decoder::new(counted)
                .map_err(|e| format!("{}: {e}", file.display()))?,
        )
    } else {
        Box::new(counted)
    };
    let progress = std::io::stderr().is_terminal();
    let mut imp = Importer {
        store,
        series: HashMap::new(),
        pending: 0,
        report: ImportReport::default(),
    };
    let mut reader = reader;
    let mut buf: Vec<u8> = Vec::with_capacity(SLICE + 64 * 1024);
    let mut line_base = 0usize;
    let mut eof = false;
    let mut chunk = vec![0u8; 256 * 1024];
    while !eof {
        while buf.len() < SLICE {
            let n = reader
                .read(&mut chunk)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            if n == 0 {
                eof = true;
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        // Parse whole lines only; keep the partial last line for the next slice.
        let cut = if eof {
            buf.len()
        } else {
            match buf.iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => continue,
            }
        };
        let slice = &buf[..cut];
        let has_eof = slice.ends_with(b"# EOF\n") || slice.ends_with(b"# EOF");
        let mut text = slice.to_vec();
        if !eof || !has_eof {
            // OpenMetrics wants `# EOF` last; a slice in the middle of the file gets one.
            if !eof && has_eof {
                return Err(format!("{}: text after # EOF", file.display()));
            }
            if !eof {
                text.extend_from_slice(b"# EOF\n");
            }
        }
        imp.parse(&text, line_base)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        line_base += slice.iter().filter(|&&b| b == b'\n').count();
        buf.drain(..cut);
        if imp.pending >= BATCH_SAMPLES {
            imp.write()?;
        }
        if progress && total > 0 {
            let done = count.get().min(total);
            eprint!(
                "\rimporting {}: {:>3}% ({} samples)",
                file.display(),
                done * 100 / total,
                imp.report.samples + imp.pending as u64
            );
            let _ = std::io::stderr().flush();
        }
    }
    imp.write()?;
    imp.report.series = imp.store.stats().series as usize;
    if progress {
        eprintln!();
    }
    imp.report.bytes_read = count.get();
    Ok(imp.report)
}

struct CountingReader<R> {
    inner: R,
    count: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

struct Importer {
    store: FlashStorage,
    series: HashMap<Vec<u8>, (Labels, Vec<Sample>)>,
    pending: usize,
    report: ImportReport,
}

impl Importer {
    fn parse(&mut self, text: &[u8], line_base: usize) -> Result<(), String> {
        let mut p = TextParser::with_format(text, Format::OpenMetrics);
        let mut pairs = Vec::new();
        while let Some(e) = p.next_entry() {
            let s = match e {
                Ok(Entry::Sample(s)) => s,
                Ok(_) => continue,
                Err(mut e) => {
                    e.line += line_base;
                    return Err(e.to_string());
                }
            };
            let Some(t) = s.timestamp else {
                return Err(format!(
                    "a sample of {} has no timestamp; import needs timestamps",
                    s.name
                ));
            };
            let entry = match self.series.get_mut(s.series) {
                Some(e) => e,
                None => {
                    s.parse_labels(&mut pairs).map_err(|mut e| {
                        e.line += line_base;
                        e.to_string()
                    })?;
                    let mut b = LabelsBuilder::new();
                    for (n, v) in &pairs {
                        b.set(n, v);
                    }
                    b.set(METRIC_NAME, s.name);
                    self.series
                        .entry(s.series.to_vec())
                        .or_insert_with(|| (b.take(), Vec::new()))
                }
            };
            entry.1.push(Sample { t, v: s.value });
            self.pending += 1;
        }
        Ok(())
    }

    fn write(&mut self) -> Result<(), String> {
        if self.pending == 0 {
            return Ok(());
        }
        let mut items: Vec<(Labels, Vec<Sample>)> = Vec::with_capacity(self.series.len());
        for (_, (labels, mut samples)) in self.series.drain() {
            if !samples.windows(2).all(|w| w[0].t < w[1].t) {
                samples.sort_by_key(|s| s.t);
                samples.dedup_by_key(|s| s.t);
            }
            items.push((labels, samples));
        }
        // Similar series side by side compress better; new series get ids in this order.
        items.sort_by(|a, b| a.0.cmp(&b.0));
        let n = self
            .store
            .import(items, crate::storage::flash::IMPORT_LEVEL)
            .map_err(|e| format!("writing to the store: {e}"))?;
        self.report.samples += n as u64;
        self.pending = 0;
        Ok(())
    }
}
