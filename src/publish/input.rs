//! The lines of a JSONL file, plain or gzip-compressed (by its magic bytes, not its name).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

/// Opens `path` for reading lines, decompressing gzip.
pub fn open(path: &Path) -> std::io::Result<Box<dyn BufRead + Send>> {
    let mut f = File::open(path)?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic)?;
    let f = File::open(path)?;
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(BufReader::new(MultiGzDecoder::new(f))))
    } else {
        Ok(Box::new(BufReader::with_capacity(1 << 16, f)))
    }
}

/// The next line without its line ending; `None` at the end.
pub fn next_line(r: &mut dyn BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    if r.read_until(b'\n', &mut buf)? == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    Ok(Some(buf))
}

/// Counts the lines of `path` (for the progress bar).
pub fn count_lines(path: &Path) -> std::io::Result<u64> {
    let mut r = open(path)?;
    let mut n = 0;
    while next_line(&mut *r)?.is_some() {
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn plain_and_gzip_read_the_same_lines() {
        let dir = tempfile::tempdir().unwrap();
        let text = "{\"id\":1}\r\n\n{\"id\":2}\n{\"id\":3}";
        let plain = dir.path().join("a.jsonl");
        std::fs::write(&plain, text).unwrap();
        let gz = dir.path().join("a.jsonl.gz");
        let mut enc =
            flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all(text.as_bytes()).unwrap();
        enc.finish().unwrap();
        for p in [&plain, &gz] {
            let mut r = open(p).unwrap();
            let mut lines = Vec::new();
            while let Some(l) = next_line(&mut *r).unwrap() {
                lines.push(String::from_utf8(l).unwrap());
            }
            assert_eq!(lines, ["{\"id\":1}", "", "{\"id\":2}", "{\"id\":3}"]);
            assert_eq!(count_lines(p).unwrap(), 4);
        }
    }
}
