//! What the day files hold, counted by record type and peer for the console — incrementally: a
//! day's counts remember how many bytes of its file they cover, and a later look reads only
//! what was appended since (the files only grow). The exporter brings a day's counts up to date
//! after each batch it appends (in memory; on disk again after each further [`KEEP_EVERY`]
//! of file), and the counts are kept apart from the day files (in
//! `<data>/cdr-counts/`: whatever collects `<data>/cdr/` for billing finds only records there) —
//! a cache: without it, or when it covers more than the file holds, the day is counted again
//! from its start —, so a page never reads a whole day. Also the day's
//! records as CSV.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Record type → peer (`-` for none) → records.
pub type Counts = BTreeMap<String, BTreeMap<String, u64>>;

/// The counts of every day looked at since the start.
pub struct Summaries {
    dir: PathBuf,
    /// Where the counts are kept.
    cache: PathBuf,
    days: Mutex<HashMap<String, Day>>,
}

#[derive(Default, Clone, serde::Serialize, serde::Deserialize)]
struct Day {
    /// Bytes of the file the counts cover: whole lines only.
    covered: u64,
    counts: Counts,
    /// What the kept copy covers (`None`: nothing kept yet by this process).
    #[serde(skip)]
    kept: Option<u64>,
}

/// How much more of a day file the counts cover before they are kept again. Keeping them
/// replaces a file (write, rename, and the old one's blocks freed): after every exported batch
/// that was a few percent of the relay's CPU under load. What a crash loses of the kept counts
/// is at most this much file to count again at the next look.
const KEEP_EVERY: u64 = 1 << 20;

impl Day {
    fn due_for_keeping(&self) -> bool {
        self.kept
            .is_none_or(|k| self.covered.saturating_sub(k) >= KEEP_EVERY)
    }
}

/// One record as the console counts and lists it.
#[derive(serde::Deserialize)]
struct Record {
    record_type: String,
    peer: Option<String>,
}

impl Summaries {
    /// The summaries of the day files in `dir` (`<data>/cdr`), kept in `cache`.
    pub fn new(dir: impl Into<PathBuf>, cache: impl Into<PathBuf>) -> Summaries {
        Summaries {
            dir: dir.into(),
            cache: cache.into(),
            days: Mutex::default(),
        }
    }

    /// The days that have a file, newest first (`YYYY-MM-DD`).
    pub fn days(&self) -> Vec<String> {
        let mut days: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let day = name.strip_suffix(".jsonl")?;
                valid_day(day).then(|| day.to_string())
            })
            .collect();
        days.sort_unstable_by(|a, b| b.cmp(a));
        days
    }

    /// The file of `day`, if `day` is a day (never a path of the caller's choosing).
    pub fn file(&self, day: &str) -> Option<PathBuf> {
        valid_day(day).then(|| self.dir.join(format!("{day}.jsonl")))
    }

    fn cache_file(&self, day: &str) -> PathBuf {
        self.cache.join(format!("{day}.json"))
    }

    /// `day`'s records counted by type and peer, reading only what was appended since the
    /// last look. One caller at a time (the exporter after an append, a page): the same bytes
    /// are never counted twice over, nor the kept counts written by two at once. Blocking file
    /// I/O: call it off the async workers.
    pub fn counts(&self, day: &str) -> std::io::Result<Counts> {
        let Some(path) = self.file(day) else {
            return Ok(Counts::new());
        };
        let mut days = self.days.lock().unwrap_or_else(|e| e.into_inner());
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let d = match days.remove(day) {
            Some(d) => Some(d),
            None => saved(&self.cache_file(day)),
        };
        let mut d = d.filter(|d| d.covered <= len).unwrap_or_default();
        let result = if len > d.covered {
            count_from(&path, &mut d).map(|()| {
                // A cache: a failed write only means the next start counts this day again.
                if d.due_for_keeping() && save(&self.cache_file(day), &d).is_ok() {
                    d.kept = Some(d.covered);
                }
            })
        } else {
            Ok(())
        };
        let counts = d.counts.clone();
        // Kept even after a read error: what it covers was counted.
        days.insert(day.to_string(), d);
        result.map(|()| counts)
    }
}

/// The counts kept beside a day file, if they read.
fn saved(path: &Path) -> Option<Day> {
    let d: Day = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(Day {
        kept: Some(d.covered),
        ..d
    })
}

/// Keeps `d` (written aside, then renamed over: never half a file).
fn save(path: &Path, d: &Day) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(d).map_err(std::io::Error::other)?)?;
    std::fs::rename(tmp, path)
}

fn valid_day(day: &str) -> bool {
    day.len() == 10
        && day.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
}

/// Adds the whole lines after `d.covered` to its counts.
fn count_from(path: &Path, d: &mut Day) -> std::io::Result<()> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(d.covered))?;
    let mut r = BufReader::new(f);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line)?;
        // A torn last line (being written, or cut by a crash) waits for the next look.
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok(());
        }
        d.covered += n as u64;
        if let Ok(rec) = serde_json::from_slice::<Record>(&line) {
            let peer = rec.peer.unwrap_or_else(|| "-".into());
            *d.counts
                .entry(rec.record_type)
                .or_default()
                .entry(peer)
                .or_default() += 1;
        }
    }
}

/// Whether a record line matches the filters (`None`: any).
pub fn matches(line: &[u8], record_type: Option<&str>, peer: Option<&str>) -> bool {
    let Ok(rec) = serde_json::from_slice::<Record>(line) else {
        return false;
    };
    record_type.is_none_or(|t| t == rec.record_type)
        && peer.is_none_or(|p| p == rec.peer.as_deref().unwrap_or("-"))
}

/// The CSV columns of a record, in order.
pub const CSV_COLUMNS: [&str; 12] = [
    "record_id",
    "record_type",
    "time",
    "local_rs",
    "peer",
    "originator",
    "recipients",
    "message_id",
    "transaction_id",
    "size",
    "content_types",
    "status",
];

/// One record line as a CSV row of [`CSV_COLUMNS`] (lists joined with `;`).
pub fn csv_row(line: &[u8]) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    Some(
        CSV_COLUMNS
            .iter()
            .map(|c| match &v[*c] {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(String::from)
                            .unwrap_or_else(|| x.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(";"),
                other => other.to_string(),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn counts_grow_with_the_file_and_a_torn_line_waits() {
        let dir = std::env::temp_dir().join(format!("cdr-summary-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("2026-12-05.jsonl");
        let mut f = File::create(&path).unwrap();
        writeln!(
            f,
            r#"{{"record_id":"1","record_type":"MMO4FRq","peer":"b"}}"#
        )
        .unwrap();
        writeln!(
            f,
            r#"{{"record_id":"2","record_type":"MMO4FRq","peer":"b"}}"#
        )
        .unwrap();
        write!(f, r#"{{"record_id":"3","record_type":"MMR4F""#).unwrap();
        let s = Summaries::new(&dir, dir.join("counts"));
        assert_eq!(s.days(), ["2026-12-05"]);
        let c = s.counts("2026-12-05").unwrap();
        assert_eq!(c["MMO4FRq"]["b"], 2);
        assert!(!c.contains_key("MMR4F"), "the torn line is not counted yet");
        writeln!(f, r#","peer":"c"}}"#).unwrap();
        writeln!(f, r#"{{"record_id":"4","record_type":"MMR4F"}}"#).unwrap();
        let c = s.counts("2026-12-05").unwrap();
        assert_eq!(
            (c["MMO4FRq"]["b"], c["MMR4F"]["c"], c["MMR4F"]["-"]),
            (2, 1, 1)
        );
        // A new start (another Summaries) takes the kept counts and reads only what follows.
        writeln!(f, r#"{{"record_id":"5","record_type":"MMR4F","peer":"c"}}"#).unwrap();
        let again = Summaries::new(&dir, dir.join("counts"));
        assert!(dir.join("counts/2026-12-05.json").exists());
        assert_eq!(again.counts("2026-12-05").unwrap()["MMR4F"]["c"], 2);
        // Counts that cover more than the file holds are not trusted: counted again.
        let shorter = r#"{"record_id":"1","record_type":"MMO4FRq","peer":"b"}"#;
        std::fs::write(&path, format!("{shorter}\n")).unwrap();
        let fresh = Summaries::new(&dir, dir.join("counts"));
        let c = fresh.counts("2026-12-05").unwrap();
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c["MMO4FRq"]["b"], 1);
        assert!(s.file("../etc/passwd").is_none());
        assert!(s.counts("../../x").unwrap().is_empty());
        let line = br#"{"record_id":"9","record_type":"MMO4FRq","peer":"b","recipients":["+1","+2"],"size":5}"#;
        let row = csv_row(line).unwrap();
        assert_eq!(
            (row[0].as_str(), row[6].as_str(), row[9].as_str()),
            ("9", "+1;+2", "5")
        );
        assert!(matches(line, Some("MMO4FRq"), Some("b")));
        assert!(!matches(line, None, Some("c")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn counts_are_kept_again_only_after_a_mebibyte_more_of_file() {
        let dir = std::env::temp_dir().join(format!("cdr-keep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("2026-12-05.jsonl");
        let line = r#"{"record_id":"1","record_type":"MMR4F","peer":"b"}"#;
        let append = |n: usize| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap();
            for _ in 0..n {
                writeln!(f, "{line}").unwrap();
            }
        };
        let kept = || -> u64 {
            let d: Day =
                serde_json::from_slice(&std::fs::read(dir.join("counts/2026-12-05.json")).unwrap())
                    .unwrap();
            d.counts["MMR4F"]["b"]
        };
        let s = Summaries::new(&dir, dir.join("counts"));
        append(10);
        assert_eq!(s.counts("2026-12-05").unwrap()["MMR4F"]["b"], 10);
        assert_eq!(kept(), 10, "the first look keeps what it counted");
        append(10);
        assert_eq!(s.counts("2026-12-05").unwrap()["MMR4F"]["b"], 20);
        assert_eq!(kept(), 10, "a little more is counted, not kept");
        // A new start counts on from the kept copy: nothing is lost, nothing counted twice.
        let again = Summaries::new(&dir, dir.join("counts"));
        assert_eq!(again.counts("2026-12-05").unwrap()["MMR4F"]["b"], 20);
        let many = (KEEP_EVERY as usize).div_ceil(line.len() + 1);
        append(many);
        assert_eq!(
            s.counts("2026-12-05").unwrap()["MMR4F"]["b"],
            20 + many as u64
        );
        assert_eq!(kept(), 20 + many as u64, "a mebibyte more is kept");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
