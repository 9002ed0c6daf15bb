//! Gives back the binary's start-up pages once the proxy serves.
//!
//! The binary holds ~24 MB of code (Cranelift to compile policies, the
//! TLS, Redis, DNS and OCI clients, the config checker) and ~7 MB of
//! constants. Starting touches ~11 MiB of them and the kernel keeps them
//! mapped, though serving uses ~4 MiB (BENCHMARKS.md, "Memory"). Once the
//! listeners are up the executable's clean mappings are unmapped with
//! `MADV_DONTNEED`: the pages stay in the page cache, where the kernel
//! reclaims them first when memory is short, and the request path faults
//! back in what it uses from there. (`MADV_PAGEOUT` would reclaim them at
//! once, but it also evicts from the page cache what another proxy from
//! the same binary faults in again.) A mapping holding private pages (the
//! relocated read-only data, `.data`) is left alone: only there could
//! dropping a page lose what was written to it. It is done once: a
//! reload or a swap that compiles leaves the compiler's pages mapped, as
//! giving back then would fault the request path in again while it serves.
//! `[server] release-startup-pages = false` turns it off.

use std::io;

/// What one release did.
#[derive(Debug, PartialEq, Eq)]
pub struct Released {
    /// Mappings of the executable handed back.
    pub mappings: usize,
    /// Their resident bytes just before.
    pub resident: u64,
}

/// A mapping of the executable that holds only clean file pages.
#[derive(Debug, PartialEq, Eq)]
struct Clean {
    start: usize,
    len: usize,
    rss: u64,
}

/// Hands back the executable's clean pages (Linux 5.4 or later).
pub fn release() -> io::Result<Released> {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata("/proc/self/exe")?.ino();
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = Released {
        mappings: 0,
        resident: 0,
    };
    for m in clean_mappings(&smaps, inode) {
        advise(&m, libc::MADV_DONTNEED)?;
        released.mappings += 1;
        released.resident += m.rss;
    }
    Ok(released)
}

fn advise(m: &Clean, advice: libc::c_int) -> io::Result<()> {
    // SAFETY: the range is a whole mapping of this process's own
    // executable that is not writable and holds no private page, so
    // neither advice loses anything: every page is read back from the
    // file on its next use.
    match unsafe { libc::madvise(m.start as *mut libc::c_void, m.len, advice) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Releases, and says what it did in the log.
pub fn release_and_log(when: &str) {
    match release() {
        Ok(r) => tracing::info!(
            "gave back the binary's pages after {when}: {} mapping(s), {:.1} MiB resident before",
            r.mappings,
            r.resident as f64 / (1024.0 * 1024.0)
        ),
        Err(e) => tracing::debug!("cannot give back the binary's pages after {when}: {e}"),
    }
}

/// The mappings of file `inode` in `smaps` that are not writable and hold
/// no anonymous (private, written) pages.
fn clean_mappings(smaps: &str, inode: u64) -> Vec<Clean> {
    let mut out: Vec<Clean> = Vec::new();
    // Whether `out`'s last entry is the mapping being read.
    let mut open = false;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(first), second) = (fields.next(), fields.next()) else {
            continue;
        };
        if let Some((start, end)) = range(first) {
            // A mapping's header: `start-end perms offset dev inode path`.
            let perms = second.unwrap_or("");
            let ino = fields.nth(2).and_then(|i| i.parse::<u64>().ok());
            open = ino == Some(inode) && !perms.contains('w') && end > start;
            if open {
                out.push(Clean {
                    start,
                    len: end - start,
                    rss: 0,
                });
            }
            continue;
        }
        if !open {
            continue;
        }
        let kb = second.and_then(|v| v.parse::<u64>().ok());
        match (first, out.last_mut()) {
            ("Rss:", Some(m)) => m.rss = kb.unwrap_or(0) * 1024,
            ("Anonymous:", Some(_)) if kb != Some(0) => {
                out.pop();
                open = false;
            }
            _ => {}
        }
    }
    out
}

/// `start-end` in hex, as a mapping's header begins.
fn range(field: &str) -> Option<(usize, usize)> {
    let (start, end) = field.split_once('-')?;
    Some((
        usize::from_str_radix(start, 16).ok()?,
        usize::from_str_radix(end, 16).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
563363166000-56336381b000 r--p 00000000 fd:01 4242 /usr/bin/switchyard
Size:               6868 kB
Rss:                2728 kB
Anonymous:             0 kB
56336381b000-563364fff000 r-xp 006b4000 fd:01 4242 /usr/bin/switchyard
Size:              24464 kB
Rss:                8652 kB
Anonymous:             0 kB
563364fff000-5633650a5000 r--p 01e97000 fd:01 4242 /usr/bin/switchyard
Size:                664 kB
Rss:                 664 kB
Anonymous:           664 kB
5633650a5000-5633650ad000 rw-p 01f3c000 fd:01 4242 /usr/bin/switchyard
Size:                 32 kB
Rss:                  32 kB
Anonymous:            32 kB
7f0000000000-7f0000200000 r-xp 00000000 fd:01 777 /usr/lib/x86_64-linux-gnu/libc.so.6
Size:               2048 kB
Rss:                1024 kB
Anonymous:             0 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
Rss:                  16 kB
Anonymous:            16 kB
";

    #[test]
    fn only_the_executables_clean_read_only_mappings_are_released() {
        let clean = clean_mappings(SMAPS, 4242);
        assert_eq!(
            clean,
            vec![
                Clean {
                    start: 0x563363166000,
                    len: 0x56336381b000 - 0x563363166000,
                    rss: 2728 * 1024,
                },
                Clean {
                    start: 0x56336381b000,
                    len: 0x563364fff000 - 0x56336381b000,
                    rss: 8652 * 1024,
                },
            ]
        );
    }

    #[test]
    fn another_files_mappings_and_anonymous_memory_are_left_alone() {
        assert_eq!(clean_mappings(SMAPS, 777).len(), 1);
        assert!(clean_mappings(SMAPS, 1).is_empty());
        assert!(clean_mappings("", 4242).is_empty());
    }

    /// 256 KiB of constants in the binary's read-only data, each byte a
    /// function of its offset.
    static CONSTANTS: [u8; 256 * 1024] = {
        let mut t = [0u8; 256 * 1024];
        let mut i = 0;
        while i < t.len() {
            t[i] = (i.wrapping_mul(31) ^ (i >> 9)) as u8;
            i += 1;
        }
        t
    };

    /// Pointers into them: in a position-independent binary these are
    /// written at load (relocated read-only data, private pages), which
    /// must not be given back.
    static POINTERS: [&u8; 8] = [
        &CONSTANTS[0],
        &CONSTANTS[1 << 15],
        &CONSTANTS[2 << 15],
        &CONSTANTS[3 << 15],
        &CONSTANTS[4 << 15],
        &CONSTANTS[5 << 15],
        &CONSTANTS[6 << 15],
        &CONSTANTS[7 << 15],
    ];

    fn sum(bytes: &[u8]) -> u64 {
        bytes
            .iter()
            .enumerate()
            .map(|(i, &b)| (i as u64 + 1) * u64::from(b))
            .sum()
    }

    #[test]
    fn releasing_this_test_binarys_pages_loses_nothing() {
        let constants = std::hint::black_box(&CONSTANTS[..]);
        let before = sum(constants);
        let released = release().expect("madvise(MADV_DONTNEED)");
        assert!(released.mappings >= 1, "{released:?}");
        assert!(released.resident > 0, "{released:?}");
        // Constants (and the code running now) paged out are read back
        // from the file as they were.
        assert_eq!(sum(std::hint::black_box(constants)), before);
        for (i, &b) in constants.iter().enumerate().step_by(4093) {
            assert_eq!(b, (i.wrapping_mul(31) ^ (i >> 9)) as u8, "byte {i}");
        }
        // Relocated pointers still point where they did.
        for (k, p) in std::hint::black_box(&POINTERS).iter().enumerate() {
            assert!(std::ptr::eq(*p, &CONSTANTS[k << 15]), "pointer {k}");
        }
    }
}
