//! Connections a careless or hostile client holds open: slow request heads, idle keep-alives,
//! clients that stop reading, more connections than the cap, and more than the open-file limit.
//! Each through raw sockets against a real `manta serve`, while other clients are served.

#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{bytes, client, push_blob, start};
use manta_conformance::server::MantaServer;

/// Read until the server closes the connection (EOF or reset); what arrived, and when it closed.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Instant) {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, Instant::now()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("still open after {limit:?}, {} bytes read", got.len())
            }
            Err(_) => return (got, Instant::now()),
        }
    }
}

/// Send a whole request and read its whole response (`Content-Length` framed), leaving the
/// connection open.
fn request_on(s: &mut TcpStream, path: &str) -> String {
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the response ended");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
    }
}

/// One request on a fresh connection: the status line's code (0 when the connection failed or
/// closed without an answer, with why in place of the head), the head and the body.
fn get_on_fresh_connection(addr: &str, path: &str) -> (u16, String, Vec<u8>) {
    let mut s = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => return (0, format!("connect: {e}"), Vec::new()),
    };
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    if let Err(e) = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    ) {
        return (0, format!("write: {e}"), Vec::new());
    }
    let mut got = Vec::new();
    if let Err(e) = s.read_to_end(&mut got) {
        return (
            0,
            format!("read: {e} after {} bytes", got.len()),
            Vec::new(),
        );
    }
    let Some(split) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (0, String::from_utf8_lossy(&got).to_string(), Vec::new());
    };
    let head = String::from_utf8_lossy(&got[..split]).to_string();
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head, got[split + 4..].to_vec())
}

fn raw_get(addr: &str, path: &str) -> (u16, String) {
    let (code, head, _) = get_on_fresh_connection(addr, path);
    (code, head)
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_heads_and_idle_connections_are_closed_by_their_timeouts_while_others_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    let (header, idle) = (Duration::from_secs(2), Duration::from_secs(4));
    let m = start(
        &tmp.path().join("data"),
        &[
            "--header-read-timeout-secs",
            "2",
            "--idle-timeout-secs",
            "4",
        ],
    );
    let addr = m.addr().to_string();
    let slow = std::thread::spawn({
        let addr = addr.clone();
        move || {
            // Half a request head, one more header line now and then (a slowloris).
            let mut conns: Vec<(TcpStream, Instant)> = (0..20)
                .map(|_| {
                    let mut s = TcpStream::connect(&addr).unwrap();
                    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: t\r\n").unwrap();
                    (s, Instant::now())
                })
                .collect();
            std::thread::sleep(Duration::from_millis(1200));
            for (s, _) in &mut conns {
                let _ = s.write_all(b"X-Slow: 1\r\n");
            }
            conns
                .into_iter()
                .map(|(mut s, sent)| {
                    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(30));
                    assert!(got.is_empty(), "a half-sent head was answered");
                    closed - sent
                })
                .collect::<Vec<_>>()
        }
    });
    let idlers = std::thread::spawn({
        let addr = addr.clone();
        move || {
            let mut conns: Vec<(TcpStream, Instant)> = (0..20)
                .map(|_| {
                    let mut s = TcpStream::connect(&addr).unwrap();
                    assert!(request_on(&mut s, "/v2/").starts_with("HTTP/1.1 200"));
                    (s, Instant::now())
                })
                .collect();
            conns
                .iter_mut()
                .map(|(s, answered)| {
                    let (got, closed) = read_until_closed(s, Duration::from_secs(30));
                    assert!(got.is_empty(), "an idle connection was sent something");
                    closed - *answered
                })
                .collect::<Vec<_>>()
        }
    });
    // Meanwhile everyone else is served, on fresh connections and on kept-alive ones.
    let c = client();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let r = c.get(format!("{}/v2/", m.url())).send().await.unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for took in slow.join().unwrap() {
        assert!(
            took >= header,
            "a slow head was cut after {took:?}, before {header:?}"
        );
        assert!(took < header + Duration::from_secs(20), "{took:?}");
    }
    for took in idlers.join().unwrap() {
        // Timed from the client's last byte: the server's idle timer starts a little earlier.
        let early = idle - Duration::from_millis(250);
        assert!(
            took >= early,
            "an idle connection was cut after {took:?}, before {idle:?}"
        );
        assert!(took < idle + Duration::from_secs(20), "{took:?}");
    }
    // And a connection kept busy past both timeouts is not cut.
    let mut s = TcpStream::connect(&addr).unwrap();
    for _ in 0..5 {
        assert!(request_on(&mut s, "/v2/").starts_with("HTTP/1.1 200"));
        std::thread::sleep(Duration::from_millis(1000));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_a_blob_is_cut_after_the_stall_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let m = start(&tmp.path().join("data"), &["--stall-timeout-secs", "3"]);
    let c = client();
    let blob = bytes(64 << 20, 7);
    let digest = push_blob(&c, &m.url(), "stall/test", &blob).await;
    let path = format!("/v2/stall/test/blobs/{digest}");

    // A steady slow reader (256 KiB every 100 ms: about 40 s for the blob, far beyond the stall
    // timeout) gets it all: what counts is that it keeps reading.
    let mut s = TcpStream::connect(m.addr()).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 256 << 10];
    let slow_until = Instant::now() + Duration::from_secs(8);
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if Instant::now() < slow_until {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let body = &got[got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
    assert!(
        body == &blob[..],
        "the slow reader's bytes differ: {} of {}",
        body.len(),
        blob.len(),
    );

    // One that reads nothing is cut: the connection closes without the whole blob.
    let mut s = TcpStream::connect(m.addr()).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let asked = Instant::now();
    std::thread::sleep(Duration::from_secs(8));
    let (got, _) = read_until_closed(&mut s, Duration::from_secs(30));
    assert!(
        got.len() < blob.len(),
        "a client that read nothing for 8 s still got the whole blob"
    );
    assert!(asked.elapsed() >= Duration::from_secs(3));
    // The cut client let go of its lease: the blob can be removed now.
    let r = c
        .delete(format!("{}/v2/stall/test/blobs/{digest}", m.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_connection_cap_clients_get_503_and_are_served_again_once_one_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let m = start(&tmp.path().join("data"), &["--max-connections", "4"]);
    let addr = m.addr().to_string();
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            assert!(request_on(&mut s, "/v2/").starts_with("HTTP/1.1 200"));
            s
        })
        .collect();
    let (code, head) = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || raw_get(&addr, "/v2/")
    })
    .await
    .unwrap();
    assert_eq!(code, 503, "past the cap: {head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    // The held connections are still served.
    assert!(request_on(&mut held[0], "/v2/").starts_with("HTTP/1.1 200"));
    held.pop();
    let served = common::eventually(Duration::from_secs(10), || {
        raw_get(&addr, "/readyz").0 == 200
    })
    .await;
    assert!(
        served,
        "a place freed by a closed connection was not given out again"
    );
    // A connection just closed may still hold its place for a moment: ask until served.
    let mut metrics = String::new();
    let served = common::eventually(Duration::from_secs(10), || {
        let (code, _, body) = get_on_fresh_connection(&addr, "/metrics");
        metrics = String::from_utf8_lossy(&body).to_string();
        code == 200
    })
    .await;
    assert!(served);
    assert!(
        metrics.lines().any(
            |l| l.starts_with("manta_connections_refused_total{reason=\"cap\"}")
                && !l.ends_with(" 0")
        ),
        "the refusal was not counted: {metrics}"
    );
}

/// 600 GETs at once against an agent whose open-file limit is 256: every answer is a 200 with
/// the right bytes or a 503 with `Retry-After`; never a 500, and the agent is fine afterwards.
async fn hammer(m: &MantaServer, path: &str, blob: &[u8]) -> (usize, usize) {
    let addr = m.addr().to_string();
    let path = path.to_string();
    let mut tasks = Vec::new();
    for _ in 0..600 {
        let (addr, path) = (addr.clone(), path.clone());
        tasks.push(std::thread::spawn(move || {
            get_on_fresh_connection(&addr, &path)
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        let (code, head, body) = t.join().unwrap();
        match code {
            200 => {
                assert!(body == blob, "a 200 with the wrong bytes");
                ok += 1;
            }
            503 => {
                assert!(
                    head.to_ascii_lowercase().contains("retry-after: 1"),
                    "503 without Retry-After: {head}"
                );
                busy += 1;
            }
            other => panic!("answered {other}: {head}; agent log:\n{}", m.logs()),
        }
    }
    (ok, busy)
}

fn raise_own_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    l.current = l.maximum;
    let _ = setrlimit(Resource::Nofile, l);
}

fn start_with_nofile(dir: &Path, nofile: u32, args: &[&str]) -> MantaServer {
    let limit = format!("--nofile={nofile}:{nofile}");
    MantaServer::spawn_under(
        &["prlimit", &limit, "--"],
        Path::new(env!("CARGO_BIN_EXE_manta")),
        dir,
        args,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn running_out_of_file_descriptors_is_503_never_500() {
    raise_own_nofile();
    let tmp = tempfile::tempdir().unwrap();
    let blob = bytes(256 << 10, 3);
    for (name, args) in [
        // The automatic cap, from the limit: the excess is refused before descriptors run out.
        ("auto", vec![]),
        // No effective cap: the descriptors themselves run out.
        ("uncapped", vec!["--max-connections", "100000"]),
    ] {
        let m = start_with_nofile(&tmp.path().join(name), 256, &args);
        let c = client();
        let digest = push_blob(&c, &m.url(), "fds/test", &blob).await;
        let path = format!("/v2/fds/test/blobs/{digest}");
        let (ok, busy) = hammer(&m, &path, &blob).await;
        assert!(ok > 0, "{name}: nothing was served");
        assert!(
            busy > 0,
            "{name}: 600 GETs under 256 descriptors were all served: not a test"
        );
        // Afterwards the agent is whole.
        let r = c.get(format!("{}/readyz", m.url())).send().await.unwrap();
        assert_eq!(r.status(), 200, "{name}");
        let r = c.get(format!("{}{path}", m.url())).send().await.unwrap();
        assert_eq!(r.status(), 200, "{name}");
        assert!(r.bytes().await.unwrap() == blob);
    }
}

#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
    let tmp = tempfile::tempdir().unwrap();
    let m = MantaServer::spawn_under(
        &["prlimit", "--nofile=300:700", "--"],
        Path::new(env!("CARGO_BIN_EXE_manta")),
        &tmp.path().join("data"),
        &[],
    )
    .unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", m.pid().unwrap())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums, ["700", "700"], "{line}");
}
