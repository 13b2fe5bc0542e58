//! The leanest HTTP/1.1 GET reader: a blocking socket, one request, headers parsed by hand, and
//! the body read into a 1 MiB buffer that is only counted — so that the client costs as little
//! CPU as `curl -o /dev/null` on a machine whose cores it shares with the server under test.
//! Redirects are followed like `curl -L` (a new connection per hop), and the time to the first
//! body byte is kept.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use sha2::{Digest as _, Sha256};

use crate::client::Transfer;

const BUF: usize = 1 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_HEAD: usize = 64 * 1024;

/// Redirects followed at most.
const MAX_REDIRECTS: usize = 5;

/// What the reader needs of a response head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    /// `Content-Length` (`None` when absent).
    len: Option<u64>,
    chunked: bool,
    location: Option<String>,
}

fn parse_head(head: &[u8]) -> anyhow::Result<Head> {
    let text = std::str::from_utf8(head).context("response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().context("empty response")?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .context("no status code")?
        .parse()
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut h = Head {
        status,
        len: None,
        chunked: false,
        location: None,
    };
    for l in lines {
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            h.len = Some(
                value
                    .parse()
                    .with_context(|| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            h.chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("location") {
            h.location = Some(value.to_owned());
        }
    }
    Ok(h)
}

/// One timed GET: when it started, the time to the end of the (final) response head, to the
/// first body byte and to the last.
#[derive(Clone, Copy, Debug)]
pub struct Timed {
    pub started: Instant,
    pub bytes: u64,
    pub head: Duration,
    pub first_byte: Duration,
    pub elapsed: Duration,
}

impl Timed {
    pub fn transfer(&self) -> Transfer {
        Transfer {
            bytes: self.bytes,
            elapsed: self.elapsed,
        }
    }
}

/// One GET of `url` (http://host:port/path) expecting 200 and exactly `expected` body bytes;
/// timed from connect to the last byte. Blocking: run it on a blocking thread.
pub fn get_count(url: &reqwest::Url, expected: u64) -> anyhow::Result<Transfer> {
    get_inner(url, expected, None).map(|t| t.transfer())
}

/// [`get_count`], with the time to the first body byte; redirects are followed (each hop on a
/// new connection, all of it timed).
pub fn get_timed(url: &reqwest::Url, expected: u64) -> anyhow::Result<Timed> {
    get_inner(url, expected, None)
}

/// Like [`get_count`], but also hashes the body and fails unless its `sha256:` digest is
/// `digest` (so a wrong byte fails the run).
pub fn get_verify(url: &reqwest::Url, expected: u64, digest: &str) -> anyhow::Result<Transfer> {
    let mut hasher = Sha256::new();
    let t = get_inner(url, expected, Some(&mut hasher))?.transfer();
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    ensure!(
        got == digest,
        "GET {url}: {expected} bytes with digest {got}, expected {digest}"
    );
    Ok(t)
}

fn get_inner(
    url: &reqwest::Url,
    expected: u64,
    hasher: Option<&mut Sha256>,
) -> anyhow::Result<Timed> {
    let started = Instant::now();
    let mut url = url.clone();
    let mut buf = vec![0u8; BUF];
    for _ in 0..=MAX_REDIRECTS {
        match get_once(&url, expected, &mut buf)? {
            Answer::Redirect(to) => url = to,
            Answer::Body(sock, head_end, filled) => {
                let head = started.elapsed();
                return read_body(sock, &url, expected, &mut buf, (head_end, filled), hasher).map(
                    |(bytes, first_byte)| Timed {
                        started,
                        bytes,
                        head,
                        first_byte: first_byte - started,
                        elapsed: started.elapsed(),
                    },
                );
            }
        }
    }
    bail!("GET {url}: more than {MAX_REDIRECTS} redirects")
}

enum Answer {
    Redirect(reqwest::Url),
    /// A 200 with `Content-Length` = expected: the socket, the end of its head in the buffer,
    /// and how much of the buffer is filled.
    Body(TcpStream, usize, usize),
}

/// One request on a new connection, up to the end of the response head.
fn get_once(url: &reqwest::Url, expected: u64, buf: &mut [u8]) -> anyhow::Result<Answer> {
    let host = url.host_str().context("URL without host")?;
    let port = url.port_or_known_default().context("URL without port")?;
    let mut target = url.path().to_owned();
    if let Some(q) = url.query() {
        target.push('?');
        target.push_str(q);
    }
    let mut sock = TcpStream::connect((host, port)).with_context(|| format!("connect {url}"))?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    // One write: a request split over several segments is needless work for both ends.
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: manta-bench\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    sock.write_all(request.as_bytes())?;
    let mut filled = 0;
    let head_end = loop {
        let n = sock.read(&mut buf[filled..])?;
        ensure!(
            n > 0,
            "GET {url}: connection closed inside the response head"
        );
        filled += n;
        if let Some(p) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        ensure!(
            filled < MAX_HEAD,
            "GET {url}: response head over {MAX_HEAD} bytes"
        );
    };
    let head = parse_head(&buf[..head_end])?;
    if matches!(head.status, 301 | 302 | 303 | 307 | 308) {
        let to = head.location.context("redirect without Location")?;
        return Ok(Answer::Redirect(
            url.join(&to)
                .with_context(|| format!("bad Location {to:?}"))?,
        ));
    }
    if head.status != 200 {
        let rest = String::from_utf8_lossy(&buf[..filled.min(4096)]).into_owned();
        bail!(
            "GET {url}: unexpected status {}; response {rest:?}",
            head.status
        );
    }
    ensure!(
        !head.chunked,
        "GET {url}: chunked body (this reader wants Content-Length)"
    );
    ensure!(
        head.len == Some(expected),
        "GET {url}: Content-Length {:?}, expected {expected}",
        head.len
    );
    Ok(Answer::Body(sock, head_end, filled))
}

/// Reads the rest of a body whose first `filled - head_end` bytes are in `buf` already; returns
/// its length and when its first byte arrived.
fn read_body(
    mut sock: TcpStream,
    url: &reqwest::Url,
    expected: u64,
    buf: &mut [u8],
    (head_end, filled): (usize, usize),
    mut hasher: Option<&mut Sha256>,
) -> anyhow::Result<(u64, Instant)> {
    let mut first_byte = (filled > head_end || expected == 0).then(Instant::now);
    let mut got = (filled - head_end) as u64;
    if let Some(h) = hasher.as_deref_mut() {
        h.update(&buf[head_end..filled]);
    }
    while got < expected {
        let n = sock.read(buf)?;
        ensure!(
            n > 0,
            "GET {url}: connection closed after {got} of {expected} bytes"
        );
        first_byte.get_or_insert_with(Instant::now);
        if let Some(h) = hasher.as_deref_mut() {
            h.update(&buf[..n]);
        }
        got += n as u64;
    }
    ensure!(
        got == expected,
        "GET {url}: {got} bytes, more than the {expected} announced"
    );
    Ok((got, first_byte.unwrap_or_else(Instant::now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_length() {
        let h = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\ncontent-length: 42\r\n\r\n";
        let head = parse_head(h).expect("parse");
        assert_eq!(
            (head.status, head.len, head.chunked),
            (200, Some(42), false)
        );
        let c = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n";
        let head = parse_head(c).expect("parse");
        assert_eq!((head.status, head.len, head.chunked), (404, None, true));
        let r = b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/x?a=b\r\n\r\n";
        let head = parse_head(r).expect("parse");
        assert_eq!(head.location.as_deref(), Some("http://127.0.0.1:9/x?a=b"));
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    /// Read a whole request head, so closing the socket never resets it under unread bytes.
    fn read_head(s: &mut std::net::TcpStream) {
        let mut req = Vec::new();
        let mut b = [0u8; 512];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut b).expect("read");
            assert!(n > 0, "client closed before its request head ended");
            req.extend_from_slice(&b[..n]);
        }
    }

    #[test]
    fn reads_a_body_from_a_real_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            read_head(&mut s);
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n")
                .expect("head");
            s.write_all(&vec![7u8; 300_000]).expect("body");
        });
        let url = reqwest::Url::parse(&format!("http://{addr}/v2/r/blobs/x")).expect("url");
        let t = get_count(&url, 300_000).expect("get");
        assert_eq!(t.bytes, 300_000);
        server.join().expect("server");
        // A short body is an error, not a throughput.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            read_head(&mut s);
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
                .expect("write");
        });
        let url = reqwest::Url::parse(&format!("http://{addr}/x")).expect("url");
        assert!(get_count(&url, 10).is_err());
        server.join().expect("server");
    }

    #[test]
    fn follows_a_redirect_to_another_host() {
        let cdn = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let cdn_addr = cdn.local_addr().expect("addr");
        let hub = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let hub_addr = hub.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut s, _) = hub.accept().expect("accept");
            read_head(&mut s);
            let head = format!(
                "HTTP/1.1 302 Found\r\nLocation: http://{cdn_addr}/f?sig=1\r\nContent-Length: 0\r\n\r\n"
            );
            s.write_all(head.as_bytes()).expect("redirect");
            let (mut s, _) = cdn.accept().expect("accept");
            read_head(&mut s);
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n")
                .expect("head");
            s.write_all(&[1u8; 5000]).expect("body");
        });
        let url = reqwest::Url::parse(&format!("http://{hub_addr}/r/resolve/main/f")).expect("url");
        let t = get_timed(&url, 5000).expect("get");
        assert_eq!(t.bytes, 5000);
        assert!(t.head <= t.first_byte && t.first_byte <= t.elapsed);
        server.join().expect("server");
    }
}
