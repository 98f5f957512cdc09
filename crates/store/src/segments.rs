//! Message bodies outside the B-tree: appended to segment files, a batch at a time.
//!
//! Why: in redb a 100 KB body became a 128 KB page copied into the page cache by the one writer
//! thread — on this project's machines that copy was half of the relay's CPU at intake, and it
//! was serial. Here the writer appends every body of a commit batch as one sequential write
//! (with `O_DIRECT` where the file system takes it: no page-cache copy at all), syncs the segment
//! once, and only then commits the batch's metadata — with each body's place and checksum — to
//! redb. A crash between the two leaves unreferenced bytes at a segment's end, never a reference
//! to bytes that are not durable. A process always starts a new segment, so it never needs to
//! know where an earlier one really ended.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::contract::{MsgId, StoreError};

/// `O_DIRECT` wants file offsets, lengths and buffer addresses in multiples of the device's
/// logical block; 4 KiB covers the devices this runs on.
const ALIGN: usize = 4096;
/// The staging buffer: a batch's bodies go out in writes of at most this much.
const CHUNK: usize = 4 << 20;
/// A segment takes no new batch once it is this large.
const SEGMENT_BYTES: u64 = 256 << 20;
/// Segment files a reader keeps open at most (descriptors are shared with SMTP sessions).
const OPEN_FOR_READING: usize = 64;

/// Where a body is: its segment, offset and length, and a CRC-32 of its octets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyAt {
    pub segment: u32,
    pub offset: u64,
    pub len: u32,
    pub crc: u32,
}

impl BodyAt {
    pub const ENCODED: usize = 20;

    pub fn encode(&self) -> [u8; Self::ENCODED] {
        let mut b = [0u8; Self::ENCODED];
        b[0..4].copy_from_slice(&self.segment.to_le_bytes());
        b[4..12].copy_from_slice(&self.offset.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b[16..20].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; Self::ENCODED] = b.try_into().ok()?;
        Some(BodyAt {
            segment: u32::from_le_bytes(b[0..4].try_into().ok()?),
            offset: u64::from_le_bytes(b[4..12].try_into().ok()?),
            len: u32::from_le_bytes(b[12..16].try_into().ok()?),
            crc: u32::from_le_bytes(b[16..20].try_into().ok()?),
        })
    }
}

fn segment_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{segment:010}.seg"))
}

/// The highest segment number in `dir` (0: none).
fn last_segment(dir: &Path) -> io::Result<u32> {
    let mut last = 0;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let n = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u32>().ok());
        last = last.max(n.unwrap_or(0));
    }
    Ok(last)
}

/// A buffer whose start is `ALIGN`-aligned, without unsafe code: a `Vec` a little larger than
/// needed, used from its first aligned octet.
struct Staging {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Staging {
    fn new() -> Self {
        let raw = vec![0u8; CHUNK + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        Staging { raw, start, len: 0 }
    }

    fn room(&self) -> usize {
        CHUNK - self.len
    }

    fn push(&mut self, bytes: &[u8]) {
        let at = self.start + self.len;
        self.raw[at..at + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// The filled part, zero-padded to a whole number of blocks.
    fn padded(&mut self) -> &[u8] {
        let padded = self.len.div_ceil(ALIGN) * ALIGN;
        self.raw[self.start + self.len..self.start + padded].fill(0);
        &self.raw[self.start..self.start + padded]
    }
}

/// The segment being appended to.
struct Open {
    number: u32,
    file: File,
    /// Where the next write goes: always a multiple of `ALIGN`.
    end: u64,
    direct: bool,
}

/// The writer's side: appends bodies (one caller, the store's writer thread).
pub struct Appender {
    dir: PathBuf,
    next: u32,
    open: Option<Open>,
    staging: Staging,
    /// Whether the file system refused `O_DIRECT` once (then every segment is buffered).
    buffered_only: bool,
}

impl Appender {
    /// Starts after the last segment in `dir` (created if missing).
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Appender {
            dir: dir.to_path_buf(),
            next: last_segment(dir)? + 1,
            open: None,
            staging: Staging::new(),
            buffered_only: false,
        })
    }

    /// Writes `bodies` one after the other and makes them durable: when this returns `Ok`, each
    /// body can be read back at the place returned for it, after any crash.
    pub fn append(&mut self, bodies: &[(MsgId, &[u8])]) -> io::Result<Vec<(MsgId, BodyAt)>> {
        if bodies.is_empty() {
            return Ok(Vec::new());
        }
        let r = self.append_once(bodies);
        match r {
            // A file system may take the O_DIRECT open but refuse the write: go buffered.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !self.buffered_only => {
                tracing::warn!(error = %e, "segment writes without O_DIRECT");
                self.buffered_only = true;
                self.open = None;
                self.append_once(bodies)
            }
            Err(e) => {
                // What was written is not trusted to have ended where we think: a new segment.
                self.open = None;
                Err(e)
            }
            ok => ok,
        }
    }

    fn append_once(&mut self, bodies: &[(MsgId, &[u8])]) -> io::Result<Vec<(MsgId, BodyAt)>> {
        let open = match self.open.take() {
            Some(o) if o.end < SEGMENT_BYTES => o,
            _ => self.create()?,
        };
        let mut open = open;
        let mut placed = Vec::with_capacity(bodies.len());
        let mut written = open.end;
        let oversize = || io::Error::new(io::ErrorKind::InvalidInput, "body over 4 GiB");
        for (id, body) in bodies {
            placed.push((
                *id,
                BodyAt {
                    segment: open.number,
                    offset: written + self.staging.len as u64,
                    len: u32::try_from(body.len()).map_err(|_| oversize())?,
                    crc: crc32fast::hash(body),
                },
            ));
            let mut rest: &[u8] = body;
            while !rest.is_empty() {
                let n = rest.len().min(self.staging.room());
                self.staging.push(&rest[..n]);
                rest = &rest[n..];
                if self.staging.room() == 0 {
                    open.file.write_all_at(self.staging.padded(), written)?;
                    written += CHUNK as u64;
                    self.staging.len = 0;
                }
            }
        }
        if self.staging.len > 0 {
            let out = self.staging.padded();
            open.file.write_all_at(out, written)?;
            written += out.len() as u64;
            self.staging.len = 0;
        }
        open.file.sync_data()?;
        open.end = written;
        self.open = Some(open);
        Ok(placed)
    }

    /// A new segment file, its name made durable in the directory before anything refers to it.
    fn create(&mut self) -> io::Result<Open> {
        let number = self.next;
        self.next += 1;
        let path = segment_path(&self.dir, number);
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        let (file, direct) = if self.buffered_only {
            (opts.open(&path)?, false)
        } else {
            match opts.clone().custom_flags(libc::O_DIRECT).open(&path) {
                Ok(f) => (f, true),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(error = %e, "segment files without O_DIRECT");
                    self.buffered_only = true;
                    let _ = std::fs::remove_file(&path);
                    (opts.open(&path)?, false)
                }
                Err(e) => return Err(e),
            }
        };
        File::open(&self.dir)?.sync_all()?;
        tracing::debug!(segment = number, direct, "new body segment");
        Ok(Open {
            number,
            file,
            end: 0,
            direct,
        })
    }

    /// Whether the current segment is written with `O_DIRECT` (for tests and logs).
    pub fn direct(&self) -> Option<bool> {
        self.open.as_ref().map(|o| o.direct)
    }
}

fn corrupt(id: MsgId, at: BodyAt, reason: String) -> StoreError {
    StoreError::Corrupt {
        what: format!("body of message {id} (segment {})", at.segment),
        reason,
    }
}

/// The readers' side: reads bodies back by place (any thread).
pub struct Reader {
    dir: PathBuf,
    files: Mutex<HashMap<u32, Arc<File>>>,
}

impl Reader {
    pub fn new(dir: &Path) -> Self {
        Reader {
            dir: dir.to_path_buf(),
            files: Mutex::new(HashMap::new()),
        }
    }

    fn file(&self, segment: u32) -> io::Result<Arc<File>> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = files.get(&segment) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(segment_path(&self.dir, segment))?);
        if files.len() >= OPEN_FOR_READING {
            // Old MMs are read seldom: start over rather than hold a descriptor per segment
            // (reads under way keep theirs).
            files.clear();
        }
        files.insert(segment, f.clone());
        Ok(f)
    }

    /// The body at `at`, checked against its checksum.
    pub fn read(&self, id: MsgId, at: BodyAt) -> Result<Vec<u8>, StoreError> {
        let body = self.read_raw(id, at, at.len as usize)?;
        if crc32fast::hash(&body) != at.crc {
            return Err(corrupt(id, at, "checksum mismatch".into()));
        }
        Ok(body)
    }

    /// The first `len` octets of the body at `at`. The checksum covers the whole body, so a
    /// head is not checked against it; what reads a head parses it, and a damaged one fails
    /// there or when the whole body is read.
    pub fn read_head(&self, id: MsgId, at: BodyAt, len: usize) -> Result<Vec<u8>, StoreError> {
        self.read_raw(id, at, len.min(at.len as usize))
    }

    fn read_raw(&self, id: MsgId, at: BodyAt, len: usize) -> Result<Vec<u8>, StoreError> {
        let file = self
            .file(at.segment)
            .map_err(|e| corrupt(id, at, e.to_string()))?;
        let mut body = vec![0u8; len];
        file.read_exact_at(&mut body, at.offset)
            .map_err(|e| corrupt(id, at, e.to_string()))?;
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    #[test]
    fn bodies_of_any_size_come_back_as_written_across_batches_and_restarts() {
        round_trip(false);
    }

    #[test]
    fn bodies_come_back_as_written_where_o_direct_is_refused() {
        round_trip(true);
    }

    fn round_trip(buffered_only: bool) {
        let dir =
            std::env::temp_dir().join(format!("segments-{buffered_only}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sizes = [
            0,
            1,
            4095,
            4096,
            4097,
            100 * 1024,
            CHUNK - 7,
            CHUNK + 9,
            3 * CHUNK,
        ];
        let bodies: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| body(*n, i as u8))
            .collect();
        let mut placed = Vec::new();
        {
            let mut a = Appender::open(&dir).unwrap();
            a.buffered_only = buffered_only;
            let first: Vec<(MsgId, &[u8])> = bodies[..4]
                .iter()
                .enumerate()
                .map(|(i, b)| (i as MsgId, b.as_slice()))
                .collect();
            placed.extend(a.append(&first).unwrap());
            let second: Vec<(MsgId, &[u8])> = bodies[4..]
                .iter()
                .enumerate()
                .map(|(i, b)| ((i + 4) as MsgId, b.as_slice()))
                .collect();
            placed.extend(a.append(&second).unwrap());
            if buffered_only {
                assert_eq!(a.direct(), Some(false));
            }
        }
        // A restart appends to a new segment and reads the old ones.
        let mut again = Appender::open(&dir).unwrap();
        let last = body(5000, 9);
        let later = again.append(&[(99, last.as_slice())]).unwrap();
        assert!(later[0].1.segment > placed[0].1.segment);
        let r = Reader::new(&dir);
        for ((id, at), b) in placed.iter().zip(&bodies) {
            assert_eq!(&r.read(*id, *at).unwrap(), b, "body {id}");
        }
        assert_eq!(r.read(99, later[0].1).unwrap(), last);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_reader_holds_a_bounded_number_of_segments_open() {
        let dir = std::env::temp_dir().join(format!("segments-many-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Every process start begins a segment: as many as a long-lived store gathers.
        let mut placed = Vec::new();
        for i in 0..(OPEN_FOR_READING as u64 + 6) {
            let b = body(100, i as u8);
            let at = Appender::open(&dir)
                .unwrap()
                .append(&[(i, b.as_slice())])
                .unwrap()[0]
                .1;
            placed.push((i, at, b));
        }
        let r = Reader::new(&dir);
        for _ in 0..2 {
            for (id, at, b) in &placed {
                assert_eq!(&r.read(*id, *at).unwrap(), b);
                assert!(r.files.lock().unwrap().len() <= OPEN_FOR_READING);
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_body_is_an_error_not_other_octets() {
        let dir = std::env::temp_dir().join(format!("segments-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut a = Appender::open(&dir).unwrap();
        let b = body(10_000, 3);
        let at = a.append(&[(1, b.as_slice())]).unwrap()[0].1;
        let f = OpenOptions::new()
            .write(true)
            .open(segment_path(&dir, at.segment))
            .unwrap();
        f.write_all_at(b"X", at.offset + 5000).unwrap();
        let e = Reader::new(&dir).read(1, at).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert_eq!(BodyAt::decode(&at.encode()), Some(at));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
