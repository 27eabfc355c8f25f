//! What the machine has to spare: free disk under a folder and available memory.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Bytes available to this user on the file system holding `dir`.
pub fn free_disk_bytes(dir: &Path) -> std::io::Result<u64> {
    let c_path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs is a plain C struct of integers, for which all-zero bytes are valid.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a properly sized out-struct.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// `MemAvailable` from /proc/meminfo, when the kernel reports it.
pub fn available_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// This process's resident memory now and its peak since start (or since
/// [`reset_peak_resident`]), in bytes, from /proc/self/status.
pub fn resident_bytes() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Starts the peak of [`resident_bytes`] again from the current resident size (Linux 4.0+);
/// false when the kernel refuses.
pub fn reset_peak_resident() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Lets glibc's malloc keep large freed buffers for the next image instead of handing them
/// back. By default a block over 32 MiB (a decoded 12-MP photo is 36 MB) is mapped fresh and
/// unmapped when freed, so every image of a batch pays a page fault per 4 KiB of its buffers
/// again; with the mapping threshold raised and trimming off, the memory of one image is
/// reused by the next (normalise benchmark: about 8% less CPU time, README "Speed").
/// For one-shot batch commands only: a long-running service should give the memory of a
/// large image back. Returns false where the allocator refused (or is not glibc's).
pub fn reuse_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const LARGE: libc::c_int = 1 << 30;
        // SAFETY: mallopt only changes allocator parameters; any value is handled by glibc.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, LARGE) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// A zero-filled buffer of `len` values whose memory the kernel backs with 2-MiB pages where
/// it can (transparent huge pages, in the `madvise` mode most distributions ship). A buffer of
/// tens of MB written once (a decoder's coefficients and planes) otherwise costs a page fault
/// per 4 KiB on first touch, a large part of a one-shot command's time on a VM.
pub fn zeroed_large<T: Copy + Default>(len: usize) -> Vec<T> {
    let buffer = vec![T::default(); len];
    advise_huge_pages(
        buffer.as_ptr().cast(),
        std::mem::size_of_val(buffer.as_slice()),
    );
    buffer
}

/// An empty `Vec` with room for `capacity` values, its memory advised as in [`zeroed_large`].
pub fn with_capacity_large<T>(capacity: usize) -> Vec<T> {
    let buffer: Vec<T> = Vec::with_capacity(capacity);
    advise_huge_pages(
        buffer.as_ptr().cast(),
        buffer.capacity() * std::mem::size_of::<T>(),
    );
    buffer
}

/// Asks for huge pages on the 2-MiB-aligned part of the `bytes` at `start` (advice only: the
/// contents do not change, and a refusal or an older kernel is harmless).
fn advise_huge_pages(start: *const u8, bytes: usize) {
    const HUGE: usize = 2 << 20;
    if bytes < HUGE {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        let first = (start as usize).next_multiple_of(HUGE);
        let end = (start as usize + bytes) / HUGE * HUGE;
        if end > first {
            // SAFETY: the range lies inside one live allocation (the caller's buffer);
            // MADV_HUGEPAGE changes only how the kernel backs it.
            unsafe {
                libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
            }
        }
    }
}

/// Formats bytes as megabytes with one decimal, as the disk-space error shows them.
pub fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_are_zeroed_and_sized_as_asked() {
        let zeros: Vec<i16> = zeroed_large(5 << 20);
        assert_eq!(zeros.len(), 5 << 20);
        assert!(zeros.iter().all(|&v| v == 0));
        let empty: Vec<u8> = with_capacity_large(6 << 20);
        assert!(empty.is_empty() && empty.capacity() >= 6 << 20);
        let small: Vec<u8> = zeroed_large(10);
        assert_eq!(small, [0; 10]);
    }

    #[test]
    fn reports_some_free_space_for_the_temp_dir() {
        assert!(free_disk_bytes(&std::env::temp_dir()).unwrap() > 0);
    }

    #[test]
    fn the_peak_resident_size_follows_a_large_allocation() {
        let (before, _) = resident_bytes().unwrap();
        assert!(reset_peak_resident());
        let block = std::hint::black_box(vec![1u8; 64 << 20]);
        let (_, peak) = resident_bytes().unwrap();
        assert!(peak >= before + (60 << 20), "{before} -> {peak}");
        drop(std::hint::black_box(block));
    }

    #[test]
    fn megabytes_are_decimal() {
        assert_eq!(megabytes(150_300_000), "150.3 MB");
    }
}
