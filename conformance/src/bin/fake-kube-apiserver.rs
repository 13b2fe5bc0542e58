//! A fake Kubernetes API server, in memory, on loopback, for end-to-end tests of the operator
//! with `kubectl` and kube-rs.
//!
//! `fake-kube-apiserver [--listen 127.0.0.1:0] [--kubeconfig PATH] [--history 1000]` prints
//! `listening on 127.0.0.1:PORT` once bound, writes a kubeconfig for it when asked, and serves
//! until SIGTERM or Ctrl-C.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use manta_conformance::kube_fake::{FakeApiServer, Options};

#[derive(Parser, Debug)]
#[command(
    name = "fake-kube-apiserver",
    about = "An in-memory Kubernetes API server for tests"
)]
struct Args {
    /// Where to listen: a loopback address; port 0 picks a free port.
    #[arg(long, env = "MANTA_FAKE_KUBE_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write a kubeconfig for this server here (no auth, namespace default).
    #[arg(long, env = "MANTA_FAKE_KUBE_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Changes kept for watches to resume from; a watch from an older version gets 410 Expired.
    #[arg(long, env = "MANTA_FAKE_KUBE_HISTORY", default_value_t = 1000)]
    history: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut server = FakeApiServer::start_with(Options {
        listen: args.listen,
        history: args.history,
    })
    .await?;
    if let Some(path) = &args.kubeconfig {
        server.write_kubeconfig(path)?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {}", server.addr()).context("writing to stdout")?;
    out.flush().context("writing to stdout")?;
    drop(out);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = server.stopped() => anyhow::bail!("the server stopped"),
    }
    server.shutdown().await;
    Ok(())
}
