//! The leanest HTTP/1.1 GET reader: a blocking socket, one request, headers parsed by hand, and
//! the body read into a 1 MiB buffer that is only counted — so that the client costs as little
//! CPU as `curl -o /dev/null` on a machine whose cores it shares with the server under test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use sha2::{Digest as _, Sha256};

use crate::client::Transfer;

const BUF: usize = 1 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_HEAD: usize = 64 * 1024;

/// Status code and `Content-Length` of a response head (`None` when absent).
fn parse_head(head: &[u8]) -> anyhow::Result<(u16, Option<u64>, bool)> {
    let text = std::str::from_utf8(head).context("response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().context("empty response")?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .context("no status code")?
        .parse()
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut len = None;
    let mut chunked = false;
    for l in lines {
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            len = Some(
                value
                    .parse()
                    .with_context(|| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    Ok((status, len, chunked))
}

/// One GET of `url` (http://host:port/path) expecting 200 and exactly `expected` body bytes;
/// timed from connect to the last byte. Blocking: run it on a blocking thread.
pub fn get_count(url: &reqwest::Url, expected: u64) -> anyhow::Result<Transfer> {
    get_inner(url, expected, None)
}

/// Like [`get_count`], but also hashes the body and fails unless its `sha256:` digest is
/// `digest` (so a wrong byte fails the run).
pub fn get_verify(url: &reqwest::Url, expected: u64, digest: &str) -> anyhow::Result<Transfer> {
    let mut hasher = Sha256::new();
    let t = get_inner(url, expected, Some(&mut hasher))?;
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
    mut hasher: Option<&mut Sha256>,
) -> anyhow::Result<Transfer> {
    let host = url.host_str().context("URL without host")?;
    let port = url.port_or_known_default().context("URL without port")?;
    let mut target = url.path().to_owned();
    if let Some(q) = url.query() {
        target.push('?');
        target.push_str(q);
    }
    let start = Instant::now();
    let mut sock = TcpStream::connect((host, port)).with_context(|| format!("connect {url}"))?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    // One write: a request split over several segments is needless work for both ends.
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: manta-bench\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    sock.write_all(request.as_bytes())?;
    let mut buf = vec![0u8; BUF];
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
    let (status, len, chunked) = parse_head(&buf[..head_end])?;
    if status != 200 {
        let rest = String::from_utf8_lossy(&buf[..filled.min(4096)]).into_owned();
        bail!("GET {url}: unexpected status {status}; response {rest:?}");
    }
    ensure!(
        !chunked,
        "GET {url}: chunked body (this reader wants Content-Length)"
    );
    ensure!(
        len == Some(expected),
        "GET {url}: Content-Length {len:?}, expected {expected}"
    );
    let mut got = (filled - head_end) as u64;
    if let Some(h) = hasher.as_deref_mut() {
        h.update(&buf[head_end..filled]);
    }
    while got < expected {
        let n = sock.read(&mut buf)?;
        ensure!(
            n > 0,
            "GET {url}: connection closed after {got} of {expected} bytes"
        );
        if let Some(h) = hasher.as_deref_mut() {
            h.update(&buf[..n]);
        }
        got += n as u64;
    }
    let elapsed = start.elapsed();
    ensure!(
        got == expected,
        "GET {url}: {got} bytes, more than the {expected} announced"
    );
    Ok(Transfer {
        bytes: got,
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_length() {
        let h = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\ncontent-length: 42\r\n\r\n";
        assert_eq!(parse_head(h).expect("parse"), (200, Some(42), false));
        let c = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_head(c).expect("parse"), (404, None, true));
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
}
