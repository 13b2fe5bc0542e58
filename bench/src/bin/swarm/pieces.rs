//! `--engine pieces`: a striped pull with each node's real piece scheduler.
//!
//! The fluid engine simulates each stripe as a swarm of its own, each node reading it as one
//! stream at a k-th of its link. This one is what the agent does, piece by piece: every node
//! but the origin fetcher locates each stripe's parent through the real `Tracker` (asking again
//! every 200 ms while it is told to wait, settling after 1 s, as `Routing::stripe_sources`),
//! then one real `Schedule` over its k parents decides which piece to ask of which, within the
//! agent's bounds (two pieces per source, eight per blob, 32 past the first missing), and takes
//! back a late piece. Each piece read is a flow: a node's upload and download are shared
//! max-min fairly among its flows, and a flow reads its piece's bytes as they land at its
//! source (as the agent's peers do). The origin fetcher reads the blob from the origin as one
//! stream. Time advances in fixed steps (`--step`), not events.
//!
//! Failures: at `--fail-at`, `--fail-frac` of the nodes die (the origin fetcher among them with
//! `--kill-origin-fetcher`). A reader notices a dead parent after `--detect`: its pieces in
//! flight fail (`Schedule::failed`), and each stripe left without a source is located again
//! from where the node stands (`have` > 0, the dead excluded), as the agent's leader does; a
//! stripe nobody else has the rest of is read from the origin, piece by piece. The owners are
//! one tracker (no owner dies).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use manta_peer::pieces::{piece_count, piece_range};
use manta_peer::proto::{Announce, Event, LocateReply, LocateRequest, Stripe};
use manta_peer::schedule::{Limits, Schedule, SourceSpec};
use manta_peer::tracker::{Tracker, TrackerOptions};

use super::{Outcome, Params, Rng};

/// A node asks again for a stripe it was told to wait for this often...
const ASK_AGAIN: f64 = 0.2;
/// ...and takes a parent past its share after this many asks (`STRIPE_ASKS / 2`).
const SETTLE_AFTER: u32 = 5;
/// A node tells its stripes' owners how it reads them this often (`ANNOUNCE_EVERY`).
const ANNOUNCE_EVERY: f64 = 2.0;
/// Late pieces are looked for this often (the agent's leader tick).
const TICK: f64 = 0.2;

/// Where a piece is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Src {
    Node(usize),
    Origin,
}

/// One piece read in flight.
struct Flow {
    src: Src,
    dst: usize,
    piece: u64,
    attempt: u64,
    len: f64,
    /// Bytes read so far.
    done: f64,
    rate: f64,
}

struct Node {
    addr: String,
    home: u32,
    alive: bool,
    /// Per stripe, the parent (`None` until located, or while located again).
    parent: Vec<Option<Src>>,
    /// The schedule's sources, by its index.
    srcs: Vec<Src>,
    /// Peers found dead, not to be named again (`exclude`).
    exclude: Vec<String>,
    /// Pieces in flight from a dead parent fail at this time.
    noticed: Vec<(f64, usize)>,
    asks: u32,
    sched: Option<Schedule>,
    /// Bytes landed of each piece (complete ones at their length).
    landed: Vec<f64>,
    done: Option<f64>,
}

pub fn run(p: &Params) -> Outcome {
    let wall = Instant::now();
    let base = Instant::now();
    let at = |t: f64| base + Duration::from_secs_f64(t);
    let k = p.stripes.max(2);
    let size = p.size;
    let pieces = piece_count(size);
    let digest = format!("sha256:{:064x}", p.seed);
    let mut sorted: Vec<(String, usize)> = (0..p.n)
        .map(|i| {
            (
                format!("10.{}.{}.{}:5001", i >> 16, (i >> 8) & 255, i & 255),
                i,
            )
        })
        .collect();
    sorted.sort();
    let mut nodes: Vec<Node> = (0..p.n)
        .map(|_| Node {
            addr: String::new(),
            home: 0,
            alive: true,
            parent: vec![None; k as usize],
            srcs: Vec::new(),
            exclude: Vec::new(),
            noticed: Vec::new(),
            asks: 0,
            sched: None,
            landed: vec![0.0; pieces as usize],
            done: None,
        })
        .collect();
    for (rank, (addr, i)) in sorted.iter().enumerate() {
        nodes[*i].addr = addr.clone();
        nodes[*i].home = (rank as u32) % k;
    }
    let index: HashMap<String, usize> = sorted.iter().cloned().collect();
    let homes_of = |s: u32, me: usize, nodes: &[Node]| {
        nodes
            .iter()
            .enumerate()
            .filter(|(j, n)| *j != me && n.home == s)
            .count() as u32
    };
    // (No owner dies: each key's first owner answers every locate, so one tracker holds them.)
    let mut tracker = Tracker::new(TrackerOptions::default());
    let mut out = Outcome::default();
    let len = |piece: u64| {
        let (a, b) = piece_range(size, piece);
        (b - a) as f64
    };
    // Node 0 fetches from the origin: the root of every stripe's tree, as it tells each
    // stripe's owners as it starts.
    let root = 0;
    let announce = |t: &mut Tracker, node: &Node, s: u32, have: u64, from: Option<&Node>, now| {
        t.announce(
            &Announce {
                digest: digest.clone(),
                node: node.addr.clone(),
                event: Event::Progress {
                    have,
                    size,
                    origin: from.is_none(),
                    from: from.map(|f| f.addr.clone()),
                    also: Vec::new(),
                },
                stripe: Some(s),
                home: Some(node.home),
                pieces: None,
            },
            now,
        )
    };
    for s in 0..k {
        announce(&mut tracker, &nodes[root], s, 0, None, at(0.0));
    }
    // Who dies, and when.
    let mut dying: Vec<usize> = Vec::new();
    if p.fail_frac > 0.0 {
        let count = ((p.fail_frac * p.n as f64).round() as usize).max(1);
        if p.kill_origin_fetcher {
            dying.push(root);
        }
        let mut rng = Rng(p.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ p.n as u64);
        let mut pool: Vec<usize> = (0..p.n).filter(|i| !dying.contains(i)).collect();
        while dying.len() < count && !pool.is_empty() {
            let x = rng.below(pool.len());
            dying.push(pool.swap_remove(x));
        }
    }
    let mut killed = false;
    let origin = p.n; // the origin's index among the uploaders
    let mut origin_pos = 0.0f64;
    let mut flows: Vec<Flow> = Vec::new();
    let dt = p.step;
    let (mut t, mut next_ask, mut next_tick, mut next_announce) = (0.0, 0.0, TICK, ANNOUNCE_EVERY);
    let mut remaining = p.n;
    // Locate stripe `s` for node `i` holding a prefix of `have` bytes; `true` when it has a
    // source for it now.
    let locate = |tracker: &mut Tracker, nodes: &mut [Node], i: usize, s: u32, have: u64, now| {
        let req = LocateRequest {
            digest: digest.clone(),
            node: Some(nodes[i].addr.clone()),
            have,
            exclude: nodes[i].exclude.clone(),
            avoid: Vec::new(),
            probe: false,
            settle: have > 0 || nodes[i].asks > SETTLE_AFTER,
            stripe: Some(Stripe {
                index: s,
                count: k,
                home: nodes[i].home,
                homes: homes_of(s, i, nodes),
            }),
        };
        match tracker.locate(&req, now) {
            LocateReply::Follow { from, .. } => {
                nodes[i].parent[s as usize] = index.get(&from).map(|&j| Src::Node(j));
            }
            // Resuming a stripe nobody else has the rest of: read it from the origin.
            LocateReply::Fetch if have > 0 => nodes[i].parent[s as usize] = Some(Src::Origin),
            LocateReply::Fetch => {}
        }
        nodes[i].parent[s as usize].is_some()
    };
    while remaining > 0 && t < p.max_time {
        let now = at(t);
        if !killed && !dying.is_empty() && t >= p.fail_at {
            killed = true;
            for &d in &dying {
                nodes[d].alive = false;
                if nodes[d].done.is_none() {
                    remaining -= 1;
                }
                out.dead += 1;
                flows.retain(|f| f.dst != d);
                // Its readers notice after `detect`.
                for r in flows
                    .iter()
                    .filter(|f| f.src == Src::Node(d))
                    .map(|f| f.dst)
                {
                    if !nodes[r].noticed.iter().any(|x| x.1 == d) {
                        nodes[r].noticed.push((t + p.detect, d));
                    }
                }
            }
            out.killed.clone_from(&dying);
        }
        // Locate the stripes not located yet, every node at once, as the agent does.
        if t >= next_ask {
            next_ask += ASK_AGAIN;
            for i in 0..p.n {
                if i == root || !nodes[i].alive || nodes[i].sched.is_some() {
                    continue;
                }
                nodes[i].asks += 1;
                for s in 0..k {
                    if nodes[i].parent[s as usize].is_none() {
                        out.locates += 1;
                        locate(&mut tracker, &mut nodes, i, s, 0, now);
                    }
                }
                let parents: Option<Vec<Src>> = nodes[i].parent.iter().copied().collect();
                if let Some(parents) = parents {
                    let sources = parents
                        .iter()
                        .enumerate()
                        .map(|(s, src)| SourceSpec {
                            stripe: Some((s as u32, k)),
                            ..SourceSpec::any(source_addr(&nodes, *src), None)
                        })
                        .collect();
                    nodes[i].srcs = parents;
                    nodes[i].sched = Some(Schedule::new(size, 0, sources, Limits::default()));
                }
            }
        }
        // A dead parent noticed: its pieces in flight fail, and each stripe left without a
        // source is located again from where the node stands.
        for i in 0..p.n {
            let due: Vec<usize> = nodes[i]
                .noticed
                .iter()
                .filter(|x| x.0 <= t)
                .map(|x| x.1)
                .collect();
            if due.is_empty() || !nodes[i].alive {
                continue;
            }
            nodes[i].noticed.retain(|x| x.0 > t);
            for d in due {
                let addr = nodes[d].addr.clone();
                if !nodes[i].exclude.contains(&addr) {
                    nodes[i].exclude.push(addr);
                }
                let gone: Vec<(u64, u64)> = flows
                    .iter()
                    .filter(|f| f.dst == i && f.src == Src::Node(d))
                    .map(|f| (f.piece, f.attempt))
                    .collect();
                flows.retain(|f| !(f.dst == i && f.src == Src::Node(d)));
                let node = &mut nodes[i];
                if let Some(sched) = node.sched.as_mut() {
                    for (piece, attempt) in gone {
                        sched.failed(piece, attempt, true);
                        node.landed[piece as usize] = 0.0;
                    }
                }
                for par in node.parent.iter_mut() {
                    if *par == Some(Src::Node(d)) {
                        *par = None;
                    }
                }
            }
            let Some(sched) = nodes[i].sched.as_ref() else {
                continue;
            };
            let have = piece_range(size, sched.prefix().min(pieces - 1)).0.max(1);
            for s in 0..k {
                if nodes[i].parent[s as usize].is_some() {
                    continue;
                }
                out.relocates += 1;
                if locate(&mut tracker, &mut nodes, i, s, have, now) {
                    let src = nodes[i].parent[s as usize].unwrap_or(Src::Origin);
                    let spec = SourceSpec {
                        stripe: Some((s, k)),
                        ..SourceSpec::any(source_addr(&nodes, src), None)
                    };
                    if let Some(sched) = nodes[i].sched.as_mut() {
                        sched.add_source(spec);
                        nodes[i].srcs.push(src);
                    }
                    // A new parent that is dead already is noticed in its turn.
                    if let Src::Node(j) = src {
                        if !nodes[j].alive {
                            nodes[i].noticed.push((t + p.detect, j));
                        }
                    }
                } else {
                    // Nobody named yet: ask again at the next step.
                    nodes[i].noticed.push((t + ASK_AGAIN, usize::MAX));
                }
            }
            nodes[i].noticed.retain(|x| x.1 != usize::MAX || x.0 > t);
        }
        // Ask for what each schedule says, and take back late pieces.
        let tick = t >= next_tick;
        if tick {
            next_tick += TICK;
        }
        let alive: Vec<bool> = nodes.iter().map(|n| n.alive).collect();
        for (i, node) in nodes.iter_mut().enumerate() {
            if !node.alive {
                continue;
            }
            let Some(sched) = node.sched.as_mut() else {
                continue;
            };
            if tick {
                for (piece, attempt, _) in sched.overdue(now) {
                    flows.retain(|f| !(f.dst == i && f.piece == piece && f.attempt == attempt));
                    node.landed[piece as usize] = 0.0;
                }
            }
            while let Some(a) = sched.next(now) {
                node.landed[a.piece as usize] = 0.0;
                let src = node.srcs[a.source];
                // Asked of a dead node: the read fails once it is noticed.
                if let Src::Node(j) = src {
                    if !alive[j] && !node.noticed.iter().any(|x| x.1 == j) {
                        node.noticed.push((t + p.detect, j));
                    }
                }
                flows.push(Flow {
                    src,
                    dst: i,
                    piece: a.piece,
                    attempt: a.attempt,
                    len: len(a.piece),
                    done: 0.0,
                    rate: 0.0,
                });
            }
        }
        // Share the links: progressive filling, each flow also capped by the bytes its source
        // has of its piece and it has not read yet.
        let root_reads = nodes[root].alive && nodes[root].done.is_none();
        let up_of = |src: Src| match src {
            Src::Node(j) => j,
            Src::Origin => origin,
        };
        let caps: Vec<f64> = flows
            .iter()
            .map(|f| {
                let avail = match f.src {
                    Src::Origin => f.len,
                    Src::Node(j) if !nodes[j].alive => 0.0,
                    Src::Node(j) if nodes[j].done.is_some() => f.len,
                    Src::Node(j) if j == root => {
                        (origin_pos - piece_range(size, f.piece).0 as f64).clamp(0.0, f.len)
                    }
                    Src::Node(j) => nodes[j].landed[f.piece as usize],
                };
                ((avail - f.done) / dt).max(0.0)
            })
            .collect();
        let mut up = vec![p.bw; p.n + 1];
        up[origin] = p.origin_rate;
        let mut down = vec![p.bw; p.n];
        let mut root_rate = 0.0;
        let mut frozen: Vec<bool> = caps.iter().map(|c| *c <= 0.0).collect();
        let mut root_frozen = !root_reads;
        for f in flows.iter_mut() {
            f.rate = 0.0;
        }
        loop {
            let mut n_up = vec![0usize; p.n + 1];
            let mut n_down = vec![0usize; p.n];
            for (f, _) in flows.iter().zip(&frozen).filter(|(_, z)| !**z) {
                n_up[up_of(f.src)] += 1;
                n_down[f.dst] += 1;
            }
            if !root_frozen {
                n_up[origin] += 1;
                n_down[root] += 1;
            }
            let mut delta = f64::INFINITY;
            for ((f, c), z) in flows.iter().zip(&caps).zip(&frozen) {
                if !*z {
                    let u = up_of(f.src);
                    delta = delta
                        .min(up[u] / n_up[u] as f64)
                        .min(down[f.dst] / n_down[f.dst] as f64)
                        .min(c - f.rate);
                }
            }
            if !root_frozen {
                delta = delta
                    .min(up[origin] / n_up[origin] as f64)
                    .min(down[root] / n_down[root] as f64);
            }
            if !delta.is_finite() {
                break;
            }
            let delta = delta.max(0.0);
            for (f, z) in flows.iter_mut().zip(&frozen) {
                if !*z {
                    f.rate += delta;
                    up[up_of(f.src)] -= delta;
                    down[f.dst] -= delta;
                }
            }
            if !root_frozen {
                root_rate += delta;
                up[origin] -= delta;
                down[root] -= delta;
            }
            // Freeze what is saturated.
            let eps = 1e-6 * p.bw;
            let mut any = false;
            for (i, f) in flows.iter().enumerate() {
                if !frozen[i]
                    && (up[up_of(f.src)] <= eps || down[f.dst] <= eps || f.rate >= caps[i] - eps)
                {
                    frozen[i] = true;
                    any = true;
                }
            }
            if !root_frozen && (up[origin] <= eps || down[root] <= eps) {
                root_frozen = true;
                any = true;
            }
            if !any || (frozen.iter().all(|z| *z) && root_frozen) {
                break;
            }
        }
        // Advance.
        t += dt;
        let now = at(t);
        if root_reads {
            let before = origin_pos;
            origin_pos = (origin_pos + root_rate * dt).min(size as f64);
            out.origin_bytes += origin_pos - before;
            if origin_pos >= size as f64 {
                nodes[root].done = Some(t);
                remaining -= 1;
            }
        }
        let mut finished: Vec<usize> = Vec::new();
        for (i, f) in flows.iter_mut().enumerate() {
            let before = f.done;
            f.done = (f.done + f.rate * dt).min(f.len);
            // (Within a byte is all of it: rates shared in floating point never add up exactly.)
            if f.len - f.done < 1.0 {
                f.done = f.len;
            }
            if f.src == Src::Origin {
                out.origin_bytes += f.done - before;
            }
            nodes[f.dst].landed[f.piece as usize] = f.done;
            if f.done >= f.len {
                finished.push(i);
            }
        }
        for &i in finished.iter().rev() {
            let f = flows.swap_remove(i);
            let node = &mut nodes[f.dst];
            let Some(sched) = node.sched.as_mut() else {
                continue;
            };
            sched.done(f.piece, f.attempt, now);
            if sched.finished() && node.done.is_none() {
                node.done = Some(t);
                remaining -= 1;
            }
        }
        // Every node tells its stripes' owners how it reads them (they forget silent ones).
        if t >= next_announce {
            next_announce += ANNOUNCE_EVERY;
            for i in (0..p.n).filter(|&i| nodes[i].alive) {
                let have = nodes[i]
                    .sched
                    .as_ref()
                    .map_or(0, |sc| piece_range(size, sc.prefix().min(pieces - 1)).0);
                for s in 0..k {
                    let src = match (i == root, nodes[i].parent[s as usize]) {
                        (true, _) => Some(None),
                        (false, Some(Src::Origin)) => Some(None),
                        (false, Some(Src::Node(j))) => Some(Some(j)),
                        (false, None) => None,
                    };
                    if let Some(from) = src {
                        let from = from.map(|j| &nodes[j]);
                        announce(&mut tracker, &nodes[i], s, have, from, now);
                    }
                }
            }
            tracker.expire(now);
        }
        out.events += 1;
    }
    // The trees: how deep, and the most readers of one node in one stripe.
    for s in 0..k as usize {
        let mut readers: HashMap<usize, usize> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            if let Some(Src::Node(j)) = n.parent[s] {
                *readers.entry(j).or_default() += 1;
                let (mut x, mut d) = (i, 0u32);
                while let Some(Src::Node(y)) = nodes[x].parent[s].filter(|_| d <= p.n as u32) {
                    x = y;
                    d += 1;
                }
                out.max_depth = out.max_depth.max(d);
            }
        }
        out.max_fanout = out
            .max_fanout
            .max(readers.values().copied().max().unwrap_or(0));
    }
    out.times = nodes.iter().filter(|n| n.alive).map(|n| n.done).collect();
    out.sim_end = t;
    out.wall = wall.elapsed();
    out
}

/// The address a schedule knows a source by.
fn source_addr(nodes: &[Node], src: Src) -> String {
    match src {
        Src::Node(j) => nodes[j].addr.clone(),
        Src::Origin => "origin".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{plan, Args};

    #[test]
    fn a_striped_pull_reaches_every_node_once_from_the_origin_through_shallow_trees() {
        let args = Args::parse_from([
            "swarm",
            "--engine",
            "pieces",
            "--nodes",
            "24",
            "--size",
            "64MiB",
            "--stripes",
            "4",
            "--origin-rate",
            "200Mbit",
            "--fail-frac",
            "0",
        ]);
        let p = &plan(&args).unwrap()[0];
        let o = super::run(p);
        // (Simulated time: the same every run.)
        let unit = p.unit();
        let times: Vec<f64> = o
            .times
            .iter()
            .map(|t| t.expect("a node never finished"))
            .collect();
        assert_eq!(times.len(), 24);
        assert!(
            (o.origin_bytes - p.size as f64).abs() < 1.0,
            "{}",
            o.origin_bytes
        );
        assert!(o.max_depth <= 4, "a tree {} deep", o.max_depth);
        let last = times.iter().copied().fold(0.0, f64::max);
        assert!(
            last < 1.5 * unit,
            "the last node at {:.2} × S/B",
            last / unit
        );
        // Nobody is faster than its link.
        assert!(times.iter().all(|t| *t >= unit), "{times:?}");
    }

    #[test]
    fn when_the_root_and_others_die_the_survivors_finish_and_the_origin_sends_little_again() {
        let args = Args::parse_from([
            "swarm",
            "--engine",
            "pieces",
            "--nodes",
            "40",
            "--size",
            "256MiB",
            "--stripes",
            "4",
            "--origin-rate",
            "200Mbit",
            "--fail-frac",
            "0.1",
            "--fail-at",
            "0.4",
        ]);
        let p = &plan(&args).unwrap()[0];
        let o = super::run(p);
        assert_eq!((o.dead, o.killed.contains(&0)), (4, true), "{:?}", o.killed);
        assert_eq!(o.times.len(), 36);
        assert!(
            o.times.iter().all(Option::is_some),
            "a survivor never finished"
        );
        // Each stripe left without its root is read from the origin from where it stood: what
        // the root had and had not passed on yet (a piece per stripe at most) is read twice.
        assert!(o.relocates >= 4, "{} stripes located again", o.relocates);
        let sent = o.origin_bytes / p.size as f64;
        assert!(
            (1.0..1.1).contains(&sent),
            "the origin sent {sent:.3} × the file"
        );
    }

    #[test]
    fn the_engine_refuses_what_it_does_not_simulate() {
        for argv in [
            ["swarm", "--engine", "pieces", "--stripes", "1"].as_slice(),
            [
                "swarm",
                "--engine",
                "pieces",
                "--stripes",
                "4",
                "--peers-off",
            ]
            .as_slice(),
        ] {
            let args = Args::try_parse_from(argv).unwrap();
            assert!(plan(&args).is_err(), "{argv:?}");
        }
    }
}
