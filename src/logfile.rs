//! Log files (SPEC 15): every instance's lines appended to its file, rotated
//! by size, reopened on request, and never a reason to stop or to stall.
//!
//! The loop hands each line to [`LogFiles::push`], which only appends it to
//! the file's buffer; [`LogFiles::flush`] writes every buffer once per loop
//! turn (and a buffer past 1 MiB at once), so a flood costs one `write(2)`
//! per file per turn, as brood's own stdout does.
//!
//! A file that cannot be opened, rotated or written (a full disk, a
//! missing permission) is reported once per outage (one error line), its
//! lines are dropped and counted, and it is tried again on a later line, at
//! most once a second ([`RETRY`], time passed in). When a write works again
//! the count comes back as a [`Dropped`] report (the `log_dropped` event);
//! at the end, so does what is still dropped. A line is in a file whole or
//! not at all: a write cut short by a full disk is truncated back to the last
//! whole line.
//!
//! Nothing here knows about the loop: each piece can be tested with a temp
//! dir and a made-up clock.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::LogSpec;
use crate::core::ids::ProgramId;

/// After a failure, lines are dropped without a syscall for this long.
pub const RETRY: Duration = Duration::from_secs(1);

/// A buffer this full is written at once, not at the end of the turn.
const FLUSH_AT: usize = 1024 * 1024;

/// Mode of a file brood creates (group may read: an `adm` group, a log
/// shipper); directories brood makes get the matching 0750.
const FILE_MODE: u32 = 0o640;
const DIR_MODE: u32 = 0o750;

/// Lines a file dropped while it could not be written: the `log_dropped`
/// event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    pub label: String,
    pub file: PathBuf,
    pub lines: u64,
}

/// A file that failed: when to try again, and what was lost meanwhile.
#[derive(Debug)]
struct Outage {
    retry_at: Instant,
    dropped: u64,
}

/// One log file, shared by every instance whose path names it.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    /// The instance that first wrote to it: the label of its reports.
    label: String,
    max_size: u64,
    keep: u32,
    timestamps: bool,
    file: Option<File>,
    /// Bytes in the file plus bytes buffered.
    size: u64,
    buf: Vec<u8>,
    outage: Option<Outage>,
}

type Failure = (&'static str, io::Error, u64);

impl LogFile {
    pub fn new(path: PathBuf, label: &str, spec: &LogSpec) -> LogFile {
        LogFile {
            path,
            label: label.to_string(),
            max_size: spec.max_size,
            keep: spec.keep,
            timestamps: spec.timestamps,
            file: None,
            size: 0,
            buf: Vec::new(),
            outage: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Buffer one line (after `stamp`, when the file wants timestamps).
    /// During an outage the line is only counted, until the retry time;
    /// then it is written at once, to learn whether the file works again.
    pub fn push(&mut self, line: &[u8], clock: &mut Clock) -> Option<Dropped> {
        let now = clock.now;
        if let Some(o) = self.outage.as_mut() {
            if now < o.retry_at {
                o.dropped += 1;
                return None;
            }
        }
        let stamp: &[u8] = if self.timestamps { clock.stamp() } else { b"" };
        let len = stamp.len() + line.len() + 1;
        if let Err((what, e, lost)) = self.make_room(len as u64) {
            self.fail(what, e, now, lost + 1);
            return None;
        }
        self.buf.reserve(len);
        self.buf.extend_from_slice(stamp);
        self.buf.extend_from_slice(line);
        self.buf.push(b'\n');
        self.size += len as u64;
        if self.outage.is_some() || self.buf.len() >= FLUSH_AT {
            return self.flush(now);
        }
        None
    }

    /// Whether `len` bytes of whole lines can be buffered as they are: no
    /// timestamps to put before each, no outage, no rotation among them.
    fn takes_whole(&self, len: usize) -> bool {
        !self.timestamps
            && self.outage.is_none()
            && (self.max_size == 0 || self.size + len as u64 <= self.max_size)
    }

    /// Buffer `lines` whole lines lying end to end in `block`, each with its
    /// newline, in one copy. Only when [`LogFile::takes_whole`] said so.
    fn push_block(&mut self, block: &[u8], lines: u32, now: Instant) -> Option<Dropped> {
        if let Err((what, e, lost)) = self.make_room(block.len() as u64) {
            self.fail(what, e, now, lost + u64::from(lines));
            return None;
        }
        self.buf.extend_from_slice(block);
        self.size += block.len() as u64;
        if self.buf.len() >= FLUSH_AT {
            return self.flush(now);
        }
        None
    }

    /// The file open, and rotated first if this line would take it past
    /// `max_size`. A line longer than `max_size` goes whole into a fresh
    /// file.
    fn make_room(&mut self, len: u64) -> Result<(), Failure> {
        if self.file.is_none() {
            self.open().map_err(|e| ("cannot open", e, 0))?;
        }
        if self.max_size > 0 && self.size > 0 && self.size + len > self.max_size {
            self.write_buf().map_err(|(e, lost)| ("cannot write", e, lost))?;
            self.rotate().map_err(|e| ("cannot rotate", e, 0))?;
        }
        Ok(())
    }

    /// Write what is buffered. After an outage, the first write that works
    /// returns the count of lines dropped meanwhile.
    pub fn flush(&mut self, now: Instant) -> Option<Dropped> {
        if self.buf.is_empty() {
            return None;
        }
        match self.write_buf() {
            Ok(()) => self.outage.take().filter(|o| o.dropped > 0).map(|o| Dropped {
                label: self.label.clone(),
                file: self.path.clone(),
                lines: o.dropped,
            }),
            Err((e, lost)) => {
                self.fail("cannot write", e, now, lost);
                None
            }
        }
    }

    /// Close and open the file again (after logrotate moved it away), and
    /// try a failed one again now.
    pub fn reopen(&mut self, now: Instant) -> Option<Dropped> {
        let report = self.flush(now);
        self.file = None;
        match self.open() {
            Ok(()) => {
                if let Some(o) = self.outage.as_mut() {
                    o.retry_at = now;
                }
            }
            Err(e) => self.fail("cannot open", e, now, 0),
        }
        report
    }

    /// The lines still dropped (at the end of the run).
    pub fn still_dropped(&self) -> Option<Dropped> {
        self.outage.as_ref().filter(|o| o.dropped > 0).map(|o| Dropped {
            label: self.label.clone(),
            file: self.path.clone(),
            lines: o.dropped,
        })
    }

    fn fail(&mut self, what: &str, e: io::Error, now: Instant, lost: u64) {
        match self.outage.as_mut() {
            Some(o) => {
                o.dropped += lost;
                o.retry_at = now + RETRY;
            }
            None => {
                log::error!(
                    "log file {}: {what}: {e}; dropping its lines until it works again",
                    self.path.display()
                );
                self.outage = Some(Outage {
                    retry_at: now + RETRY,
                    dropped: lost,
                });
            }
        }
    }

    /// Create missing directories, then open for appending: created 0640
    /// (whatever the umask), an existing file kept as it is. O_NONBLOCK so
    /// that a FIFO in its place fails instead of stalling the loop.
    fn open(&mut self) -> io::Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)?;
            }
        }
        let mut options = OpenOptions::new();
        options.append(true).custom_flags(libc::O_NONBLOCK);
        let file = match options.clone().create_new(true).mode(FILE_MODE).open(&self.path) {
            Ok(f) => {
                f.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
                f
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => options.open(&self.path)?,
            Err(e) => return Err(e),
        };
        self.size = file.metadata()?.len() + self.buf.len() as u64;
        self.file = Some(file);
        Ok(())
    }

    /// Write the whole buffer. On failure the file is cut back to its last
    /// whole line, and the lines not written are counted as lost.
    fn write_buf(&mut self) -> Result<(), (io::Error, u64)> {
        let mut written = 0;
        let result = match self.file.as_mut() {
            None => Err(io::Error::from(io::ErrorKind::NotFound)),
            Some(file) => loop {
                if written == self.buf.len() {
                    break Ok(());
                }
                match file.write(&self.buf[written..]) {
                    Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            },
        };
        if let Err(e) = result {
            let whole = memchr::memrchr(b'\n', &self.buf[..written]).map_or(0, |i| i + 1);
            let lost = memchr::memchr_iter(b'\n', &self.buf[whole..]).count() as u64;
            let partial = (written - whole) as u64;
            if let Some(file) = self.file.as_ref() {
                // Appended last, so the partial line is the file's tail.
                if partial > 0 {
                    if let Ok(meta) = file.metadata() {
                        let _ = file.set_len(meta.len().saturating_sub(partial));
                    }
                }
            }
            self.size = self.size.saturating_sub((self.buf.len() - whole) as u64);
            self.clear_buf();
            return Err((e, lost));
        }
        self.clear_buf();
        Ok(())
    }

    fn clear_buf(&mut self) {
        self.buf.clear();
        if self.buf.capacity() > 4 * FLUSH_AT {
            self.buf = Vec::new();
        }
    }

    /// `f` → `f.1` → ... → `f.KEEP` (the oldest replaced), then a new `f`.
    /// With `keep = 0` the file is truncated in place instead.
    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            if let Some(file) = self.file.as_ref() {
                file.set_len(0)?;
            }
            self.size = 0;
            return Ok(());
        }
        let ignore_missing = |r: io::Result<()>| match r {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        for i in (1..self.keep).rev() {
            ignore_missing(fs::rename(numbered(&self.path, i), numbered(&self.path, i + 1)))?;
        }
        ignore_missing(fs::rename(&self.path, numbered(&self.path, 1)))?;
        self.file = None;
        self.size = 0;
        self.open()
    }
}

/// `f.N`.
pub fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The time of one read: every line of it gets the same stamp, made once.
pub struct Clock {
    pub now: Instant,
    wall: SystemTime,
    stamp: Option<[u8; STAMP_LEN]>,
}

impl Clock {
    pub fn new(now: Instant, wall: SystemTime) -> Clock {
        Clock {
            now,
            wall,
            stamp: None,
        }
    }

    fn stamp(&mut self) -> &[u8] {
        let wall = self.wall;
        self.stamp.get_or_insert_with(|| rfc3339_utc(wall))
    }
}

/// `2026-12-03T18:56:32.123Z ` (with the space).
pub const STAMP_LEN: usize = 25;

/// UTC with milliseconds, as RFC 3339 writes it: one zone for every file
/// and every host, sortable as text, and no timezone database to read.
pub fn rfc3339_utc(t: SystemTime) -> [u8; STAMP_LEN] {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let digits = |out: &mut [u8], mut v: u64| {
        for b in out.iter_mut().rev() {
            *b = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    let mut s = *b"0000-00-00T00:00:00.000Z ";
    digits(&mut s[0..4], y.clamp(0, 9999) as u64);
    digits(&mut s[5..7], u64::from(m));
    digits(&mut s[8..10], u64::from(d));
    digits(&mut s[11..13], rem / 3600);
    digits(&mut s[14..16], rem % 3600 / 60);
    digits(&mut s[17..19], rem % 60);
    digits(&mut s[20..23], u64::from(since.subsec_millis()));
    s
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Every log file of a run: which instance writes where, and the buffers
/// waiting for the end of the turn.
#[derive(Default)]
pub struct LogFiles {
    specs: HashMap<ProgramId, (String, LogSpec)>,
    files: Vec<LogFile>,
    by_path: HashMap<PathBuf, usize>,
    by_instance: HashMap<(ProgramId, u64), usize>,
    /// Files with buffered lines (a file may be listed twice).
    dirty: Vec<usize>,
    reports: Vec<Dropped>,
}

impl LogFiles {
    /// The programs that have `log = {...}`: id, name and spec.
    pub fn new(specs: impl IntoIterator<Item = (ProgramId, String, LogSpec)>) -> LogFiles {
        LogFiles {
            specs: specs
                .into_iter()
                .map(|(id, name, spec)| (id, (name, spec)))
                .collect(),
            ..LogFiles::default()
        }
    }

    /// A reload gave `program` new settings: its instances find their
    /// file again from `spec` (None: no log file any more).
    pub fn set_spec(&mut self, program: ProgramId, name: String, spec: Option<LogSpec>) {
        match spec {
            Some(spec) => {
                self.specs.insert(program, (name, spec));
            }
            None => {
                self.specs.remove(&program);
            }
        }
        self.by_instance.retain(|(p, _), _| *p != program);
    }

    /// The file instance `n` of `program` writes to, if it has one; made
    /// (not yet opened) on first use. Instances whose paths are the same
    /// share one file.
    pub fn file_of(&mut self, program: ProgramId, n: u64, label: &str) -> Option<usize> {
        if self.specs.is_empty() {
            return None;
        }
        if let Some(i) = self.by_instance.get(&(program, n)) {
            return Some(*i);
        }
        let (name, spec) = self.specs.get(&program)?;
        let path = spec.path(name, n);
        let i = match self.by_path.get(&path) {
            Some(i) => *i,
            None => {
                self.files.push(LogFile::new(path.clone(), label, spec));
                self.by_path.insert(path, self.files.len() - 1);
                self.files.len() - 1
            }
        };
        self.by_instance.insert((program, n), i);
        Some(i)
    }

    pub fn push(&mut self, file: usize, line: &[u8], clock: &mut Clock) {
        let Some(f) = self.files.get_mut(file) else { return };
        let was_empty = f.buf.is_empty();
        if let Some(report) = f.push(line, clock) {
            self.reports.push(report);
        }
        if was_empty && !f.buf.is_empty() {
            self.dirty.push(file);
        }
    }

    /// [`LogFiles::push`] for `lines` whole lines lying end to end in
    /// `block`, each with its newline: one copy when the file takes them
    /// as they are, else line by line.
    pub fn push_lines(&mut self, file: usize, block: &[u8], lines: u32, clock: &mut Clock) {
        let Some(f) = self.files.get_mut(file) else { return };
        let was_empty = f.buf.is_empty();
        if f.takes_whole(block.len()) {
            if let Some(report) = f.push_block(block, lines, clock.now) {
                self.reports.push(report);
            }
        } else {
            for line in block.split_inclusive(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\n").unwrap_or(line);
                if let Some(report) = f.push(line, clock) {
                    self.reports.push(report);
                }
            }
        }
        if was_empty && !f.buf.is_empty() {
            self.dirty.push(file);
        }
    }

    /// Whether some buffer waits to be written.
    pub fn dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Write every buffer (when the loop runs out of work).
    pub fn flush(&mut self, now: Instant) {
        for i in std::mem::take(&mut self.dirty) {
            if let Some(report) = self.files.get_mut(i).and_then(|f| f.flush(now)) {
                self.reports.push(report);
            }
        }
    }

    /// `brood ctl reopen`: every file closed and opened again. Returns how
    /// many there are.
    pub fn reopen_all(&mut self, now: Instant) -> usize {
        self.dirty.clear();
        for f in &mut self.files {
            if let Some(report) = f.reopen(now) {
                self.reports.push(report);
            }
        }
        self.files.len()
    }

    /// Counts of dropped lines for files that work again.
    pub fn take_reports(&mut self) -> Vec<Dropped> {
        std::mem::take(&mut self.reports)
    }

    /// At the end: write what is buffered; then the reports, including the
    /// files that are still failing.
    pub fn finish(&mut self, now: Instant) -> Vec<Dropped> {
        self.flush(now);
        let mut reports = self.take_reports();
        reports.extend(self.files.iter().filter_map(LogFile::still_dropped));
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogTarget;

    struct Tmp(PathBuf);

    impl Tmp {
        fn new(name: &str) -> Tmp {
            let p = std::env::temp_dir().join(format!("brood-logfile-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            Tmp(p)
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn spec(target: LogTarget, max_size: u64, keep: u32) -> LogSpec {
        LogSpec {
            target,
            max_size,
            keep,
            timestamps: false,
        }
    }

    fn clock(now: Instant) -> Clock {
        Clock::new(now, SystemTime::now())
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap_or_default()
    }

    #[test]
    fn lines_are_buffered_until_flush_then_appended_whole() {
        let tmp = Tmp::new("append");
        let path = tmp.0.join("a/b/web.1.log");
        let mut f = LogFile::new(path.clone(), "web.1", &spec(LogTarget::File(path.clone()), 0, 0));
        let now = Instant::now();
        f.push(b"one", &mut clock(now));
        f.push(b"two", &mut clock(now));
        assert_eq!(read(&path), "", "nothing written before the flush");
        assert_eq!(f.flush(now), None);
        assert_eq!(read(&path), "one\ntwo\n");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let dir_mode = fs::metadata(tmp.0.join("a/b")).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o750);
    }

    #[test]
    fn rotation_keeps_keep_files_and_loses_no_line() {
        let tmp = Tmp::new("rotate");
        let path = tmp.0.join("r.log");
        // Each line is "line NN\n" = 8 bytes; 3 lines fit in 24 bytes.
        let mut f = LogFile::new(path.clone(), "r.1", &spec(LogTarget::File(path.clone()), 24, 2));
        let now = Instant::now();
        for i in 10..30 {
            f.push(format!("line {i}").as_bytes(), &mut clock(now));
        }
        f.flush(now);
        assert_eq!(read(&path), "line 28\nline 29\n");
        assert_eq!(read(&numbered(&path, 1)), "line 25\nline 26\nline 27\n");
        assert_eq!(read(&numbered(&path, 2)), "line 22\nline 23\nline 24\n");
        assert!(!numbered(&path, 3).exists());
    }

    #[test]
    fn a_line_longer_than_max_size_goes_whole_into_a_fresh_file() {
        let tmp = Tmp::new("long");
        let path = tmp.0.join("l.log");
        let mut f = LogFile::new(path.clone(), "l.1", &spec(LogTarget::File(path.clone()), 10, 1));
        let now = Instant::now();
        f.push(b"short", &mut clock(now));
        f.push(b"a line of more than ten bytes", &mut clock(now));
        f.flush(now);
        assert_eq!(read(&path), "a line of more than ten bytes\n");
        assert_eq!(read(&numbered(&path, 1)), "short\n");
    }

    #[test]
    fn keep_0_truncates_in_place() {
        let tmp = Tmp::new("keep0");
        let path = tmp.0.join("k.log");
        let mut f = LogFile::new(path.clone(), "k.1", &spec(LogTarget::File(path.clone()), 8, 0));
        let now = Instant::now();
        f.push(b"aaaaaaa", &mut clock(now));
        f.push(b"bbbbbbb", &mut clock(now));
        f.flush(now);
        assert_eq!(read(&path), "bbbbbbb\n");
        assert!(!numbered(&path, 1).exists());
    }

    #[test]
    fn an_unwritable_path_is_reported_once_counted_and_retried_at_most_once_a_second() {
        let tmp = Tmp::new("unwritable");
        let blocker = tmp.0.join("file");
        fs::write(&blocker, "").unwrap();
        // A path under a regular file can never be opened (ENOTDIR).
        let path = blocker.join("x.log");
        let mut f = LogFile::new(path.clone(), "x.1", &spec(LogTarget::File(path.clone()), 0, 0));
        let t0 = Instant::now();
        for _ in 0..5 {
            f.push(b"lost", &mut clock(t0));
        }
        assert_eq!(f.flush(t0), None);
        assert_eq!(f.outage.as_ref().map(|o| o.dropped), Some(5));
        // Fixed, but no retry before a second has passed.
        fs::remove_file(&blocker).unwrap();
        f.push(b"still lost", &mut clock(t0 + Duration::from_millis(500)));
        assert!(!path.exists());
        let report = {
            let mut c = clock(t0 + RETRY);
            f.push(b"back", &mut c)
        };
        assert_eq!(
            report,
            Some(Dropped {
                label: "x.1".into(),
                file: path.clone(),
                lines: 6
            })
        );
        assert_eq!(read(&path), "back\n");
        assert!(f.outage.is_none());
    }

    #[test]
    fn reopen_starts_a_new_file_after_the_old_one_was_moved() {
        let tmp = Tmp::new("reopen");
        let path = tmp.0.join("m.log");
        let mut files = LogFiles::new([(
            ProgramId(0),
            "m".to_string(),
            spec(LogTarget::Dir(tmp.0.clone()), 0, 0),
        )]);
        let i = files.file_of(ProgramId(0), 1, "m.1").unwrap();
        assert_eq!(files.files[i].path(), tmp.0.join("m.1.log"));
        let path = path.with_file_name("m.1.log");
        let now = Instant::now();
        files.push(i, b"old", &mut clock(now));
        files.flush(now);
        fs::rename(&path, tmp.0.join("moved")).unwrap();
        files.push(i, b"late", &mut clock(now));
        assert_eq!(files.reopen_all(now), 1);
        files.push(i, b"new", &mut clock(now));
        files.flush(now);
        assert_eq!(read(&tmp.0.join("moved")), "old\nlate\n");
        assert_eq!(read(&path), "new\n");
        assert_eq!(files.finish(now), []);
    }

    /// Blocks of whole lines end as the same files, rotations included, as
    /// the same lines pushed one by one.
    #[test]
    fn blocks_of_lines_write_what_lines_one_by_one_write() {
        let tmp = Tmp::new("blocks");
        let lines: Vec<String> = (0..40)
            .map(|i| format!("line {i:02}{}", "x".repeat(i % 5)))
            .collect();
        let run = |name: &str, blocks: bool| -> Vec<String> {
            let dir = tmp.0.join(name);
            let mut files = LogFiles::new([(
                ProgramId(0),
                "b".to_string(),
                spec(LogTarget::Dir(dir.clone()), 50, 3),
            )]);
            let i = files.file_of(ProgramId(0), 1, "b.1").unwrap();
            let now = Instant::now();
            for group in lines.chunks(7) {
                if blocks {
                    let block: String = group.iter().map(|l| format!("{l}\n")).collect();
                    files.push_lines(i, block.as_bytes(), group.len() as u32, &mut clock(now));
                } else {
                    for l in group {
                        files.push(i, l.as_bytes(), &mut clock(now));
                    }
                }
            }
            files.flush(now);
            let path = dir.join("b.1.log");
            (0..=3)
                .map(|k| if k == 0 { path.clone() } else { numbered(&path, k) })
                .map(|p| fs::read_to_string(p).unwrap_or_default())
                .collect()
        };
        let by_line = run("by-line", false);
        assert!(!by_line[1].is_empty(), "the test must rotate: {by_line:?}");
        assert_eq!(run("by-block", true), by_line);
        // Without a size limit a block is appended as it is.
        let dir = tmp.0.join("plain");
        let mut files = LogFiles::new([(
            ProgramId(0),
            "p".to_string(),
            spec(LogTarget::Dir(dir.clone()), 0, 0),
        )]);
        let i = files.file_of(ProgramId(0), 1, "p.1").unwrap();
        let now = Instant::now();
        files.push_lines(i, b"a\nb\n", 2, &mut clock(now));
        files.push(i, b"c", &mut clock(now));
        files.flush(now);
        assert_eq!(read(&dir.join("p.1.log")), "a\nb\nc\n");
    }

    #[test]
    fn instances_with_one_path_share_one_file() {
        let mut files = LogFiles::new([(
            ProgramId(0),
            "w".to_string(),
            spec(LogTarget::File("/nonexistent/all.log".into()), 0, 0),
        )]);
        let a = files.file_of(ProgramId(0), 1, "w.1");
        let b = files.file_of(ProgramId(0), 2, "w.2");
        assert_eq!(a, b);
        assert_eq!(files.file_of(ProgramId(1), 1, "x.1"), None);
    }

    #[test]
    fn stamps_are_rfc3339_utc_with_milliseconds() {
        let at = |secs: u64, ms: u64| {
            let t = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms);
            String::from_utf8(rfc3339_utc(t).to_vec()).unwrap()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z ");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z ");
        assert_eq!(at(1_796_324_192, 123), "2026-12-03T18:56:32.123Z ");
        assert_eq!(at(4_102_444_799, 999), "2099-12-31T23:59:59.999Z ");
    }
}
