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
//! stream. Time advances in fixed steps (`--step`), not events. No failures.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use manta_peer::pieces::{piece_count, piece_range};
use manta_peer::proto::{Announce, Event, LocateReply, LocateRequest, Stripe};
use manta_peer::schedule::{Limits, Schedule, SourceSpec};
use manta_peer::tracker::{Tracker, TrackerOptions};

use super::{Outcome, Params};

/// A node asks again for a stripe it was told to wait for this often...
const ASK_AGAIN: f64 = 0.2;
/// ...and takes a parent past its share after this many asks (`STRIPE_ASKS / 2`).
const SETTLE_AFTER: u32 = 5;
/// A node tells its stripes' owners how it reads them this often (`ANNOUNCE_EVERY`).
const ANNOUNCE_EVERY: f64 = 2.0;
/// Late pieces are looked for this often (the agent's leader tick).
const TICK: f64 = 0.2;

/// One piece read in flight.
struct Flow {
    src: usize,
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
    /// Per stripe, the parent (`None` until located).
    parent: Vec<Option<usize>>,
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
            parent: vec![None; k as usize],
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
    // (No failures: each key's first owner answers every locate, so one tracker holds them.)
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
    let mut origin_pos = 0.0f64;
    let mut flows: Vec<Flow> = Vec::new();
    let dt = p.step;
    let (mut t, mut next_ask, mut next_tick, mut next_announce) = (0.0, 0.0, TICK, ANNOUNCE_EVERY);
    let mut remaining = p.n;
    while remaining > 0 && t < p.max_time {
        let now = at(t);
        // Locate the stripes not located yet, every node at once, as the agent does.
        if t >= next_ask {
            next_ask += ASK_AGAIN;
            for i in 0..p.n {
                if i == root || nodes[i].sched.is_some() {
                    continue;
                }
                let settle = nodes[i].asks >= SETTLE_AFTER;
                nodes[i].asks += 1;
                for s in 0..k {
                    if nodes[i].parent[s as usize].is_some() {
                        continue;
                    }
                    let req = LocateRequest {
                        digest: digest.clone(),
                        node: Some(nodes[i].addr.clone()),
                        have: 0,
                        exclude: Vec::new(),
                        avoid: Vec::new(),
                        probe: false,
                        settle,
                        stripe: Some(Stripe {
                            index: s,
                            count: k,
                            home: nodes[i].home,
                            homes: homes_of(s, i, &nodes),
                        }),
                    };
                    out.locates += 1;
                    if let LocateReply::Follow { from, .. } = tracker.locate(&req, now) {
                        nodes[i].parent[s as usize] = index.get(&from).copied();
                    }
                }
                if nodes[i].parent.iter().all(Option::is_some) {
                    let sources = (0..k)
                        .map(|s| SourceSpec {
                            stripe: Some((s, k)),
                            ..SourceSpec::any(
                                nodes[nodes[i].parent[s as usize].unwrap_or(root)]
                                    .addr
                                    .clone(),
                                None,
                            )
                        })
                        .collect();
                    nodes[i].sched = Some(Schedule::new(size, 0, sources, Limits::default()));
                }
            }
        }
        // Ask for what each schedule says, and take back late pieces.
        let tick = t >= next_tick;
        if tick {
            next_tick += TICK;
        }
        for (i, node) in nodes.iter_mut().enumerate() {
            let Some(sched) = node.sched.as_mut() else {
                continue;
            };
            if tick {
                for (piece, attempt, _) in sched.overdue(now) {
                    flows.retain(|f| !(f.dst == i && f.piece == piece && f.attempt == attempt));
                    node.landed[piece as usize] = 0.0;
                    out.relocates += 1;
                }
            }
            while let Some(a) = sched.next(now) {
                let src = node.parent[(a.piece % u64::from(k)) as usize].unwrap_or(root);
                node.landed[a.piece as usize] = 0.0;
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
        let root_reads = nodes[root].done.is_none();
        let caps: Vec<f64> = flows
            .iter()
            .map(|f| {
                let avail = if nodes[f.src].done.is_some() {
                    f.len
                } else if f.src == root {
                    (origin_pos - piece_range(size, f.piece).0 as f64).clamp(0.0, f.len)
                } else {
                    nodes[f.src].landed[f.piece as usize]
                };
                ((avail - f.done) / dt).max(0.0)
            })
            .collect();
        let mut up = vec![p.bw; p.n];
        let mut down = vec![p.bw; p.n];
        let mut origin_left = p.origin_rate;
        let mut root_rate = 0.0;
        let mut frozen: Vec<bool> = caps.iter().map(|c| *c <= 0.0).collect();
        let mut root_frozen = !root_reads;
        for f in flows.iter_mut() {
            f.rate = 0.0;
        }
        loop {
            let mut n_up = vec![0usize; p.n];
            let mut n_down = vec![0usize; p.n];
            for (f, _) in flows.iter().zip(&frozen).filter(|(_, z)| !**z) {
                n_up[f.src] += 1;
                n_down[f.dst] += 1;
            }
            if !root_frozen {
                n_down[root] += 1;
            }
            let mut delta = f64::INFINITY;
            for (f, z) in flows.iter().zip(&frozen) {
                if !*z {
                    delta = delta
                        .min(up[f.src] / n_up[f.src] as f64)
                        .min(down[f.dst] / n_down[f.dst] as f64);
                }
            }
            for (f, (c, z)) in flows.iter().zip(caps.iter().zip(&frozen)) {
                if !*z {
                    delta = delta.min(c - f.rate);
                }
            }
            if !root_frozen {
                delta = delta.min(origin_left).min(down[root] / n_down[root] as f64);
            }
            if !delta.is_finite() {
                break;
            }
            let delta = delta.max(0.0);
            for (f, z) in flows.iter_mut().zip(&frozen) {
                if !*z {
                    f.rate += delta;
                    up[f.src] -= delta;
                    down[f.dst] -= delta;
                }
            }
            if !root_frozen {
                root_rate += delta;
                origin_left -= delta;
                down[root] -= delta;
            }
            // Freeze what is saturated.
            let eps = 1e-6 * p.bw;
            let mut any = false;
            for (i, f) in flows.iter().enumerate() {
                if !frozen[i] && (up[f.src] <= eps || down[f.dst] <= eps || f.rate >= caps[i] - eps)
                {
                    frozen[i] = true;
                    any = true;
                }
            }
            if !root_frozen && (origin_left <= eps || down[root] <= eps) {
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
            origin_pos = (origin_pos + root_rate * dt).min(size as f64);
            out.origin_bytes = origin_pos;
            if origin_pos >= size as f64 {
                nodes[root].done = Some(t);
                remaining -= 1;
            }
        }
        let mut finished: Vec<usize> = Vec::new();
        for (i, f) in flows.iter_mut().enumerate() {
            f.done = (f.done + f.rate * dt).min(f.len);
            // (Within a byte is all of it: rates shared in floating point never add up exactly.)
            if f.len - f.done < 1.0 {
                f.done = f.len;
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
            for i in 0..p.n {
                for s in 0..k {
                    let have = nodes[i]
                        .sched
                        .as_ref()
                        .map_or(0, |sc| piece_range(size, sc.prefix().min(pieces - 1)).0);
                    match (i == root, nodes[i].parent[s as usize]) {
                        (true, _) => announce(&mut tracker, &nodes[i], s, have, None, now),
                        (false, Some(j)) => {
                            announce(&mut tracker, &nodes[i], s, have, Some(&nodes[j]), now)
                        }
                        (false, None) => {}
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
            if let Some(j) = n.parent[s] {
                *readers.entry(j).or_default() += 1;
                let (mut x, mut d) = (i, 0u32);
                while let Some(y) = nodes[x].parent[s].filter(|_| d <= p.n as u32) {
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
    out.times = nodes.iter().map(|n| n.done).collect();
    out.sim_end = t;
    out.wall = wall.elapsed();
    out
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
    fn the_engine_refuses_what_it_does_not_simulate() {
        // Failures (the fluid engine simulates them), or no stripes.
        for (stripes, fail) in [("4", "0.05"), ("1", "0")] {
            let argv = [
                "swarm",
                "--engine",
                "pieces",
                "--stripes",
                stripes,
                "--fail-frac",
                fail,
            ];
            let args = Args::try_parse_from(argv).unwrap();
            assert!(plan(&args).is_err(), "{argv:?}");
        }
    }
}
