//! Keeping the resident code pages (the executable's and its shared libraries') to the code
//! that runs.
//!
//! Start-up (config parsing, store opening) touches code that the steady state never runs
//! again, and the kernel maps the executable in 64 KiB windows around each page fault. On a
//! board with a few hundred MB of RAM that is memory the resident set reports but Perch does not
//! need. A build linked against glibc also maps `libc.so`, `libm.so` and the loader: 2 MB
//! resident after start-up, of which the steady state keeps about 0.5 MB. [`trim_code_pages`]
//! asks the kernel to drop the read-only file pages of the executable and of those libraries
//! once start-up is done, and again after each flush (`MADV_DONTNEED`); the ones steady-state
//! code uses come back on their first use, from the page cache, at the cost of a few minor
//! faults. Writable mappings (data, heap) and anonymous ones are never touched. Linux only; a
//! failure is ignored (it only costs memory).

/// Drops the resident pages of the read-only file mappings (the executable, shared libraries)
/// that hold nothing but clean copies of their files.
pub fn trim_code_pages() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    for (start, len) in clean_file_mappings(&smaps) {
        drop_pages(start, len);
    }
}

/// The (start, length) of every mapping of a file in `smaps` that is not writable and has no
/// anonymous (copied-on-write) pages. A read-only mapping *with* such pages is RELRO data the
/// loader relocated before making it read-only: dropping its pages would lose the relocations.
/// Perch maps no data files (see `storage`), so the files are the executable and its libraries.
fn clean_file_mappings(smaps: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    let mut copied = false;
    let mut finish = |current: &mut Option<(usize, usize)>, copied: bool| {
        if let Some(m) = current.take() {
            if !copied {
                out.push(m);
            }
        }
    };
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            finish(&mut current, copied);
            copied = false;
            let mut f = line.split_whitespace();
            let perms = f.nth(1).unwrap_or("");
            let path = f.nth(3).unwrap_or("");
            if path.starts_with('/') && !perms.contains('w') {
                if let (Ok(s), Ok(e)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    current = Some((s, e - s));
                }
            }
            continue;
        }
        let mut f = line.split_whitespace();
        // Copied-on-write pages are anonymous while resident and counted in `Swap:` once swapped
        // out (dropping the mapping's pages would drop their swap entries too). (`Private_Dirty`
        // alone is no sign: a binary just written by the linker has dirty page-cache pages that
        // are still the file's bytes.)
        if let (Some("Anonymous:" | "Swap:"), Some(kb)) = (f.next(), f.next()) {
            if kb != "0" {
                copied = true;
            }
        }
    }
    finish(&mut current, copied);
    out
}

#[allow(unsafe_code)]
fn drop_pages(start: usize, len: usize) {
    // SAFETY: `start..start+len` is a whole mapping of a file (the executable or a library), listed by
    // the kernel in /proc/self/smaps, not writable, and without a single anonymous (copied-on-write)
    // page: every resident page is a clean copy of the file, so dropping it discards nothing and
    // the next access reads the same bytes back. Nothing is unmapped, so no reference dangles.
    unsafe {
        let _ = rustix::mm::madvise(
            start as *mut core::ffi::c_void,
            len,
            rustix::mm::Advice::LinuxDontNeed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relocated_read_only_data_is_left_alone() {
        let smaps = "\
5000-6000 r--p 00000000 08:01 42 /bin/perch
Rss:                   4 kB
Anonymous:             0 kB
6000-8000 r-xp 00001000 08:01 42 /bin/perch
Anonymous:             0 kB
8000-9000 r--p 00003000 08:01 42 /bin/perch
Private_Dirty:         4 kB
Anonymous:             4 kB
c000-d000 r--p 00005000 08:01 42 /bin/perch
Private_Dirty:         4 kB
Anonymous:             0 kB
Swap:                  0 kB
a000-b000 r--p 00006000 08:01 42 /bin/perch
Anonymous:             0 kB
Swap:                  4 kB
9000-a000 rw-p 00004000 08:01 42 /bin/perch
Anonymous:             4 kB
b000-c000 r-xp 00000000 08:01 43 /lib/libc.so
Anonymous:             0 kB
d000-e000 r--p 00000000 00:00 0 [vvar]
Anonymous:             0 kB
e000-f000 r--p 00000000 00:00 0
Anonymous:             0 kB
";
        assert_eq!(
            clean_file_mappings(smaps),
            vec![
                (0x5000, 0x1000),
                (0x6000, 0x2000),
                (0xc000, 0x1000),
                (0xb000, 0x1000)
            ]
        );
    }

    #[test]
    fn trimming_finds_the_code_and_the_code_still_runs() {
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
            return; // no /proc: nothing to trim
        };
        // At least the text mapping qualifies (the memory effect is measured by the
        // live-footprint benchmark, not here: other tests fault pages in meanwhile).
        assert!(!clean_file_mappings(&smaps).is_empty());
        trim_code_pages();
        // Code and read-only data work on as before (their pages fault back in).
        let v: Vec<u64> = (0..1000).map(|i| i * i).collect();
        assert_eq!(v[999], 998_001);
        assert_eq!(format!("{:?}", Some("relocated")), "Some(\"relocated\")");
    }
}
