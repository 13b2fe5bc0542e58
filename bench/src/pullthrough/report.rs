//! The pull-through report: one markdown table, Manta next to docker-registry's proxy mode.

use std::fmt::Write as _;
use std::path::Path;

use super::{Args, CacheResult, Image, Phase, ALIAS, MIB, REPO, TAG};
use crate::pull;

/// A goal on Manta's figure in one row.
#[derive(Clone, Copy)]
enum Goal {
    AtMost(f64),
    AtLeast(f64),
    None,
}

struct Row {
    what: String,
    unit: &'static str,
    manta: Option<f64>,
    docker: Option<f64>,
    decimals: usize,
    goal: Goal,
}

fn row(what: impl Into<String>, unit: &'static str, m: Option<f64>, d: Option<f64>) -> Row {
    Row {
        what: what.into(),
        unit,
        manta: m,
        docker: d,
        decimals: 2,
        goal: Goal::None,
    }
}

fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| measure | unit | Manta | docker-registry proxy | goal (Manta) | met |\n\
         | --- | --- | ---: | ---: | --- | --- |\n",
    );
    for r in rows {
        let v = |x: Option<f64>| x.map_or("—".to_owned(), |x| format!("{x:.*}", r.decimals));
        let (goal, met) = match (r.goal, r.manta) {
            (Goal::AtMost(g), Some(m)) => (format!("≤ {g}"), Some(m <= g)),
            (Goal::AtLeast(g), Some(m)) => (format!("≥ {g}"), Some(m >= g)),
            _ => ("—".to_owned(), None),
        };
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {goal} | {met} |",
            r.what,
            r.unit,
            v(r.manta),
            v(r.docker)
        );
    }
    s
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn secs(p: &Phase) -> f64 {
    p.pulled.elapsed.as_secs_f64()
}

fn median_secs(v: &[Phase]) -> f64 {
    median(v.iter().map(secs).collect())
}

fn runs(v: &[Phase]) -> String {
    v.iter()
        .map(|p| format!("{:.2}", secs(p)))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn render(
    args: &Args,
    manta_bin: &Path,
    image: &Image,
    direct: &[Phase],
    ceiling: &[Phase],
    m: &CacheResult,
    d: &CacheResult,
) -> String {
    let img = image.bytes as f64;
    let up = |p: &Phase| p.upstream as f64 / img;
    let max_up = |v: &[Phase]| v.iter().map(up).fold(0.0, f64::max);
    let max_rss = |v: &[Phase]| v.iter().filter_map(|p| p.rss).max().map(|r| r as f64 / MIB);
    let direct_s = median_secs(direct);
    let n = args.concurrent_pulls;
    let k = args.runs;
    let both = |f: &dyn Fn(&CacheResult) -> Option<f64>| (f(m), f(d));
    let mut rows = vec![];
    let mut push = |what: String, unit, (a, b): (Option<f64>, Option<f64>), dec, goal| {
        let mut r = row(what, unit, a, b);
        r.decimals = dec;
        r.goal = goal;
        rows.push(r);
    };
    push(
        format!("cold pull (median of {k})"),
        "s",
        both(&|c| Some(median_secs(&c.cold))),
        2,
        Goal::None,
    );
    push(
        "cold pull ÷ direct pull".into(),
        "×",
        both(&|c| Some(median_secs(&c.cold) / direct_s)),
        2,
        Goal::AtMost(1.05),
    );
    push(
        format!("warm pull (median of {k})"),
        "s",
        both(&|c| Some(median_secs(&c.warm))),
        2,
        Goal::None,
    );
    push(
        "warm speed-up (cold ÷ warm)".into(),
        "×",
        both(&|c| Some(median_secs(&c.cold) / median_secs(&c.warm))),
        1,
        Goal::AtLeast(10.0),
    );
    push(
        "upstream bytes ÷ image, cold pull (worst run)".into(),
        "×",
        both(&|c| Some(max_up(&c.cold))),
        3,
        Goal::None,
    );
    push(
        "upstream bytes ÷ image, warm pull (worst run)".into(),
        "×",
        both(&|c| Some(max_up(&c.warm))),
        3,
        Goal::None,
    );
    push(
        format!("{n} concurrent cold pulls, wall time"),
        "s",
        both(&|c| c.concurrent.as_ref().map(secs)),
        2,
        Goal::None,
    );
    push(
        format!("{n} concurrent cold pulls: upstream bytes ÷ image"),
        "×",
        both(&|c| c.concurrent.as_ref().map(up)),
        3,
        Goal::AtMost(1.01),
    );
    push(
        "peak RSS during a cold pull (largest of the runs)".into(),
        "MiB",
        both(&|c| max_rss(&c.cold)),
        1,
        Goal::None,
    );
    push(
        format!("peak RSS during the {n} concurrent pulls"),
        "MiB",
        both(&|c| {
            c.concurrent
                .as_ref()
                .and_then(|p| max_rss(std::slice::from_ref(p)))
        }),
        1,
        Goal::None,
    );

    let mut md = String::from("# Pull-through: Manta vs docker-registry proxy mode\n\n");
    let _ = writeln!(
        md,
        "- image: OCI manifest, config and {} layers of pseudo-random bytes, {} MiB in all \
         ({} bytes with manifest and config); repo `{REPO}:{TAG}`\n\
         - upstream: `{}` (filesystem storage) behind a token-bucket TCP proxy limiting \
         upstream→client to {} MB/s in aggregate; Manta reaches it as alias `{ALIAS}`\n\
         - pull: manifest by tag, then config and layers, {} blob GETs at a time, each \
         sha256-verified by the client\n\
         - direct pull through the rate limiter (median of {k}): **{:.2} s** ({:.0} MB/s; \
         upstream bytes ÷ image {:.3})\n\
         - the same pull straight from the upstream, no rate limiter (median of {k}): {:.2} s \
         ({:.0} MB/s): the ceiling of client + loopback on this machine, which bounds every \
         warm pull\n\
         - Manta: `{}`; machine: {} CPUs shared by client, servers and rate limiter\n",
        args.layers,
        args.image_mib,
        image.bytes,
        args.docker_registry_bin.display(),
        args.rate_mbps,
        pull::BLOB_CONCURRENCY,
        direct_s,
        img / 1e6 / direct_s,
        max_up(direct),
        median_secs(ceiling),
        img / 1e6 / median_secs(ceiling),
        manta_bin.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    md.push_str(&table(&rows));
    md.push_str(
        "\nUpstream bytes are everything the rate limiter forwarded upstream→client during the \
         phase (response heads included), divided by the image's bytes; 1.0 means each byte \
         was fetched once. The goal on concurrent pulls is 1.0 (≤ 1.01 allows for heads and \
         manifest re-checks). Every cold pull ran on a fresh instance with empty storage.\n\n",
    );
    let _ = writeln!(
        md,
        "Runs (seconds, in order): direct {}; unlimited {}; Manta cold {}, warm {}; \
         docker-registry proxy cold {}, warm {}",
        runs(direct),
        runs(ceiling),
        runs(&m.cold),
        runs(&m.warm),
        runs(&d.cold),
        runs(&d.warm)
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn table_marks_goals() {
        let mut a = row("cold ÷ direct", "×", Some(1.02), Some(1.5));
        a.goal = Goal::AtMost(1.05);
        let mut b = row("speed-up", "×", Some(3.0), None);
        b.goal = Goal::AtLeast(10.0);
        let t = table(&[a, b]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[2],
            "| cold ÷ direct | × | 1.02 | 1.50 | ≤ 1.05 | yes |"
        );
        assert_eq!(lines[3], "| speed-up | × | 3.00 | — | ≥ 10 | **no** |");
    }
}
