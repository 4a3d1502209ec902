//! The disk spool: append-only segment files of framed messages (exactly
//! the bytes sent on the wire), oldest first. A segment is removed only
//! once every message read from it has been acknowledged, so a crash
//! re-sends rather than loses. Survives a restart: a new process sends
//! what an old one left, first.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::rfc5424::parse_frame_header;

const SUFFIX: &str = ".spool";
/// Ids start high so that a segment can be put in front of the oldest.
const FIRST_ID: u64 = 1 << 32;

struct Segment {
    id: u64,
    len: u64,
    /// Bytes read (handed out) so far.
    read: u64,
}

pub struct Spool {
    dir: PathBuf,
    segments: VecDeque<Segment>,
    /// Append handle of `segments.back()`, when this process writes it
    /// (segments left by an earlier run are only read).
    head: Option<File>,
    /// Sum of the segments' lengths: what the spool takes on disk.
    bytes: u64,
    max: u64,
    segment_limit: u64,
}

/// A frame read from the spool, with where it came from (to rewind).
pub struct Spooled {
    pub frame: Arc<[u8]>,
    pub segment: u64,
    pub offset: u64,
}

fn segment_name(id: u64) -> String {
    format!("{id:020}{SUFFIX}")
}

impl Spool {
    /// Opens (creating, mode 0700) the spool directory and finds the
    /// segments an earlier run left.
    pub fn open(dir: &Path, max: u64) -> io::Result<Spool> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("SIEM spool {}: {e}", dir.display())))?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .filter(|n| n.len() == 20)
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            found.push((id, entry.metadata()?.len()));
        }
        found.sort_unstable();
        let segments: VecDeque<Segment> = found
            .into_iter()
            .map(|(id, len)| Segment { id, len, read: 0 })
            .collect();
        let bytes = segments.iter().map(|s| s.len).sum();
        Ok(Spool {
            dir: dir.to_path_buf(),
            segments,
            head: None,
            bytes,
            max,
            segment_limit: (max / 8).clamp(4096, 8 << 20),
        })
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Everything has been read (possibly not yet acknowledged).
    pub fn all_read(&self) -> bool {
        self.segments.iter().all(|s| s.read >= s.len)
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(segment_name(id))
    }

    fn create(&self, id: u64) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.path(id))
    }

    /// Appends one frame behind everything spooled. `Ok(false)`: the spool
    /// is full and the frame was not written.
    pub fn append(&mut self, frame: &[u8]) -> io::Result<bool> {
        if self.bytes + frame.len() as u64 > self.max {
            return Ok(false);
        }
        let rotate = match (self.head.is_some(), self.segments.back()) {
            (true, Some(s)) => s.len >= self.segment_limit,
            _ => true,
        };
        if rotate {
            let id = self.segments.back().map_or(FIRST_ID, |s| s.id + 1);
            let file = self.create(id)?;
            self.segments.push_back(Segment {
                id,
                len: 0,
                read: 0,
            });
            self.head = Some(file);
        }
        let head = self.head.as_mut().expect("head segment");
        head.write_all(frame)?;
        let seg = self.segments.back_mut().expect("head segment");
        seg.len += frame.len() as u64;
        self.bytes += frame.len() as u64;
        Ok(true)
    }

    /// Writes frames that come before everything spooled (those in flight
    /// when the collector went away), as a new oldest segment. Not held to
    /// the cap: they were accepted already.
    pub fn prepend<'a>(&mut self, frames: impl Iterator<Item = &'a [u8]>) -> io::Result<()> {
        let mut frames = frames.peekable();
        if frames.peek().is_none() {
            return Ok(());
        }
        let id = self
            .segments
            .front()
            .map_or(FIRST_ID, |s| s.id.saturating_sub(1));
        let mut file = self.create(id)?;
        let mut len = 0;
        for f in frames {
            file.write_all(f)?;
            len += f.len() as u64;
        }
        if self.segments.is_empty() {
            // It is the only segment: later appends may go on it.
            self.head = Some(file);
        }
        self.segments.push_front(Segment { id, len, read: 0 });
        self.bytes += len;
        Ok(())
    }

    /// Reads the next frames in order, up to about `budget` bytes.
    /// A torn or corrupt tail (a crash mid-write) is skipped, logged.
    pub fn read(&mut self, budget: usize) -> io::Result<Vec<Spooled>> {
        let mut out = Vec::new();
        let mut used = 0;
        let mut i = 0;
        while used < budget && i < self.segments.len() {
            let (id, len, read) = {
                let s = &self.segments[i];
                (s.id, s.len, s.read)
            };
            if read >= len {
                i += 1;
                continue;
            }
            let file = File::open(self.path(id))?;
            let mut offset = read;
            while used < budget && offset < len {
                let mut hdr = [0u8; 12];
                let n = ((len - offset) as usize).min(hdr.len());
                file.read_exact_at(&mut hdr[..n], offset)?;
                let parsed = match parse_frame_header(&hdr[..n]) {
                    Ok(Some((h, m))) if offset + (h + m) as u64 <= len => Some(h + m),
                    _ => None,
                };
                let Some(total) = parsed else {
                    crate::error_limited!(
                        spool = %self.path(id).display(),
                        offset,
                        "SIEM spool segment ends in a torn or corrupt record; skipping the rest of it"
                    );
                    offset = len;
                    break;
                };
                let mut frame = vec![0u8; total];
                file.read_exact_at(&mut frame, offset)?;
                out.push(Spooled {
                    frame: frame.into(),
                    segment: id,
                    offset,
                });
                offset += total as u64;
                used += total;
            }
            self.segments[i].read = offset;
        }
        Ok(out)
    }

    /// Reads again from `offset` of `segment` (its frames were in flight
    /// when the connection failed).
    pub fn rewind(&mut self, segment: u64, offset: u64) {
        let mut after = false;
        for s in self.segments.iter_mut() {
            if s.id == segment {
                s.read = s.read.min(offset);
                after = true;
            } else if after {
                s.read = 0;
            }
        }
    }

    /// Removes the fully read segments older than `oldest_unacked` (the
    /// segment of the oldest frame still unacknowledged, if any).
    pub fn release(&mut self, oldest_unacked: Option<u64>) -> io::Result<()> {
        while let Some(s) = self.segments.front() {
            let is_head = self.segments.len() == 1 && self.head.is_some();
            let referenced = oldest_unacked.is_some_and(|u| u <= s.id);
            if s.read < s.len || referenced {
                break;
            }
            let (id, len) = (s.id, s.len);
            if is_head {
                self.head = None;
            }
            std::fs::remove_file(self.path(id)).or_else(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
            self.segments.pop_front();
            self.bytes -= len;
        }
        Ok(())
    }

    /// Makes what was written durable (at stop).
    pub fn sync(&self) -> io::Result<()> {
        if let Some(head) = &self.head {
            head.sync_data()?;
        }
        File::open(&self.dir)?.sync_all()
    }
}
