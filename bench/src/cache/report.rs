//! The cache report: one markdown table (eviction in absolute figures, start-up next to
//! docker-registry), then every run.

use std::fmt::Write as _;
use std::path::Path;

use super::{mib, Args, EvictRun, Exit, Results, StartRun};
use crate::median;
use crate::report::{table_with, Goal, Row};

fn med<T>(v: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(v.iter().map(f).collect())
}

fn list<T>(v: &[T], f: impl Fn(&T) -> f64, precision: usize) -> String {
    v.iter()
        .map(|x| format!("{:.*}", precision, f(x)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The measured starts that followed `after`.
fn after(v: &[StartRun], after: Exit) -> Vec<StartRun> {
    v.iter().filter(|s| s.after == after).cloned().collect()
}

fn opt_med(v: &[StartRun], f: impl Fn(&StartRun) -> Option<f64>) -> f64 {
    let xs: Vec<f64> = v.iter().filter_map(f).collect();
    median(xs)
}

fn fmt_start(s: &StartRun) -> String {
    format!(
        "{}ready {:.3} s{}",
        s.listen
            .map_or(String::new(), |l| format!("listening {l:.3} s, ")),
        s.ready,
        s.indexed
            .map_or(String::new(), |n| format!(" ({n:.0} blobs indexed)"))
    )
}

pub(super) fn render(args: &Args, bin: &Path, r: &Results) -> String {
    let c = &r.evict_contents;
    let k = r.evict.len();
    let runs = args.startup_runs;
    let evict_wall = med(&r.evict, |e| e.wall);
    let rate = med(&r.evict, |e| e.blobs_deleted as f64 / e.wall);
    let shape = if c.images > 0 {
        format!(
            "{} cached images of {} blobs",
            c.images, args.blobs_per_image
        )
    } else {
        "bare cache blobs".to_string()
    };
    let mut rows = vec![
        Row::new(
            format!(
                "evict {} cache blobs ({shape}) with `POST /manta/v1/gc`, wall time, median of {k}",
                c.cache_blobs
            ),
            "s",
            evict_wall,
            f64::NAN,
            Goal::None,
        ),
        Row::new(
            "eviction rate (blobs deleted ÷ wall time), median",
            "blobs/s",
            rate,
            f64::NAN,
            Goal::None,
        ),
        Row::new(
            "agent CPU during the eviction ÷ its wall time, median",
            "cores",
            med(&r.evict, |e| e.agent_cpu / e.wall),
            f64::NAN,
            Goal::None,
        ),
        Row::new(
            "agent peak RSS during the eviction (VmHWM, worst run)",
            "MiB",
            r.evict.iter().map(|e| e.rss_evict).fold(0.0, f64::max),
            f64::NAN,
            Goal::None,
        ),
        Row::new(
            format!(
                "readers' p99 during the eviction vs the same load idle ({:.0} GET/s of {} KiB pushed blobs), median of {k}",
                args.reader_rate, args.pushed_blob_kib
            ),
            "ms",
            med(&r.evict, |e| e.during.p99),
            med(&r.evict, |e| e.idle.p99),
            Goal::RatioAtMost(1.5),
        ),
        Row::new(
            "readers' p50 during the eviction vs idle, median",
            "ms",
            med(&r.evict, |e| e.during.p50),
            med(&r.evict, |e| e.idle.p50),
            Goal::None,
        ),
        Row::new(
            format!(
                "readers' p99 during the eviction after its first {} ms (its plan) vs idle, median",
                super::PLAN_WINDOW.as_millis()
            ),
            "ms",
            med(&r.evict, |e| e.during_rest.p99),
            med(&r.evict, |e| e.idle.p99),
            Goal::None,
        ),
        Row::new(
            "the plan alone (dry run): wall time, median",
            "ms",
            med(&r.evict, |e| e.dry_wall * 1e3),
            f64::NAN,
            Goal::None,
        ),
        Row::new(
            "readers' worst latency during the plan alone (`\"dryRun\": true`: the whole index \
             read into a graph) vs idle p99, median",
            "ms",
            med(&r.evict, |e| e.dry.max),
            med(&r.evict, |e| e.idle.p99),
            Goal::None,
        ),
        Row::new(
            "control: readers' p99 with one core kept busy by a spinning process (no eviction) \
             vs idle, median",
            "ms",
            med(&r.evict, |e| e.busy.p99),
            med(&r.evict, |e| e.idle.p99),
            Goal::None,
        ),
    ];
    let (mt, mk) = (
        after(&r.manta_starts, Exit::Term),
        after(&r.manta_starts, Exit::Kill),
    );
    let (dt, dk) = (
        after(&r.docker_starts, Exit::Term),
        after(&r.docker_starts, Exit::Kill),
    );
    let n = r.startup_contents.cache_blobs;
    rows.extend([
        Row::new(
            format!(
                "start-up with {n} indexed blobs after SIGTERM: spawn → ready, median of {runs}"
            ),
            "ms",
            med(&mt, |s| s.ready * 1e3),
            med(&dt, |s| s.ready * 1e3),
            Goal::MantaBelow(1000.0),
        ),
        Row::new(
            format!(
                "start-up with {n} indexed blobs after kill -9: spawn → ready, median of {runs}"
            ),
            "ms",
            med(&mk, |s| s.ready * 1e3),
            med(&dk, |s| s.ready * 1e3),
            Goal::MantaBelow(1000.0),
        ),
        Row::new(
            "start-up after SIGTERM: spawn → \"manta listening\" line, median",
            "ms",
            opt_med(&mt, |s| s.listen.map(|l| l * 1e3)),
            f64::NAN,
            Goal::None,
        ),
        Row::new(
            "start-up after kill -9: spawn → \"manta listening\" line, median",
            "ms",
            opt_med(&mk, |s| s.listen.map(|l| l * 1e3)),
            f64::NAN,
            Goal::None,
        ),
        Row::new(
            "peak RSS at readiness, worst start",
            "MiB",
            r.manta_starts.iter().map(|s| s.hwm).fold(0.0, f64::max),
            if r.docker_starts.is_empty() {
                f64::NAN
            } else {
                r.docker_starts.iter().map(|s| s.hwm).fold(0.0, f64::max)
            },
            Goal::None,
        ),
        Row::new(
            format!(
                "SIGTERM → exit (after {} small uploads), median",
                args.writes_before_exit
            ),
            "ms",
            opt_med(&r.manta_starts, |s| s.shutdown.map(|t| t * 1e3)),
            opt_med(&r.docker_starts, |s| s.shutdown.map(|t| t * 1e3)),
            Goal::None,
        ),
    ]);

    let mut md = String::from("# Cache lifecycle: eviction and start-up\n\n");
    let _ = writeln!(
        md,
        "- Manta: `{}`; agents run with `RUST_LOG=warn` on data directories under `{}` (copied there \
         with `cp -a` from stores built offline under `{}` with the store's own library API: \
         `Store::open_with`, `commit_blob`, the index's `put_manifest`)\n\
         - eviction store: {} cache blobs (`Origin::Upstream`, {shape}; layers of {} KiB, configs \
         of about 150 bytes; {:.1} MiB in all, each image under tag `{}` of its own pull-through \
         repository `{}/bench/cache-NNNNN`) and {} pushed blobs of {} KiB ({:.1} MiB) in `{}`; \
         agent `manta serve --capacity {} --evict-min-age-secs 0` (everything at 80 % of the \
         capacity, below the 85 % high watermark, so nothing is evicted until asked); the request \
         is `POST /manta/v1/gc` `{{\"free\": {}}}` (every cache byte)\n\
         - readers: {} threads, {:.0} GETs per second in all at fixed due times (open loop), \
         round-robin over the pushed blobs, one connection per GET (the raw reader), latency from \
         the due time to the last byte; per run: an idle window of {:.1} s; the same with a \
         shell spinning on one core (the control); then, the readers running throughout (from \
         {:.1} s before), a dry run (`\"dryRun\": true`: the plan alone) and the eviction; the \
         \"during\" window is the requests due between the eviction's POST and its response; \
         each window starts after a warm-up\n\
         - start-up store: {} blobs of {} bytes (`Origin::Upstream`, no manifests) in one \
         repository; docker-registry (the peer, `{}`) gets the same blobs written straight into \
         its filesystem layout (`blobs/sha256/xx/<hex>/data` plus a `_layers` link each); every \
         process gets {} uploads of 1 KiB before it is ended, alternately by SIGTERM and kill -9, \
         so a kill -9 leaves fresh entries in the index's write-ahead log; ready = `/readyz` 200 \
         for Manta, `/v2/` 200 for docker-registry, polled every 2 ms from just before the spawn\n\
         - machine: {} CPUs shared by the agent and the benchmark; Linux {}; load average \
         (1, 5, 15 min) {} before, {} after; page cache warm (nothing dropped)\n",
        bin.display(),
        args.work_dir.display(),
        args.build_dir.display(),
        c.cache_blobs,
        args.cache_blob_kib,
        mib(c.cache_bytes),
        super::build::CACHE_TAG,
        super::build::CACHE_HOST,
        c.pushed.len(),
        args.pushed_blob_kib,
        mib(c.pushed_bytes),
        super::build::PUSHED_REPO,
        r.capacity,
        c.cache_bytes,
        args.reader_threads,
        args.reader_rate,
        args.idle_secs,
        super::WARM_UP.as_secs_f64(),
        n,
        args.startup_blob_bytes,
        args.docker_registry_bin.display(),
        args.writes_before_exit,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        r.load_before,
        r.load_after,
    );
    md.push_str(&table_with(&rows, "peer", "ratio"));
    md.push_str(
        "\nEviction has no peer (— in the peer column): docker-registry cannot evict while it \
         serves; its `garbage-collect` is an offline mark-and-sweep, so there is no reader \
         latency to set beside Manta's. Its figures are absolute, read them with the load \
         average above. The readers' ratio is p99 during ÷ p99 idle. The start-up peer is \
         docker-registry on the same blobs; it reads nothing of its storage at start-up, so its \
         time is the floor of a registry process's start, not a like-for-like reconciliation.\n\n",
    );

    md.push_str("## Does start-up read blob files?\n\n");
    let blob_bytes = r.startup_contents.cache_bytes as f64;
    let rchar = opt_med(&r.manta_starts, |s| s.rchar.map(|b| b as f64));
    let _ = writeln!(
        md,
        "Start-up is `Store::open_with` → `reconcile()` before the listener is bound: open rocksdb \
         (replaying its write-ahead log after a kill -9), walk the upload records (stat each \
         session's temp file), empty `tmp/` (readdir), iterate every blob record and `stat` its \
         file (size must match; sum = space used), then readdir `blobs/<alg>/<xx>/` to remove \
         files no record names. No blob file is opened.\n"
    );
    match &r.traced {
        Some(t) => {
            let _ = writeln!(
                md,
                "- one start under `strace -f -e trace=%file,getdents64` (from spawn to a SIGTERM \
                 right after `/readyz` answered): **{} opens** of blob files, {} stat calls on \
                 blob files ({} blobs indexed), {} `getdents64` calls{}",
                t.opens,
                t.stats,
                n + (2 * runs as u64 + 1) * args.writes_before_exit as u64,
                t.getdents,
                t.example_open
                    .as_ref()
                    .map_or(String::new(), |l| format!("; first open: `{l}`")),
            );
        }
        None => {
            let _ = writeln!(
                md,
                "- {}",
                r.trace_note.as_deref().unwrap_or("strace check not run")
            );
        }
    }
    let _ = writeln!(
        md,
        "- bytes the agent had read (`rchar` of `/proc/<pid>/io`, files and sockets, rocksdb \
         included) when `/readyz` first answered, median over the starts: {:.1} MiB, against \
         {:.1} MiB of blob content; from the storage layer (`read_bytes`): {}\n",
        rchar / crate::MIB,
        blob_bytes / crate::MIB,
        list(
            &r.manta_starts,
            |s| s.read_bytes.map_or(f64::NAN, |b| b as f64 / crate::MIB),
            1
        ) + " MiB"
    );

    md.push_str("## Runs\n\n");
    let _ = writeln!(
        md,
        "Builds: eviction store {:.1} s, start-up store {:.1} s (built, then copied), \
         docker-registry layout {:.1} s.\n",
        r.build_times[0], r.build_times[1], r.build_times[2]
    );
    for (i, e) in r.evict.iter().enumerate() {
        let _ = writeln!(md, "- eviction run {}: {}", i + 1, fmt_evict(e));
    }
    let consistent = r.evict.iter().all(|e| {
        e.blobs_deleted == c.cache_blobs
            && e.dry_blobs == c.cache_blobs
            && e.files_after == c.pushed.len() as u64
            && e.used_after.is_none_or(|u| u == c.pushed_bytes)
    });
    let _ = writeln!(
        md,
        "- consistency: every dry run and eviction named all {} cache blobs, and exactly the {} \
         pushed blob files (and their {} bytes as `used`) were left: {}",
        c.cache_blobs,
        c.pushed.len(),
        c.pushed_bytes,
        if consistent { "yes" } else { "**NO**" }
    );
    let _ = writeln!(
        md,
        "- readers' p99 ratio (during ÷ idle) per run: {}",
        list(&r.evict, |e| e.during.p99 / e.idle.p99, 2)
    );
    for (name, v) in [
        ("Manta", &r.manta_starts),
        ("docker-registry", &r.docker_starts),
    ] {
        for (i, s) in v.iter().enumerate() {
            let after = match s.after {
                Exit::Built => "the offline build (not in the medians)",
                Exit::Term => "SIGTERM",
                Exit::Kill => "kill -9",
            };
            let _ = writeln!(
                md,
                "- {name} start {i}, after {after}: {}; peak RSS {:.1} MiB; rchar {}{}",
                fmt_start(s),
                s.hwm,
                s.rchar.map_or("?".into(), |b| format!("{:.1} MiB", mib(b))),
                s.shutdown
                    .map_or(String::new(), |t| format!("; SIGTERM → exit {t:.3} s")),
            );
        }
    }
    md
}

fn fmt_evict(e: &EvictRun) -> String {
    format!(
        "dry run {:.3} s (would delete {} blobs; readers: {} requests, max {:.2} ms); eviction \
         {:.2} s, {} blobs + {} manifests deleted ({} roots, {:.1} MiB freed; {} kept in use; \
         protected pinned/in use/young {}/{}/{}), {:.0} blobs/s; agent CPU {:.1} s; RSS peak \
         {:.1} MiB (idle {:.1}); blob files {} → {}; space used {} → {} (high watermark {}); \
         readers idle: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} requests at {:.0}/s, {} \
         errors; one core busy: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} requests, {} \
         errors; during: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} requests at {:.0}/s, {} \
         errors (after the first 100 ms: p99 {:.2} ms, max {:.2} ms){}",
        e.dry_wall,
        e.dry_blobs,
        e.dry.requests,
        e.dry.max,
        e.wall,
        e.blobs_deleted,
        e.manifests_deleted,
        e.roots,
        mib(e.freed_bytes),
        e.kept_in_use,
        e.protected[0],
        e.protected[1],
        e.protected[2],
        e.blobs_deleted as f64 / e.wall,
        e.agent_cpu,
        e.rss_evict,
        e.rss_idle,
        e.files_before,
        e.files_after,
        e.used_before.map_or("?".into(), |u| u.to_string()),
        e.used_after.map_or("?".into(), |u| u.to_string()),
        e.high_watermark.map_or("?".into(), |u| u.to_string()),
        e.idle.p50,
        e.idle.p99,
        e.idle.max,
        e.idle.requests,
        e.idle.rate,
        e.idle.errors,
        e.busy.p50,
        e.busy.p99,
        e.busy.max,
        e.busy.requests,
        e.busy.errors,
        e.during.p50,
        e.during.p99,
        e.during.max,
        e.during.requests,
        e.during.rate,
        e.during.errors,
        e.during_rest.p99,
        e.during_rest.max,
        e.during
            .first_error
            .as_ref()
            .or(e.idle.first_error.as_ref())
            .or(e.busy.first_error.as_ref())
            .or(e.dry.first_error.as_ref())
            .map_or(String::new(), |m| format!(" (first: {m})")),
    )
}
