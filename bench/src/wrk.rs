//! Manifest GETs per second, measured with `wrk` (Debian package `wrk`).

use std::time::Duration;

use anyhow::{bail, Context};

/// What one `wrk` run reported.
#[derive(Clone, Debug, PartialEq)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    /// "Socket errors: …" line, if any.
    pub socket_errors: Option<String>,
}

/// `wrk -t<threads> -c<connections> -d<secs>s -H 'Accept: <accept>' <url>`.
pub async fn run(
    url: &reqwest::Url,
    accept: &str,
    threads: usize,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<WrkResult> {
    let secs = duration.as_secs().max(1);
    let mut cmd = tokio::process::Command::new("wrk");
    cmd.arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{secs}s"))
        .arg("-H")
        .arg(format!("Accept: {accept}"))
        .arg(url.as_str())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(Duration::from_secs(secs + 30), cmd.output()).await {
        Ok(r) => r.context("cannot run wrk: install it with `apt-get install wrk`")?,
        Err(_) => bail!("wrk on {url} did not finish within {}s", secs + 30),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk on {url} failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&stdout).with_context(|| format!("wrk on {url}:\n{stdout}"))
}

fn parse(out: &str) -> anyhow::Result<WrkResult> {
    if let Some(l) = out.lines().find(|l| l.contains("Non-2xx or 3xx responses")) {
        bail!("the server answered errors: {}", l.trim());
    }
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .context("no Requests/sec line")?
        .trim()
        .parse::<f64>()
        .context("unreadable Requests/sec")?;
    let socket_errors = out
        .lines()
        .find(|l| l.contains("Socket errors"))
        .map(|l| l.trim().to_owned());
    Ok(WrkResult {
        requests_per_sec: rps,
        socket_errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "Running 5s test @ http://127.0.0.1:5000/v2/bench/model/manifests/bench
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   520.12us  300.00us   9.00ms   90.00%
    Req/Sec    30.12k     2.01k   35.00k    70.00%
  301234 requests in 5.00s, 120.00MB read
Requests/sec:  60246.80
Transfer/sec:     24.00MB
";

    #[test]
    fn parses_requests_per_sec() {
        let r = parse(OK).expect("parse");
        assert_eq!(r.requests_per_sec, 60246.80);
        assert_eq!(r.socket_errors, None);
    }

    #[test]
    fn errors_are_not_throughput() {
        let bad = OK.replace(
            "Requests/sec:",
            "  Non-2xx or 3xx responses: 301234\nRequests/sec:",
        );
        assert!(parse(&bad).is_err());
        let sock = OK.replace(
            "Requests/sec:",
            "  Socket errors: connect 0, read 3, write 0, timeout 0\nRequests/sec:",
        );
        let r = parse(&sock).expect("parse");
        assert!(r.socket_errors.is_some());
    }
}
