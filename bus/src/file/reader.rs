//! Reading lines of a topic file at byte offsets, for one group in one process.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use bytes::Bytes;

use super::topic::FileId;

/// How much is read from the file at a time (a line longer than this is read in several steps).
const CHUNK: usize = 256 * 1024;

/// One complete (or truncated) line found in the file.
#[derive(Debug)]
pub(crate) struct Line {
    pub(crate) off: u64,
    /// After the newline (or at the end of a truncated line).
    pub(crate) end: u64,
    pub(crate) payload: Bytes,
}

/// What follows the lines returned by [`TopicReader::lines_from`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tail {
    /// More complete lines may follow (the limit was reached).
    More,
    /// The file ends after the last complete line.
    End,
    /// The file ends in a line without its newline, at `off..size`.
    Partial { off: u64, size: u64 },
}

/// A read-only view of the topic file with a buffer of what was read last.
pub(crate) struct TopicReader {
    path: PathBuf,
    file: Option<(File, FileId)>,
    buf: Vec<u8>,
    /// The file offset of `buf[0]`.
    buf_start: u64,
}

impl TopicReader {
    pub(crate) fn new(path: PathBuf) -> TopicReader {
        TopicReader {
            path,
            file: None,
            buf: Vec::new(),
            buf_start: 0,
        }
    }

    /// The file the path names now, and its length.
    pub(crate) fn current(&self) -> io::Result<Option<(FileId, u64)>> {
        FileId::at(&self.path)
    }

    /// Makes sure the open file is `id`; `Ok(false)` when the path names another file (or none).
    pub(crate) fn open(&mut self, id: FileId) -> io::Result<bool> {
        if self.file.as_ref().is_some_and(|(_, open)| *open == id) {
            return Ok(true);
        }
        self.file = None;
        self.buf.clear();
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let opened = FileId::of(&file.metadata()?);
        if opened != id {
            return Ok(false);
        }
        self.file = Some((file, id));
        Ok(true)
    }

    /// The open file (after a successful [`open`](Self::open)).
    pub(crate) fn file(&self) -> Option<&File> {
        self.file.as_ref().map(|(f, _)| f)
    }

    /// The bytes of the line at `off..end`, without its newline.
    pub(crate) fn read_line(&self, off: u64, end: u64) -> io::Result<Bytes> {
        let file = self
            .file()
            .ok_or_else(|| io::Error::other("the topic file is not open"))?;
        let len = usize::try_from(end.saturating_sub(off)).map_err(io::Error::other)?;
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, off)?;
        Ok(Bytes::from(bytes).slice_ref_trimmed())
    }

    /// Up to `max` non-blank lines starting at byte `from`, appended to `out`.
    pub(crate) fn lines_from(
        &mut self,
        from: u64,
        max: usize,
        out: &mut Vec<Line>,
    ) -> io::Result<Tail> {
        self.seek_buffer(from);
        let mut pos = usize::try_from(from - self.buf_start).map_err(io::Error::other)?;
        let mut found = 0;
        loop {
            let Some(nl) = self.buf[pos..].iter().position(|&b| b == b'\n') else {
                if self.fill()? == 0 {
                    return Ok(if pos == self.buf.len() {
                        Tail::End
                    } else {
                        Tail::Partial {
                            off: self.buf_start + pos as u64,
                            size: self.buf_start + self.buf.len() as u64,
                        }
                    });
                }
                continue;
            };
            let (start, stop) = (pos, pos + nl);
            pos = stop + 1;
            if self.buf[start..stop].iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            out.push(Line {
                off: self.buf_start + start as u64,
                end: self.buf_start + pos as u64,
                payload: Bytes::copy_from_slice(&self.buf[start..stop]).slice_ref_trimmed(),
            });
            found += 1;
            if found == max {
                return Ok(Tail::More);
            }
        }
    }

    /// Keeps the buffer only if it holds `from`, dropping what comes before.
    fn seek_buffer(&mut self, from: u64) {
        let end = self.buf_start + self.buf.len() as u64;
        if from < self.buf_start || from > end {
            self.buf.clear();
            self.buf_start = from;
            return;
        }
        let skip = (from - self.buf_start) as usize;
        if skip > CHUNK || skip == self.buf.len() {
            self.buf.drain(..skip);
            self.buf_start = from;
        }
    }

    /// Reads the next chunk after the buffer; returns how many bytes came.
    fn fill(&mut self) -> io::Result<usize> {
        let Some((file, _)) = &self.file else {
            return Ok(0);
        };
        let at = self.buf_start + self.buf.len() as u64;
        let old = self.buf.len();
        self.buf.resize(old + CHUNK, 0);
        let n = loop {
            match file.read_at(&mut self.buf[old..], at) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e);
                }
            }
        };
        self.buf.truncate(old + n);
        Ok(n)
    }

    /// Forgets what was read (after the file was replaced).
    pub(crate) fn reset(&mut self) {
        self.file = None;
        self.buf.clear();
        self.buf_start = 0;
    }
}

trait TrimLine {
    /// Without a trailing newline and carriage return.
    fn slice_ref_trimmed(self) -> Bytes;
}

impl TrimLine for Bytes {
    fn slice_ref_trimmed(self) -> Bytes {
        let mut len = self.len();
        if len > 0 && self[len - 1] == b'\n' {
            len -= 1;
        }
        if len > 0 && self[len - 1] == b'\r' {
            len -= 1;
        }
        self.slice(..len)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    fn reader_over(content: &[u8]) -> (tempfile::TempDir, TopicReader) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(content)
            .unwrap();
        let mut r = TopicReader::new(path);
        let (id, _) = r.current().unwrap().unwrap();
        assert!(r.open(id).unwrap());
        (dir, r)
    }

    #[test]
    fn lines_blank_lines_crlf_and_partial_tail() {
        let (_d, mut r) = reader_over(b"{\"a\":1}\n\n  \r\n{\"b\":2}\r\n{\"c\"");
        let mut out = Vec::new();
        let tail = r.lines_from(0, 10, &mut out).unwrap();
        let got: Vec<_> = out
            .iter()
            .map(|l| (l.off, l.end, l.payload.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 8, Bytes::from_static(b"{\"a\":1}")),
                (13, 22, Bytes::from_static(b"{\"b\":2}"))
            ]
        );
        assert_eq!(tail, Tail::Partial { off: 22, size: 26 });
        assert_eq!(
            r.read_line(13, 22).unwrap(),
            Bytes::from_static(b"{\"b\":2}")
        );
        let mut out = Vec::new();
        assert_eq!(r.lines_from(8, 1, &mut out).unwrap(), Tail::More);
        assert_eq!(out[0].off, 13);
    }

    #[test]
    fn a_line_longer_than_a_chunk() {
        let long = vec![b'x'; CHUNK * 2 + 17];
        let mut content = long.clone();
        content.extend_from_slice(b"\nshort\n");
        let (_d, mut r) = reader_over(&content);
        let mut out = Vec::new();
        assert_eq!(r.lines_from(0, 10, &mut out).unwrap(), Tail::End);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].payload.len(), long.len());
        assert_eq!(&out[1].payload[..], b"short");
    }
}
