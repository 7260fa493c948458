//! Where the store's bytes live: a directory of files, or memory (for tests).
//!
//! The store only ever appends to files, syncs them, reads them at offsets, truncates a torn
//! tail, and removes whole files — the whole vocabulary of a flash-friendly store is in
//! [`Backend`]. [`FileBackend`] is the real one (no `mmap`: reads are `pread`s into owned
//! buffers, so 32-bit ARM's address space never matters); [`MemBackend`] keeps files in memory
//! and can simulate a power cut: everything written since the last sync is lost, and the last
//! write may be torn.
//!
//! Regular file I/O is synchronous and short, and happens between `.await` points (async-io
//! cannot make regular files non-blocking anyway).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// File operations the store needs.
pub trait Backend {
    /// The names of the files, in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Size of a file in bytes.
    fn len(&self, name: &str) -> io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `off`; returns how many were read.
    fn read_at(&self, name: &str, off: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Appends to a file, creating it if needed.
    fn append(&self, name: &str, data: &[u8]) -> io::Result<()>;
    /// Makes everything appended to the file durable, and the directory's changes since the
    /// last sync (files created or removed) before it.
    fn sync(&self, name: &str) -> io::Result<()>;
    /// For a sync run elsewhere (the fsync thread, `super::syncer`): the descriptors to call
    /// `fdatasync` on, in order, to the same effect as [`Backend::sync`]. A backend without
    /// descriptors syncs here and returns none.
    fn sync_handle(&self, name: &str) -> io::Result<Vec<File>> {
        self.sync(name).map(|()| Vec::new())
    }
    /// Cuts a file to `len` bytes.
    fn truncate(&self, name: &str, len: u64) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Bytes the directory itself counts for in `du -sb` (its own entry).
    fn dir_bytes(&self) -> u64;

    /// Reads exactly `len` bytes at `off`.
    fn read_exact_at(&self, name: &str, off: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            let n = self.read_at(name, off + got as u64, &mut buf[got..])?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read"));
            }
            got += n;
        }
        Ok(buf)
    }
}

/// Files in a directory.
pub struct FileBackend {
    dir: PathBuf,
    open: RefCell<HashMap<String, File>>,
    /// A file was created or removed since the directory was last synced.
    dir_dirty: std::cell::Cell<bool>,
}

impl FileBackend {
    /// Uses `dir`, creating it if needed.
    pub fn new(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(FileBackend {
            dir: dir.to_owned(),
            open: RefCell::new(HashMap::new()),
            dir_dirty: std::cell::Cell::new(false),
        })
    }

    fn with_file<T>(&self, name: &str, f: impl FnOnce(&File) -> io::Result<T>) -> io::Result<T> {
        let mut open = self.open.borrow_mut();
        if !open.contains_key(name) {
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(self.dir.join(name))?;
            // Keep few handles: the store touches the active segment and a few old ones.
            if open.len() >= 16 {
                open.clear();
            }
            open.insert(name.to_owned(), file);
        }
        match open.get(name) {
            Some(file) => f(file),
            None => Err(io::Error::other("file handle vanished")),
        }
    }

    fn dir_handle(&self) -> io::Result<File> {
        File::open(&self.dir)
    }
}

impl Backend for FileBackend {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            if e.file_type()?.is_file() {
                if let Some(n) = e.file_name().to_str() {
                    out.push(n.to_owned());
                }
            }
        }
        Ok(out)
    }

    fn len(&self, name: &str) -> io::Result<u64> {
        Ok(std::fs::metadata(self.dir.join(name))?.len())
    }

    fn read_at(&self, name: &str, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.with_file(name, |f| f.read_at(buf, off))
    }

    fn append(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let created = !self.dir.join(name).exists();
        self.with_file(name, |f| {
            let mut f = f;
            io::Write::write_all(&mut f, data)
        })?;
        if created {
            // A new file's directory entry must survive a power cut too: the next sync.
            self.dir_dirty.set(true);
        }
        Ok(())
    }

    fn sync(&self, name: &str) -> io::Result<()> {
        for f in self.sync_handle(name)? {
            super::syncer::sync_one(&f)?;
        }
        Ok(())
    }

    /// The directory first (when a file was created or removed), then the file: a removal is
    /// durable before what was written in its place, so after a power cut the files never
    /// hold more than the budget.
    fn sync_handle(&self, name: &str) -> io::Result<Vec<File>> {
        let mut out = Vec::with_capacity(2);
        if self.dir_dirty.get() {
            out.push(self.dir_handle()?);
        }
        out.push(self.with_file(name, |f| f.try_clone())?);
        // Whoever runs these syncs reports their failure; the directory is synced again by
        // the next sync only if something changes it again (a failed flush starts a new
        // segment, which does).
        self.dir_dirty.set(false);
        Ok(out)
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        self.with_file(name, |f| f.set_len(len))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.open.borrow_mut().remove(name);
        std::fs::remove_file(self.dir.join(name))?;
        // Durable with the next sync, before the bytes written in the file's place.
        self.dir_dirty.set(true);
        Ok(())
    }

    fn dir_bytes(&self) -> u64 {
        std::fs::metadata(&self.dir)
            .map(|m| m.len())
            .unwrap_or(4096)
    }
}

#[derive(Debug, Clone, Default)]
struct MemFile {
    data: Vec<u8>,
    synced: usize,
    durable: bool,
}

/// Files in memory, with simulated power cuts.
#[derive(Debug, Default)]
pub struct MemBackend {
    files: RefCell<BTreeMap<String, MemFile>>,
    /// Every write fails while set (a full disk).
    pub fail_writes: std::cell::Cell<bool>,
    /// Every sync fails while set (a card that reports an I/O error).
    pub fail_syncs: std::cell::Cell<bool>,
}

impl MemBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// A power cut: every file loses what was written since its last sync, except that the
    /// first `torn` bytes of that unsynced tail survive (a torn write); files never synced vanish.
    pub fn power_cut(&self, torn: usize) {
        let mut files = self.files.borrow_mut();
        files.retain(|_, f| f.durable);
        for f in files.values_mut() {
            let keep = (f.synced + torn).min(f.data.len());
            f.data.truncate(keep);
            f.synced = keep;
        }
    }

    /// Direct access for corruption tests.
    pub fn corrupt(&self, name: &str, f: impl FnOnce(&mut Vec<u8>)) {
        if let Some(file) = self.files.borrow_mut().get_mut(name) {
            f(&mut file.data);
            file.synced = file.synced.min(file.data.len());
        }
    }

    /// Total bytes of all files.
    pub fn total_bytes(&self) -> u64 {
        self.files
            .borrow()
            .values()
            .map(|f| f.data.len() as u64)
            .sum()
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{name}: no such file"))
}

impl Backend for MemBackend {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.files.borrow().keys().cloned().collect())
    }

    fn len(&self, name: &str) -> io::Result<u64> {
        self.files
            .borrow()
            .get(name)
            .map(|f| f.data.len() as u64)
            .ok_or_else(|| not_found(name))
    }

    fn read_at(&self, name: &str, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        let files = self.files.borrow();
        let f = files.get(name).ok_or_else(|| not_found(name))?;
        let off = off.min(f.data.len() as u64) as usize;
        let n = buf.len().min(f.data.len() - off);
        buf[..n].copy_from_slice(&f.data[off..off + n]);
        Ok(n)
    }

    fn append(&self, name: &str, data: &[u8]) -> io::Result<()> {
        if self.fail_writes.get() {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device",
            ));
        }
        self.files
            .borrow_mut()
            .entry(name.to_owned())
            .or_default()
            .data
            .extend_from_slice(data);
        Ok(())
    }

    fn sync(&self, name: &str) -> io::Result<()> {
        if self.fail_syncs.get() {
            return Err(io::Error::other("input/output error"));
        }
        let mut files = self.files.borrow_mut();
        let f = files.get_mut(name).ok_or_else(|| not_found(name))?;
        f.synced = f.data.len();
        f.durable = true;
        Ok(())
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let mut files = self.files.borrow_mut();
        let f = files.get_mut(name).ok_or_else(|| not_found(name))?;
        f.data.truncate(len as usize);
        f.synced = f.synced.min(f.data.len());
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.files
            .borrow_mut()
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| not_found(name))
    }

    fn dir_bytes(&self) -> u64 {
        0
    }
}

/// A shared backend is a backend (tests reopen a store on the same `MemBackend`).
impl<B: Backend + ?Sized> Backend for std::rc::Rc<B> {
    fn list(&self) -> io::Result<Vec<String>> {
        (**self).list()
    }
    fn len(&self, name: &str) -> io::Result<u64> {
        (**self).len(name)
    }
    fn read_at(&self, name: &str, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_at(name, off, buf)
    }
    fn append(&self, name: &str, data: &[u8]) -> io::Result<()> {
        (**self).append(name, data)
    }
    fn sync(&self, name: &str) -> io::Result<()> {
        (**self).sync(name)
    }
    fn sync_handle(&self, name: &str) -> io::Result<Vec<File>> {
        (**self).sync_handle(name)
    }
    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        (**self).truncate(name, len)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        (**self).remove(name)
    }
    fn dir_bytes(&self) -> u64 {
        (**self).dir_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_cut_loses_unsynced_bytes() {
        let b = MemBackend::new();
        b.append("a", b"hello").unwrap();
        b.sync("a").unwrap();
        b.append("a", b" world").unwrap();
        b.append("never", b"x").unwrap();
        b.power_cut(2);
        assert_eq!(b.read_exact_at("a", 0, 7).unwrap(), b"hello w");
        assert!(b.len("never").is_err());
    }

    #[test]
    fn files_round_trip() {
        let dir = std::env::temp_dir().join(format!("perch-backend-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let b = FileBackend::new(&dir).unwrap();
        b.append("f", b"abc").unwrap();
        b.append("f", b"def").unwrap();
        b.sync("f").unwrap();
        assert_eq!(b.len("f").unwrap(), 6);
        assert_eq!(b.read_exact_at("f", 2, 3).unwrap(), b"cde");
        b.truncate("f", 4).unwrap();
        assert_eq!(b.len("f").unwrap(), 4);
        assert_eq!(b.list().unwrap(), vec!["f".to_owned()]);
        b.remove("f").unwrap();
        assert!(b.list().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
