//! Sessions written to a file on graceful shutdown and read back on start, so that restarting
//! a single node loses no session.
//!
//! The file is JSON lines: a header line (`{"tandem_sessions":1,...}`), one line per session,
//! and an end line with the count (`{"end":N}`), so that a file cut short is recognised. It is
//! written to `<path>.tmp`, fsynced, renamed over `<path>`, and the directory fsynced: a crash
//! while writing leaves the previous snapshot whole. A file that cannot be read back is moved
//! aside to `<path>.corrupt-<unix ms>` and tandem starts with no sessions rather than not at all.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::HeaderValue;
use serde::Deserialize;

use super::replica::AttributeVersions;
use super::{clock, Change, Origin, Session, SessionStore};

/// Version of the file format; a file of another version is refused (and moved aside).
const FORMAT_VERSION: u64 = 1;

/// The first line; its `written_ms` is for people reading the file.
#[derive(Deserialize)]
struct FileHeader {
    tandem_sessions: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    id: String,
    route: String,
    created_ms: u64,
    last_access_ms: u64,
    idle_timeout_ms: u64,
    absolute_timeout_ms: u64,
    attributes: Box<serde_json::value::RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct End {
    end: usize,
}

/// What loading a snapshot found.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    /// There was no snapshot file.
    Nothing,
    /// Sessions read back.
    Sessions {
        /// Sessions read back (those expired in the meantime are not counted).
        read: usize,
        /// Sessions refused because they were created ahead of this node's clock
        /// (`clock::SKEW_ALLOWANCE`): the file was written under a clock that ran ahead.
        refused: usize,
    },
    /// The file was unreadable or corrupt; it was moved to `moved_to` (`None` if even that
    /// failed) and the store stays empty.
    Corrupt {
        /// What was wrong.
        reason: String,
        /// Where the file is now.
        moved_to: Option<PathBuf>,
    },
}

impl SessionStore {
    /// Writes every live session to `path`, atomically; returns how many.
    pub fn write_snapshot(&self, path: &Path) -> io::Result<usize> {
        let temporary = with_suffix(path, ".tmp");
        let file = File::create(&temporary)?;
        let mut out = BufWriter::new(file);
        let now = self.clock.now_ms();
        writeln!(
            out,
            r#"{{"tandem_sessions":{FORMAT_VERSION},"written_ms":{now}}}"#
        )?;
        let mut count = 0;
        for entry in self.sessions.iter() {
            let session = entry.value();
            if session.expires_ms() <= now {
                continue;
            }
            writeln!(
                out,
                r#"{{"id":{},"route":{},"created_ms":{},"last_access_ms":{},"idle_timeout_ms":{},"absolute_timeout_ms":{},"attributes":{}}}"#,
                serde_json::Value::from(&**entry.key()),
                serde_json::Value::from(&*session.route),
                session.created_ms,
                session.last_access_ms,
                session.idle_timeout_ms,
                session.absolute_timeout_ms,
                // Printable-ASCII JSON already: copied as it is.
                String::from_utf8_lossy(session.data.as_bytes()),
            )?;
            count += 1;
        }
        writeln!(out, r#"{{"end":{count}}}"#)?;
        let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temporary, path)?;
        if let Some(directory) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(directory)?.sync_all()?;
        }
        Ok(count)
    }

    /// Reads the snapshot at `path` into this (empty) store. A corrupt file is moved aside.
    pub fn load_snapshot(&self, path: &Path) -> Loaded {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Loaded::Nothing,
            Err(error) => return self.set_aside(path, format!("cannot open: {error}")),
        };
        let records = match read(BufReader::new(file)) {
            Ok(records) => records,
            Err(reason) => return self.set_aside(path, reason),
        };
        let now = self.clock.now_ms();
        let (mut read, mut refused) = (0, 0);
        for record in records {
            // The file may have been written under another clock: its times are judged
            // against this one, as a peer's are.
            if self.check_foreign_creation(record.created_ms, now).is_err() {
                refused += 1;
                continue;
            }
            let (idle_timeout_ms, absolute_timeout_ms) =
                self.within_maxima(record.idle_timeout_ms, record.absolute_timeout_ms);
            let absolute_deadline_ms = record.created_ms.saturating_add(absolute_timeout_ms);
            let mut session = Session {
                data: record.data,
                route: record.route.into(),
                created_ms: record.created_ms,
                last_access_ms: clock::foreign_use_ms(
                    record.last_access_ms,
                    now,
                    absolute_deadline_ms,
                ),
                idle_timeout_ms,
                absolute_timeout_ms,
                queued_ms: 0,
                versions: AttributeVersions::default(),
                fields_version: self.hlc.next(),
            };
            // Versions are not kept in the file: the sessions read back count as written now.
            if let Ok(attributes) = serde_json::from_slice::<
                serde_json::Map<String, serde_json::Value>,
            >(session.data.as_bytes())
            {
                for key in attributes.keys() {
                    session.versions.set(key, session.fields_version, true);
                }
            }
            session.queued_ms = session.expires_ms();
            if session.queued_ms <= now {
                continue;
            }
            let id: Arc<str> = Arc::from(record.id);
            let entry = self.sessions.entry(Arc::clone(&id)).insert(session);
            self.live.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.emit(
                &Change::Created {
                    id: &id,
                    session: entry.value(),
                },
                Origin::Local,
            );
            self.queue(entry.queued_ms, id);
            read += 1;
        }
        Loaded::Sessions { read, refused }
    }

    fn set_aside(&self, path: &Path, reason: String) -> Loaded {
        let aside = with_suffix(path, &format!(".corrupt-{}", self.clock.now_ms()));
        let moved_to = fs::rename(path, &aside).ok().map(|()| aside);
        Loaded::Corrupt { reason, moved_to }
    }
}

/// A session as read from the file, checked.
struct Checked {
    id: String,
    route: String,
    created_ms: u64,
    last_access_ms: u64,
    idle_timeout_ms: u64,
    absolute_timeout_ms: u64,
    data: HeaderValue,
}

fn read(reader: impl BufRead) -> Result<Vec<Checked>, String> {
    let mut lines = reader.lines().enumerate();
    let mut next = |what: &str| -> Result<(usize, String), String> {
        match lines.next() {
            Some((index, Ok(line))) => Ok((index + 1, line)),
            Some((index, Err(error))) => Err(format!("line {}: {error}", index + 1)),
            None => Err(format!("the file ends before its {what}")),
        }
    };
    let (_, first) = next("header")?;
    let header: FileHeader = serde_json::from_str(&first)
        .map_err(|e| format!("line 1: not a tandem session snapshot: {e}"))?;
    if header.tandem_sessions != FORMAT_VERSION {
        return Err(format!(
            "format version {} (this tandem reads version {FORMAT_VERSION})",
            header.tandem_sessions
        ));
    }
    let mut records = Vec::new();
    loop {
        let (number, line) = next("end line")?;
        if let Ok(end) = serde_json::from_str::<End>(&line) {
            if end.end != records.len() {
                return Err(format!(
                    "the end line counts {} sessions, the file holds {}",
                    end.end,
                    records.len()
                ));
            }
            return Ok(records);
        }
        let record: Record =
            serde_json::from_str(&line).map_err(|e| format!("line {number}: {e}"))?;
        let attributes = record.attributes.get();
        let data = HeaderValue::from_str(attributes)
            .ok()
            .filter(|_| attributes.starts_with('{'))
            .ok_or_else(|| format!("line {number}: the attributes are not an ASCII JSON object"))?;
        if !super::id::is_well_formed(&record.id) {
            return Err(format!("line {number}: not a session id tandem issues"));
        }
        records.push(Checked {
            id: record.id,
            route: record.route,
            created_ms: record.created_ms,
            last_access_ms: record.last_access_ms,
            idle_timeout_ms: record.idle_timeout_ms,
            absolute_timeout_ms: record.absolute_timeout_ms,
            data,
        });
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::clock::ManualClock;

    #[test]
    fn a_snapshot_written_under_a_clock_ahead_is_judged_against_this_one() {
        let now: u64 = 1_800_000_000_000;
        let text = "[listen]\naddresses = [\"127.0.0.1:1\"]\n[session]\nmode = \"proxy\"\n[[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"127.0.0.1:2\"\n";
        let config = crate::config::Config::parse(Path::new("t.toml"), text).unwrap();
        let clock = Arc::new(ManualClock::new(now));
        let store = SessionStore::new(&config.session, clock, Vec::new(), None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions");
        let ahead = now + 600_000;
        let record = |id: char, created: u64, used: u64| {
            format!(
                r#"{{"id":"{}","route":"r","created_ms":{created},"last_access_ms":{used},"idle_timeout_ms":4000,"absolute_timeout_ms":12000,"attributes":{{}}}}"#,
                id.to_string().repeat(32)
            )
        };
        let lines = [
            format!(r#"{{"tandem_sessions":1,"written_ms":{ahead}}}"#),
            record('a', ahead, ahead),
            record('b', now - 1_000, ahead),
            record('c', now - 1_000, now - 1_000),
            r#"{"end":3}"#.to_string(),
        ];
        fs::write(&path, lines.join("\n")).unwrap();
        assert_eq!(
            store.load_snapshot(&path),
            Loaded::Sessions {
                read: 2,
                refused: 1
            }
        );
        assert!(
            store.get(&"a".repeat(32)).is_none(),
            "created in the future"
        );
        let used_ahead = store.get(&"b".repeat(32)).unwrap();
        assert_eq!(
            used_ahead.last_access_ms, now,
            "a use ahead is taken as now"
        );
        assert_eq!(
            store.get(&"c".repeat(32)).unwrap().last_access_ms,
            now - 1_000
        );
    }
}
