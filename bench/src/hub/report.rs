//! The hub report: one markdown table of ratios against peers run side by side, then the runs.

use std::fmt::Write as _;
use std::path::Path;

use super::{Args, Cost, Model, Pull, Results, FILE, REPO, REVISION};
use crate::report::{table_with, Goal, Row};
use crate::{median, MIB};

fn med<T>(v: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(v.iter().map(f).collect())
}

fn list<T>(v: &[T], f: impl Fn(&T) -> f64) -> String {
    v.iter()
        .map(|x| format!("{:.2}", f(x)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn cpu<T>(v: &[(T, Cost)]) -> String {
    v.iter()
        .map(|(_, c)| format!("{:.1}/{:.1}", c.agent_cpu, c.bench_cpu))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn render(args: &Args, bin: &Path, model: &Model, r: &Results) -> String {
    let size = model.size as f64;
    let k = args.runs;
    let n = args.concurrent_pulls;
    let direct = med(&r.direct, |(p, _)| p.total);
    let direct_ttfb = med(&r.direct, |(p, _)| p.ttfb);
    let cold = med(&r.cold, |(p, _)| p.total);
    let warm = med(&r.warm, |(p, _)| p.total);
    let warm_blob = med(&r.warm, |(p, _)| p.blob_total);
    let unlimited = med(&r.unlimited, |p: &Pull| p.total);
    let mbps = |s: f64| size / 1e6 / s;
    let worst_served = |v: &[(Pull, Cost)]| {
        v.iter()
            .map(|(_, c)| c.served as f64 / size)
            .fold(0.0, f64::max)
    };
    let rss = [r.rss_cold, r.rss_warm, r.rss_prefetch, r.rss_concurrent]
        .into_iter()
        .fold(0.0, f64::max);
    let mut rows = vec![
        Row::new(
            format!("cold `hf-raw` pull (manifest + blob) vs direct download, median of {k}"),
            "s",
            cold,
            direct,
            Goal::RatioAtMost(1.05),
        ),
        Row::new(
            "cold pull, the blob GET alone (after the manifest) vs direct download",
            "s",
            med(&r.cold, |(p, _)| p.blob_total),
            direct,
            Goal::RatioAtMost(1.05),
        ),
        Row::new(
            "time to first byte, cold pull from the manifest GET vs direct",
            "ms",
            med(&r.cold, |(p, _)| p.ttfb) * 1e3,
            direct_ttfb * 1e3,
            Goal::RatioAtMost(1.1),
        ),
        Row::new(
            "time to first byte, cold blob GET alone vs direct",
            "ms",
            med(&r.cold, |(p, _)| p.blob_ttfb) * 1e3,
            direct_ttfb * 1e3,
            Goal::RatioAtMost(1.1),
        ),
        Row::new(
            format!("warm pull (manifest + blob) vs cold pull: speed-up, median of {k}"),
            "s",
            warm,
            cold,
            Goal::RatioAtLeast(10.0),
        )
        .inverted(),
        Row::new(
            "warm blob GET vs unlimited direct download (the machine's ceiling)",
            "MB/s",
            mbps(warm_blob),
            mbps(unlimited),
            Goal::None,
        ),
    ];
    if let Some((wall, c, _)) = &r.concurrent {
        rows.push(Row::new(
            format!("{n} concurrent cold pulls: fixture bytes served vs file size"),
            "bytes",
            c.served as f64,
            size,
            Goal::RatioExactly(1.0),
        ));
        rows.push(Row::new(
            format!("{n} concurrent cold pulls: wall time vs one cold pull"),
            "s",
            *wall,
            cold,
            Goal::None,
        ));
    }
    rows.push(Row::new(
        format!(
            "image form ready after a cold prefetch (POST → job succeeded → `hf/` manifest) vs \
             direct download, median of {k}"
        ),
        "s",
        med(&r.prefetch, |(p, _)| p.total),
        direct,
        Goal::RatioAtMost(1.1),
    ));
    rows.push(Row::new(
        "agent peak RSS over every phase",
        "MiB",
        rss,
        f64::NAN,
        Goal::MantaBelow(128.0),
    ));

    let mut md = String::from("# Hugging Face through Manta vs straight from the hub\n\n");
    let _ = writeln!(
        md,
        "- hub: the `manta-conformance` Hugging Face fixture on 127.0.0.1, repo `{REPO}@{REVISION}` \
         holding one LFS file `{FILE}` (synthetic safetensors, {} bytes = {:.0} MiB, `{}`); \
         `resolve` answers 302 to the fixture's CDN host; all file bodies together capped at \
         **{} MB/s** by the fixture's token bucket\n\
         - direct download (the peer): `GET /{REPO}/resolve/{REVISION}/{FILE}`, the redirect \
         followed to the CDN on a new connection, the body counted and dropped (/dev/null); \
         median of {k}: **{direct:.2} s** ({:.0} MB/s), first byte after {:.1} ms\n\
         - pull through Manta: `GET /v2/hf-raw/{REPO}/manifests/{REVISION}`, then \
         `GET …/blobs/<digest>` on a new connection, read by the same client into the same \
         sink; a cold pull runs on a freshly started agent with an empty data directory\n\
         - unlimited direct download (a second fixture with no cap, same file from the page \
         cache), median of {k}: {unlimited:.2} s ({:.0} MB/s): what client + server + loopback \
         manage on this machine, which bounds any warm pull\n\
         - Manta: `{}`, each agent `manta serve --listen 127.0.0.1:0 --data-dir <{}/…> \
         --hf-endpoint <fixture>`, `RUST_LOG=warn`\n\
         - machine: {} CPUs shared by client, fixture and agent; Linux {}; load average \
         (1, 5, 15 min) {} before, {} after\n",
        model.size,
        size / MIB,
        model.digest,
        args.rate_mbps,
        mbps(direct),
        direct_ttfb * 1e3,
        mbps(unlimited),
        bin.display(),
        args.work_dir.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        r.load_before,
        r.load_after,
    );
    md.push_str(&table_with(&rows, "peer", "ratio"));
    md.push_str(
        "\nThe ratio is Manta ÷ peer, except the warm speed-up (peer ÷ Manta: cold ÷ warm). \
         MB/s = 10^6 bytes per second. Bytes served are file-content bytes the fixture sent \
         (both hosts, response heads excluded); a 1.0 means the file was fetched once.\n\n",
    );
    let _ = writeln!(
        md,
        "Runs, seconds, in order:\n\n\
         - direct: {}; response head (ms): {}; first byte (ms): {}\n\
         - unlimited direct: {}\n\
         - cold pull: {} (blob GET alone: {}); manifest GET (ms): {}; first byte from the \
         manifest GET (ms): {}; blob GET alone: response head (ms) {}, first byte (ms) {}\n\
         - the blob in the cache (fsynced and indexed) after the cold pull's last byte: {}\n\
         - warm pull: {} (blob GET alone: {})\n\
         - image prefetch: {} (every byte downloaded at {}; job succeeded at {})\n\
         - fixture bytes ÷ file size, worst run: direct {:.4}, cold pull {:.4}, warm pull \
         {:.4}, prefetch {:.4}\n\
         - CPU seconds, agent/bench process (client + fixture): direct {}; cold {}; warm {}; \
         prefetch {}\n\
         - agent peak RSS (MiB): cold pulls {:.1}, warm pulls {:.1}, prefetches {:.1}, \
         concurrent pulls {:.1}",
        list(&r.direct, |(p, _)| p.total),
        list(&r.direct, |(p, _)| p.blob_head * 1e3),
        list(&r.direct, |(p, _)| p.ttfb * 1e3),
        list(&r.unlimited, |p| p.total),
        list(&r.cold, |(p, _)| p.total),
        list(&r.cold, |(p, _)| p.blob_total),
        list(&r.cold, |(p, _)| p.manifest * 1e3),
        list(&r.cold, |(p, _)| p.ttfb * 1e3),
        list(&r.cold, |(p, _)| p.blob_head * 1e3),
        list(&r.cold, |(p, _)| p.blob_ttfb * 1e3),
        list(&r.settled, |t| *t),
        list(&r.warm, |(p, _)| p.total),
        list(&r.warm, |(p, _)| p.blob_total),
        list(&r.prefetch, |(p, _)| p.total),
        list(&r.prefetch, |(p, _)| p.downloaded),
        list(&r.prefetch, |(p, _)| p.succeeded),
        worst_served(&r.direct),
        worst_served(&r.cold),
        worst_served(&r.warm),
        r.prefetch
            .iter()
            .map(|(_, c)| c.served as f64 / size)
            .fold(0.0, f64::max),
        cpu(&r.direct),
        cpu(&r.cold),
        cpu(&r.warm),
        cpu(&r.prefetch),
        r.rss_cold,
        r.rss_warm,
        r.rss_prefetch,
        r.rss_concurrent,
    );
    if let Some((wall, c, gets)) = &r.concurrent {
        let _ = writeln!(
            md,
            "- {n} concurrent cold pulls: {wall:.2} s; the fixture served the file's content \
             {gets} time(s), {} bytes; CPU agent {:.1} s, bench {:.1} s",
            c.served, c.agent_cpu, c.bench_cpu
        );
    }
    md
}
