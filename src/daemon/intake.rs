//! Intake: finding files in the watched folders and claiming each one only once it is whole.
//!
//! inotify events (through `notify`) are hints, not truth. A file becomes a candidate on a
//! create, modify, close-write or moved-to event, or when a scan finds it (at start, on an
//! inotify queue overflow, in a newly created subfolder). A candidate is claimed when its
//! size, mtime and inode have not changed for the stability window, or sooner after a
//! close-write or a rename into place once it has settled (no change for [`SETTLE`]), and in
//! both cases only when no process still has it open for writing (as far as `/proc` shows
//! this user). A close-write is a hint, not proof: writers that append in rounds (FTP and SMB
//! servers, sync tools, `cat >>` loops) close the file after every round, so the daemon also
//! leaves a file that reads as truncated in place for `incomplete_grace` (see the service).
//!
//! Dotfiles and temp names (`*.part`, `*.tmp`, `~*`, `.syncthing.*`, ...) are never
//! candidates; symlinks are followed only when they point inside their watched folder.

use notify::{Event, EventKind, RecursiveMode, Watcher};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// After a close-write or a rename into place, how long a file must stay unchanged before it
/// is claimed (at most the stability window).
pub const SETTLE: Duration = Duration::from_millis(500);

/// Why a folder is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Originals dropped by people.
    Inbox,
    /// Files coming back to a rule (split-to-proxy's `exchange_in`: processed proxies).
    Return,
}

/// One watched folder.
#[derive(Debug, Clone)]
pub struct WatchRoot {
    pub rule: String,
    pub role: Role,
    pub dir: PathBuf,
    pub patterns: Vec<glob::Pattern>,
    /// Files the rule reads beside its images (normalise's caption `.txt`): neither claimed
    /// nor set aside.
    pub sidecars: Vec<glob::Pattern>,
}

/// What identifies a version of a file on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
}

impl FileStat {
    pub fn of(metadata: &std::fs::Metadata) -> FileStat {
        FileStat {
            size: metadata.len(),
            mtime_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
            inode: metadata.ino(),
        }
    }
}

/// A file that is ready to be processed.
#[derive(Debug, Clone)]
pub struct Claim {
    pub root: usize,
    pub path: PathBuf,
    pub stat: FileStat,
    /// Earlier attempts to claim this file that failed (unreadable, say).
    pub failures: u32,
    /// In an inbox, but matched by none of the rule's patterns: to be set aside, not run.
    pub unaccepted: bool,
}

#[derive(Debug)]
struct Candidate {
    root: usize,
    stat: FileStat,
    stable_since: Instant,
    /// A close-write or a rename into place was seen since the last change.
    complete_hint: bool,
    /// After a failed claim: not before this time (unless an event says the file changed).
    not_before: Option<Instant>,
    failures: u32,
    unaccepted: bool,
}

/// How the intake learns of new files: `[daemon] watch_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatchMode {
    /// inotify, unless a watched folder is on a network filesystem: then polling.
    #[default]
    Auto,
    /// inotify (this machine's writes only).
    Inotify,
    /// A scan of every watched folder each `poll_interval`: sees what other machines write
    /// into a shared folder, which inotify cannot.
    Poll,
}

impl std::str::FromStr for WatchMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(WatchMode::Auto),
            "inotify" => Ok(WatchMode::Inotify),
            "poll" => Ok(WatchMode::Poll),
            _ => Err(format!("'{text}': use auto, inotify or poll")),
        }
    }
}

/// The network filesystem a folder is on, by its `statfs` type, if it is on one: inotify
/// sees no change another machine makes there.
pub fn network_filesystem(dir: &Path) -> Option<&'static str> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statfs is plain old data; all zeroes is a valid value of it.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the path is NUL-terminated and `stat` is a valid struct to write into.
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    filesystem_name(stat.f_type as u64)
}

/// The network (or possibly remote) filesystems among `statfs` type numbers.
fn filesystem_name(kind: u64) -> Option<&'static str> {
    Some(match kind {
        0x6969 => "nfs",
        0x517B => "smb",
        0xFF53_4D42 => "cifs",
        0xFE53_4D42 => "smb2",
        0x00C3_6400 => "ceph",
        0x0102_1997 => "9p",
        0x5346_414F => "afs",
        0x7375_7245 => "coda",
        0x0BD0_0BD0 => "lustre",
        0x0116_1970 => "gfs2",
        0x7461_636F => "ocfs2",
        0x6573_5546 => "fuse (sshfs, glusterfs and other remote filesystems use it)",
        _ => return None,
    })
}

/// The watcher and the candidates waiting to be claimed.
pub struct Intake {
    roots: Vec<WatchRoot>,
    canonical_roots: Vec<PathBuf>,
    watcher: Option<notify::RecommendedWatcher>,
    candidates: HashMap<PathBuf, Candidate>,
    window: Duration,
    /// Candidates some process holds open for writing, logged once each.
    held_by_writer: HashSet<PathBuf>,
    /// New folders to scan once more: the watcher adds a new folder's watch only after it
    /// has delivered the event that announced the folder, so files created in between are
    /// seen by no event and by no first scan.
    rescan_soon: Vec<(usize, PathBuf, Instant)>,
    /// Special entries (FIFOs, sockets, devices, broken or escaping symlinks), logged once.
    special_logged: HashSet<PathBuf>,
    /// Polling instead of inotify: every watched folder is scanned this often.
    poll_every: Option<Duration>,
    next_scan: Instant,
}

/// How long after a new folder's first scan it is scanned again.
const NEW_FOLDER_RESCAN: Duration = Duration::from_millis(250);

/// Names that are never candidates: hidden files, editor and download temp files.
pub fn is_ignored_name(name: &str) -> bool {
    const TEMP_SUFFIXES: &[&str] = &[
        ".part",
        ".partial",
        ".tmp",
        ".temp",
        ".crdownload",
        ".download",
        ".swp",
        ".filepart",
        ".!qb",
    ];
    let lower = name.to_ascii_lowercase();
    name.starts_with('.')
        || name.starts_with('~')
        || TEMP_SUFFIXES.iter().any(|s| lower.ends_with(s))
}

impl Intake {
    /// Watches every root (events go to `on_event`) and then scans them, so nothing that
    /// arrives in between is missed. With `poll_every`, or when `mode` is auto and a root
    /// is on a network filesystem, no watcher is made: the roots are scanned that often.
    pub fn start(
        roots: Vec<WatchRoot>,
        window: Duration,
        mode: WatchMode,
        poll_interval: Duration,
        on_event: impl Fn(notify::Result<Event>) + Send + 'static,
    ) -> notify::Result<Intake> {
        for root in &roots {
            std::fs::create_dir_all(&root.dir).map_err(notify::Error::io)?;
        }
        let poll = match mode {
            WatchMode::Poll => {
                tracing::info!(
                    poll_interval = %crate::daemon::settings::format_duration(poll_interval),
                    "polling the watched folders (watch_mode = \"poll\")"
                );
                true
            }
            WatchMode::Inotify => false,
            WatchMode::Auto => match roots
                .iter()
                .find_map(|r| network_filesystem(&r.dir).map(|fs| (r, fs)))
            {
                Some((root, fs)) => {
                    tracing::info!(
                        folder = %root.dir.display(),
                        filesystem = fs,
                        poll_interval = %crate::daemon::settings::format_duration(poll_interval),
                        "a watched folder is on a network filesystem, where inotify misses other machines' writes: polling instead (watch_mode = \"inotify\" turns this off)"
                    );
                    true
                }
                None => false,
            },
        };
        let mut watcher = None;
        if !poll {
            let config = notify::Config::default().with_follow_symlinks(false);
            let mut w = notify::RecommendedWatcher::new(on_event, config)?;
            for root in &roots {
                w.watch(&root.dir, RecursiveMode::Recursive)
                    .map_err(|e| e.add_path(root.dir.clone()))?;
            }
            watcher = Some(w);
        }
        let canonical_roots = roots
            .iter()
            .map(|root| std::fs::canonicalize(&root.dir).unwrap_or(root.dir.clone()))
            .collect();
        let mut intake = Intake {
            poll_every: poll.then_some(poll_interval),
            next_scan: Instant::now() + poll_interval,
            roots,
            canonical_roots,
            watcher,
            candidates: HashMap::new(),
            window,
            held_by_writer: HashSet::new(),
            rescan_soon: Vec::new(),
            special_logged: HashSet::new(),
        };
        intake.rescan();
        Ok(intake)
    }

    /// An intake that watches nothing: on a host that another host's scanning serves.
    pub fn idle() -> Intake {
        Intake {
            roots: Vec::new(),
            canonical_roots: Vec::new(),
            watcher: None,
            candidates: HashMap::new(),
            window: Duration::ZERO,
            held_by_writer: HashSet::new(),
            rescan_soon: Vec::new(),
            special_logged: HashSet::new(),
            poll_every: None,
            next_scan: Instant::now(),
        }
    }

    /// Scanning every `poll_interval` instead of watching.
    pub fn polls(&self) -> bool {
        self.poll_every.is_some()
    }

    pub fn roots(&self) -> &[WatchRoot] {
        &self.roots
    }

    /// Stops watching (on shutdown); candidates are dropped.
    pub fn stop(&mut self) {
        self.watcher = None;
        self.candidates.clear();
    }

    /// A claim that failed (the file could not be read): the file is looked at again after
    /// `delay`, or as soon as an event says it changed.
    pub fn retry_claim(&mut self, claim: Claim, delay: Duration) {
        let now = Instant::now();
        let candidate = self.candidates.entry(claim.path).or_insert(Candidate {
            root: claim.root,
            stat: claim.stat,
            stable_since: now.checked_sub(self.window).unwrap_or(now),
            complete_hint: true,
            not_before: None,
            failures: 0,
            unaccepted: claim.unaccepted,
        });
        candidate.failures = claim.failures + 1;
        candidate.not_before = Some(now + delay);
    }

    /// Looks at `path` again as if an event had named it (the service asks this when a file
    /// it left waiting in place has changed).
    pub fn recheck(&mut self, path: &Path) {
        if let Some(root) = self.root_of(path) {
            self.consider(root, path, false, false);
        }
    }

    /// Files seen but not yet claimed.
    pub fn pending(&self) -> usize {
        self.candidates.len()
    }

    /// How soon `poll` should run again: soon while candidates wait, otherwise never.
    pub fn next_poll(&self) -> Option<Duration> {
        let scan = self
            .poll_every
            .map(|_| self.next_scan.saturating_duration_since(Instant::now()));
        if self.candidates.is_empty() && self.rescan_soon.is_empty() {
            scan
        } else {
            Some(scan.map_or(Duration::from_millis(100), |s| {
                s.min(Duration::from_millis(100))
            }))
        }
    }

    /// Scans every watched folder.
    pub fn rescan(&mut self) {
        for index in 0..self.roots.len() {
            let dir = self.roots[index].dir.clone();
            self.scan_dir(index, &dir, 0);
        }
    }

    fn root_of(&self, path: &Path) -> Option<usize> {
        self.roots
            .iter()
            .enumerate()
            .filter(|(_, r)| path.starts_with(&r.dir))
            .max_by_key(|(_, r)| r.dir.as_os_str().len())
            .map(|(i, _)| i)
    }

    fn scan_dir(&mut self, root: usize, dir: &Path, depth: usize) {
        if depth > 32 {
            return;
        }
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot scan folder");
                return;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name().to_string_lossy().into_owned();
            if file_type.is_dir() {
                if !name.starts_with('.') {
                    self.scan_dir(root, &path, depth + 1);
                }
            } else {
                self.consider(root, &path, false, true);
            }
        }
    }

    /// Makes `path` a candidate if its name and type qualify.
    fn consider(&mut self, root: usize, path: &Path, complete_hint: bool, from_scan: bool) {
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            return;
        };
        if is_ignored_name(&name) {
            return;
        }
        if let Some(what) = special_entry(path, &self.canonical_roots[root]) {
            // Never opened, never moved: said once, and listed by `darkroom status`.
            if self.special_logged.insert(path.to_path_buf()) {
                tracing::warn!(
                    entry = %path.display(),
                    what,
                    "left alone: not a file darkroom can read"
                );
            }
            return;
        }
        let spec = &self.roots[root];
        let unaccepted = !spec.patterns.iter().any(|p| p.matches(&name));
        if unaccepted
            && (spec.role != Role::Inbox || spec.sidecars.iter().any(|p| p.matches(&name)))
        {
            tracing::debug!(file = %path.display(), "not claimed: matches none of the rule's patterns");
            return;
        }
        let Some(metadata) = self.regular_file_metadata(root, path) else {
            return;
        };
        let stat = FileStat::of(&metadata);
        let now = Instant::now();
        let stable_since = if from_scan {
            // A file already there (found by a scan) is as stable as its mtime is old.
            let age = metadata
                .modified()
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .unwrap_or_default();
            now.checked_sub(age.min(self.window)).unwrap_or(now)
        } else {
            now
        };
        match self.candidates.get_mut(path) {
            Some(candidate) if candidate.stat == stat => {
                candidate.complete_hint |= complete_hint;
                // Something happened to the file (a chmod, say): a waiting retry goes now.
                candidate.not_before = None;
            }
            Some(candidate) => {
                candidate.stat = stat;
                candidate.stable_since = now;
                candidate.complete_hint = complete_hint;
            }
            None => {
                self.candidates.insert(
                    path.to_path_buf(),
                    Candidate {
                        root,
                        stat,
                        stable_since,
                        complete_hint,
                        not_before: None,
                        failures: 0,
                        unaccepted,
                    },
                );
            }
        }
    }

    /// The metadata of a regular file, following a symlink only when it stays inside its root.
    fn regular_file_metadata(&self, root: usize, path: &Path) -> Option<std::fs::Metadata> {
        let metadata = std::fs::symlink_metadata(path).ok()?;
        if metadata.file_type().is_symlink() {
            let target = std::fs::canonicalize(path).ok()?;
            if !target.starts_with(&self.canonical_roots[root]) {
                tracing::warn!(
                    link = %path.display(),
                    target = %target.display(),
                    "ignored: the symlink points outside the watched folder"
                );
                return None;
            }
            let metadata = std::fs::metadata(&target).ok()?;
            return metadata.is_file().then_some(metadata);
        }
        metadata.is_file().then_some(metadata)
    }

    /// Takes one inotify event (or error) into account.
    pub fn on_event(&mut self, event: notify::Result<Event>) {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(error = %e, "watcher error; rescanning the watched folders");
                self.rescan();
                return;
            }
        };
        if event.need_rescan() {
            tracing::warn!("inotify queue overflowed; rescanning the watched folders");
            self.rescan();
            return;
        }
        use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
        let complete_hint = matches!(
            event.kind,
            EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Modify(ModifyKind::Name(RenameMode::To))
        );
        let relevant = matches!(
            event.kind,
            EventKind::Create(_)
                | EventKind::Modify(ModifyKind::Data(_))
                | EventKind::Modify(ModifyKind::Any)
                | EventKind::Modify(ModifyKind::Name(RenameMode::To))
                | EventKind::Modify(ModifyKind::Name(RenameMode::Both))
                | EventKind::Modify(ModifyKind::Name(RenameMode::Any))
                | EventKind::Access(AccessKind::Close(AccessMode::Write))
        );
        if matches!(
            event.kind,
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From))
        ) {
            for path in &event.paths {
                self.candidates.remove(path);
            }
            return;
        }
        if !relevant {
            return;
        }
        for path in &event.paths {
            let Some(root) = self.root_of(path) else {
                continue;
            };
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.is_dir() => {
                    // A new (or moved-in) folder: its files may predate its watch.
                    let hidden = path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'));
                    if !hidden {
                        self.scan_dir(root, path, 1);
                        self.rescan_soon.push((
                            root,
                            path.clone(),
                            Instant::now() + NEW_FOLDER_RESCAN,
                        ));
                    }
                }
                Ok(_) => self.consider(root, path, complete_hint, false),
                Err(_) => {
                    self.candidates.remove(path);
                }
            }
        }
    }

    /// Re-examines candidates and returns those ready to be claimed.
    pub fn poll(&mut self) -> Vec<Claim> {
        let now = Instant::now();
        if let Some(every) = self.poll_every {
            if now >= self.next_scan {
                self.rescan();
                self.next_scan = now + every;
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.rescan_soon)
            .into_iter()
            .partition(|(_, _, at)| *at <= now);
        self.rescan_soon = later;
        for (root, dir, _) in due {
            self.scan_dir(root, &dir, 1);
        }
        let mut eligible = Vec::new();
        let mut gone = Vec::new();
        for (path, candidate) in self.candidates.iter_mut() {
            let Ok(metadata) = std::fs::metadata(path) else {
                gone.push(path.clone());
                continue;
            };
            if candidate.not_before.is_some_and(|t| now < t) {
                continue;
            }
            let stat = FileStat::of(&metadata);
            if stat != candidate.stat {
                candidate.stat = stat;
                candidate.stable_since = now;
                candidate.complete_hint = false;
                continue;
            }
            let unchanged_for = now.duration_since(candidate.stable_since);
            // A file no rule takes is set aside only after the whole window.
            let settled = candidate.complete_hint
                && !candidate.unaccepted
                && unchanged_for >= SETTLE.min(self.window);
            if settled || unchanged_for >= self.window {
                eligible.push(path.clone());
            }
        }
        for path in gone {
            self.candidates.remove(&path);
        }
        if eligible.is_empty() {
            return Vec::new();
        }
        let writers = open_for_writing(&eligible);
        let mut claims = Vec::new();
        for path in eligible {
            if writers.contains(&path) {
                if self.held_by_writer.insert(path.clone()) {
                    tracing::debug!(file = %path.display(), "waiting: still open for writing");
                }
                continue;
            }
            self.held_by_writer.remove(&path);
            if let Some(candidate) = self.candidates.remove(&path) {
                claims.push(Claim {
                    root: candidate.root,
                    path,
                    stat: candidate.stat,
                    failures: candidate.failures,
                    unaccepted: candidate.unaccepted,
                });
            }
        }
        claims
    }
}

/// What a special entry is (a FIFO, a socket, a device, or a symlink that is dangling, loops
/// or leads out of `canonical_root`), or `None` for a plain file, a folder, or a symlink to a
/// file inside the root. Reads only metadata: nothing is opened.
pub fn special_entry(path: &Path, canonical_root: &Path) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::symlink_metadata(path).ok()?.file_type();
    if kind.is_fifo() {
        return Some("a FIFO (named pipe)");
    }
    if kind.is_socket() {
        return Some("a socket");
    }
    if kind.is_block_device() || kind.is_char_device() {
        return Some("a device");
    }
    if !kind.is_symlink() {
        return None;
    }
    match std::fs::canonicalize(path) {
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Some("a symlink loop"),
        Err(_) => Some("a dangling symlink"),
        Ok(target) if !target.starts_with(canonical_root) => {
            Some("the symlink points outside the watched folder")
        }
        Ok(target) => match std::fs::metadata(&target) {
            Ok(m) if m.is_file() || m.is_dir() => None,
            Ok(_) => Some("a symlink to a special file"),
            Err(_) => Some("a dangling symlink"),
        },
    }
}

/// The special entries under `dir` (see [`special_entry`]), for `darkroom status`.
pub fn special_entries(dir: &Path) -> Vec<(PathBuf, &'static str)> {
    let root = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut found = Vec::new();
    let mut folders = vec![(dir.to_path_buf(), 0)];
    while let Some((folder, depth)) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if let Some(what) = special_entry(&path, &root) {
                found.push((path, what));
            } else if depth < 32 && entry.file_type().is_ok_and(|t| t.is_dir()) {
                folders.push((path, depth + 1));
            }
        }
    }
    found.sort();
    found
}

/// Which of `paths` some process (visible in `/proc` to this user) has open for writing.
pub fn open_for_writing(paths: &[PathBuf]) -> HashSet<PathBuf> {
    let wanted: HashSet<PathBuf> = paths
        .iter()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let by_canonical: HashMap<PathBuf, PathBuf> = paths
        .iter()
        .map(|p| {
            (
                std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()),
                p.clone(),
            )
        })
        .collect();
    let mut found = HashSet::new();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return found;
    };
    let own_pid = std::process::id().to_string();
    for process in processes.flatten() {
        let pid = process.file_name();
        let pid = pid.to_string_lossy();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == own_pid {
            continue;
        }
        let fd_dir = process.path().join("fd");
        let Ok(fds) = std::fs::read_dir(&fd_dir) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if !wanted.contains(&target) {
                continue;
            }
            let info = process.path().join("fdinfo").join(fd.file_name());
            let writable = std::fs::read_to_string(info)
                .ok()
                .and_then(|text| {
                    text.lines()
                        .find_map(|l| l.strip_prefix("flags:"))
                        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                })
                .is_some_and(|flags| flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32);
            if writable {
                if let Some(original) = by_canonical.get(&target) {
                    found.insert(original.clone());
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_filesystems_are_told_apart_by_their_statfs_type() {
        assert_eq!(filesystem_name(0x6969), Some("nfs"));
        assert_eq!(filesystem_name(0xFF53_4D42), Some("cifs"));
        assert_eq!(filesystem_name(0xEF53), None, "ext4 is local");
        assert_eq!(filesystem_name(0x0102_1994), None, "tmpfs is local");
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(network_filesystem(dir.path()), None);
        assert_eq!("POLL".parse::<WatchMode>(), Ok(WatchMode::Poll));
        assert!("fanotify".parse::<WatchMode>().is_err());
    }

    #[test]
    fn a_queue_overflow_rescans_and_finds_files_no_event_announced() {
        let dir = tempfile::tempdir().unwrap();
        let roots = vec![WatchRoot {
            rule: "r".into(),
            role: Role::Inbox,
            dir: dir.path().to_path_buf(),
            patterns: vec![glob::Pattern::new("*.png").unwrap()],
            sidecars: Vec::new(),
        }];
        let mut intake = Intake::start(
            roots,
            Duration::from_secs(60),
            WatchMode::Inotify,
            Duration::from_secs(2),
            |_| {},
        )
        .unwrap();
        assert_eq!(intake.pending(), 0);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a.png"), b"x").unwrap();
        std::fs::write(dir.path().join("sub/.hidden.png"), b"x").unwrap();
        // The events above went to a closure that dropped them, as an overflow would.
        assert_eq!(intake.pending(), 0);
        let overflow = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        intake.on_event(Ok(overflow));
        assert_eq!(intake.pending(), 1);
        // Just written: not stable for 60 s, and no close-write hint went through.
        assert!(intake.poll().is_empty());
    }

    #[test]
    fn temp_and_hidden_names_are_ignored() {
        for name in [
            ".a.jpg",
            "~a.jpg",
            "a.jpg.part",
            "a.JPG.TMP",
            "a.crdownload",
            ".syncthing.a.jpg.tmp",
        ] {
            assert!(is_ignored_name(name), "{name}");
        }
        assert!(!is_ignored_name("a.jpg"));
    }

    #[test]
    fn a_file_open_for_writing_is_seen_and_a_closed_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec 3>>'{}'; echo x >&3; read line",
                path.display()
            ))
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !open_for_writing(std::slice::from_ref(&path)).contains(&path) {
            assert!(Instant::now() < deadline, "the writer was never seen");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(child.stdin.take());
        child.wait().unwrap();
        let _reader = std::fs::File::open(&path).unwrap();
        assert!(open_for_writing(&[path]).is_empty());
    }
}
