//! A small HTTP/1.1 file server for tests, on a free loopback port: it serves a directory's
//! files to GET and HEAD, honours `Range: bytes=A-B` (and `A-`) with `206 Partial Content` and
//! `Content-Range`, gives each file an ETag made of its length and modification time, answers
//! 404 for a missing file and 405 to any other method (it is no WebDAV server: it cannot list).
//! It closes every connection after one response. Stopped on drop. Used as `#[path =
//! "util/range_server.rs"] mod range_server;`.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::UNIX_EPOCH;

pub struct RangeServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// How many requests carried a `Range` header.
    ranges: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl RangeServer {
    /// Serves `root` on 127.0.0.1 at a port of its own.
    pub fn start(root: &Path) -> RangeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let ranges = Arc::new(AtomicU64::new(0));
        let root = root.to_path_buf();
        let thread = {
            let (stop, ranges) = (Arc::clone(&stop), Arc::clone(&ranges));
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (root, ranges) = (root.clone(), Arc::clone(&ranges));
                    std::thread::spawn(move || {
                        let _ = serve(stream, &root, &ranges);
                    });
                }
            })
        };
        RangeServer { addr, stop, ranges, thread: Some(thread) }
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// How many requests so far asked for a range.
    pub fn range_requests(&self) -> u64 {
        self.ranges.load(Ordering::SeqCst)
    }
}

impl Drop for RangeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(stream: TcpStream, root: &Path, ranges: &AtomicU64) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default().to_owned(), parts.next().unwrap_or("/").to_owned());
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_owned());
        }
    }
    let mut out = stream;
    if method != "GET" && method != "HEAD" {
        return respond(&mut out, "405 Method Not Allowed", &[("Allow", "GET, HEAD".into())], b"");
    }
    let Some(path) = local_path(root, &target) else {
        return respond(&mut out, "400 Bad Request", &[], b"");
    };
    let Ok(mut file) = std::fs::File::open(&path) else {
        return respond(&mut out, "404 Not Found", &[], b"");
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return respond(&mut out, "404 Not Found", &[], b"");
    }
    let size = meta.len();
    let nanos = meta.modified()?.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let etag = format!("\"{size:x}-{nanos:x}\"");
    let (status, start, end) = match range.as_deref().and_then(|range| parse_range(range, size)) {
        Some((start, end)) => {
            ranges.fetch_add(1, Ordering::SeqCst);
            ("206 Partial Content", start, end)
        }
        None if range.is_some() => {
            let headers = [("Content-Range", format!("bytes */{size}"))];
            return respond(&mut out, "416 Range Not Satisfiable", &headers, b"");
        }
        None => ("200 OK", 0, size),
    };
    let mut body = vec![0; (end - start) as usize];
    if method == "GET" {
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut body)?;
    }
    let mut headers = vec![("ETag", etag), ("Accept-Ranges", "bytes".to_owned())];
    if status.starts_with("206") {
        headers.push(("Content-Range", format!("bytes {start}-{}/{size}", end - 1)));
    }
    let length = end - start;
    if method == "HEAD" {
        return respond_head(&mut out, status, &headers, length);
    }
    respond(&mut out, status, &headers, &body)
}

/// The file a request's target names below `root`; `None` for a path leaving it.
fn local_path(root: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split('?').next()?;
    let mut local = root.to_path_buf();
    for segment in path.split('/').filter(|segment| !segment.is_empty()) {
        let segment = percent_decode(segment)?;
        if segment == "." || segment == ".." || segment.contains('/') {
            return None;
        }
        local.push(segment);
    }
    Some(local)
}

fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `bytes=A-B` or `bytes=A-` as the half-open range it asks for, clamped to the file;
/// `None` when it is not satisfiable.
fn parse_range(range: &str, size: u64) -> Option<(u64, u64)> {
    let (first, last) = range.strip_prefix("bytes=")?.split_once('-')?;
    let start: u64 = first.trim().parse().ok()?;
    let end = match last.trim() {
        "" => size,
        last => last.parse::<u64>().ok()?.saturating_add(1).min(size),
    };
    (start < end).then_some((start, end))
}

fn respond(out: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) -> std::io::Result<()> {
    respond_head(out, status, headers, body.len() as u64)?;
    out.write_all(body)?;
    out.flush()
}

fn respond_head(out: &mut TcpStream, status: &str, headers: &[(&str, String)], length: u64) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {length}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())
}
