//! `swarm`: a deterministic discrete-event simulator of N agents pulling one blob at once,
//! driving the real peer routing of `manta-peer` (`Tracker::locate`/`announce`/`expire` on each
//! owner, `ring::owners` over the live membership, `pieces::piece_size`) over simulated links
//! and simulated time.
//!
//! The links are a fluid model: rates are constant between events, and an event is scheduled
//! for whatever can change one (a piece verified, a reader catching up with its source, a
//! transfer ending, a node dying, a failure noticed, the membership changing, a stall timer).
//! Nothing sleeps; the tracker is given `base + simulated time` as its `Instant`.
//!
//! `--engine pieces` (pieces.rs) simulates a striped pull piece by piece instead, driving each
//! node's real piece `Schedule` too, in fixed time steps.
//!
//! See bench/README.md ("Swarm simulator") for the model and what it leaves out.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use manta_peer::pieces::piece_size;
use manta_peer::proto::{Announce, Event, LocateReply, LocateRequest, Pieces, Stripe};
use manta_peer::ring;
use manta_peer::tracker::{Tracker, TrackerOptions};

mod pieces;

/// Simulate N nodes pulling one blob through Manta's peer routing (the real `Tracker` and
/// rendezvous ring), over simulated links and time. Prints one markdown table.
///
/// With no flags: N ∈ {8, 1000, 5000} × {no failures, 5 % of the nodes (the origin fetcher
/// among them) dying at 0.3 × S/B}.
#[derive(Parser, Debug, Clone)]
#[command(name = "swarm", version, about)]
struct Args {
    /// Cluster sizes, comma-separated: one run per size and per `--fail-frac`.
    #[arg(long, value_delimiter = ',', default_value = "8,1000,5000")]
    nodes: Vec<usize>,
    /// Blob size (`1GiB`, `512MiB`, `10GB`, or bytes).
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    size: u64,
    /// Each node's link rate, the same up and down (`200Mbit`, `1Gbit`, `25MB` per second).
    #[arg(long, default_value = "200Mbit", value_parser = parse_rate)]
    bandwidth: f64,
    /// The origin's total rate, shared equally by the nodes fetching from it [default: half of
    /// --bandwidth].
    #[arg(long, value_parser = parse_rate)]
    origin_rate: Option<f64>,
    /// Owners per digest (k).
    #[arg(long, default_value_t = 3)]
    owners: usize,
    /// Each node starts its pull at a uniform random time in [0, jitter) (`0`, `2s`, `500ms`).
    #[arg(long, default_value = "0", value_parser = parse_secs)]
    jitter: f64,
    /// Fractions of the nodes that die, comma-separated: one run per value (0: no failure).
    #[arg(long, value_delimiter = ',', default_value = "0,0.05")]
    fail_frac: Vec<f64>,
    /// When they die: a fraction of S/B (`0.3`), or a time (`12s`).
    #[arg(long, default_value = "0.3")]
    fail_at: String,
    /// Whether the node(s) fetching from the origin at --fail-at are among the dead.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    kill_origin_fetcher: bool,
    /// Also kill the digest's first owner (its tracker's state is lost with it).
    #[arg(long)]
    kill_first_owner: bool,
    /// How long a reader of a dead node takes to notice.
    #[arg(long, default_value = "1s", value_parser = parse_secs)]
    detect: f64,
    /// How long a dead node stays in the membership the owners are computed from.
    #[arg(long, default_value = "5s", value_parser = parse_secs)]
    membership_delay: f64,
    /// A node receiving bytes also announces between pieces, at least this often (the agent's
    /// ANNOUNCE_EVERY; checked once a simulated second). A node receiving none announces nothing,
    /// and goes stale in the trackers after 20 s. 0: only at each piece.
    #[arg(long, default_value = "2s", value_parser = parse_secs)]
    announce_every: f64,
    /// Peer reads a node serves at once (the agent's --peer-max-uploads); one more is told it
    /// is busy (429) and locates again, avoiding it. 0: unlimited.
    #[arg(long, default_value_t = 16)]
    max_uploads: usize,
    /// How often each owner calls `Tracker::expire`.
    #[arg(long, default_value = "5s", value_parser = parse_secs)]
    expire_every: f64,
    /// A reader that got no byte from its peer for this long gives it up (bans it and locates
    /// again): the agent's peer stall limit, max(`upstream.timeout_secs` ÷ 2, 10 s). 0: never.
    #[arg(long, default_value = "15s", value_parser = parse_secs)]
    stall_timeout: f64,
    /// After this many peers banned or found busy, a fetch goes to the origin without asking
    /// (the agent's MAX_PEER_TRIES).
    #[arg(long, default_value_t = 6)]
    max_peer_tries: usize,
    /// What a node's peers may read of a blob it is fetching from another peer: `landed`, every
    /// byte as it lands (the agent: they check each piece themselves); `checked`, only pieces it
    /// has checked (the agent before commit 30843c0). Bytes from the origin are read as they land
    /// either way.
    #[arg(long, value_enum, default_value_t = PeerReads::Landed)]
    peer_reads: PeerReads,
    /// Every node fetches from the origin alone (no peers, no tracker): the comparison.
    #[arg(long)]
    peers_off: bool,
    /// The pieces cut into this many stripes (piece i in stripe i mod k), each spread by a
    /// tree of its own (the `Tracker`'s stripe rule: the origin fetcher takes one reader per
    /// stripe, a node whose home stripe it is up to k, others none), as the agent reads large
    /// blobs in large clusters; readers see a parent's bytes as `--peer-reads` says. Each
    /// node's download is split evenly between the stripes, its upload goes to its home stripe
    /// (the origin fetcher's, a k-th to each). 0: off.
    #[arg(long, default_value_t = 0)]
    stripes: u32,
    /// How a striped pull is simulated: `fluid`, each stripe a swarm of its own, each node
    /// reading it as one stream at a k-th of its link; `pieces`, each
    /// node's real piece `Schedule` over its k stripe parents, every piece read a flow on
    /// links shared max-min fairly, in steps of `--step` (see src/bin/swarm/pieces.rs).
    #[arg(long, value_enum, default_value_t = Engine::Fluid)]
    engine: Engine,
    /// The time step of `--engine pieces`.
    #[arg(long, default_value = "10ms", value_parser = parse_secs)]
    step: f64,
    /// Seed of the digest name, the jitter and the choice of the dead.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Runs at once [default: the machine's parallelism].
    #[arg(long)]
    threads: Option<usize>,
    /// Print every routing decision to stderr (for small N).
    #[arg(long)]
    trace: bool,
    /// Give up at this many S/B of simulated time (peers-off adds 2·N·S/origin-rate).
    #[arg(long, default_value_t = 200.0)]
    max_time: f64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    Fluid,
    Pieces,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum PeerReads {
    Landed,
    Checked,
}

fn split_unit(s: &str) -> (f64, String) {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '_'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    (
        num.replace('_', "").parse().unwrap_or(f64::NAN),
        unit.trim().to_ascii_lowercase(),
    )
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let (v, unit) = split_unit(s);
    let mult = match unit.as_str() {
        "" | "b" => 1.0,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => return Err(format!("{s}: unknown unit {unit:?}")),
    };
    let b = v * mult;
    if !b.is_finite() || b < 1.0 {
        return Err(format!("{s}: not a size"));
    }
    Ok(b as u64)
}

/// Bytes per second.
fn parse_rate(s: &str) -> Result<f64, String> {
    let (v, unit) = split_unit(s);
    let mult = match unit.trim_end_matches("/s") {
        "" | "b" => 1.0,
        "kbit" | "kbps" => 1e3 / 8.0,
        "mbit" | "mbps" => 1e6 / 8.0,
        "gbit" | "gbps" => 1e9 / 8.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("{s}: unknown unit {unit:?} (try 200Mbit or 25MB)")),
    };
    let r = v * mult;
    if !r.is_finite() || r <= 0.0 {
        return Err(format!("{s}: not a rate"));
    }
    Ok(r)
}

/// Seconds.
fn parse_secs(s: &str) -> Result<f64, String> {
    let (v, unit) = split_unit(s);
    let mult = match unit.as_str() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "m" | "min" => 60.0,
        _ => return Err(format!("{s}: unknown unit {unit:?}")),
    };
    let t = v * mult;
    if !t.is_finite() || t < 0.0 {
        return Err(format!("{s}: not a duration"));
    }
    Ok(t)
}

/// splitmix64: small, seedable, the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n.max(1)
    }
}

/// One run's parameters.
#[derive(Clone, Debug)]
struct Params {
    n: usize,
    size: u64,
    bw: f64,
    origin_rate: f64,
    k: usize,
    jitter: f64,
    fail_frac: f64,
    /// Seconds.
    fail_at: f64,
    kill_origin_fetcher: bool,
    kill_first_owner: bool,
    detect: f64,
    membership_delay: f64,
    announce_every: f64,
    max_uploads: usize,
    expire_every: f64,
    stall_timeout: f64,
    max_peer_tries: usize,
    /// Peers read a peer-fed node's bytes as they land (not per checked piece).
    landed: bool,
    peers_off: bool,
    seed: u64,
    /// Seconds.
    max_time: f64,
    trace: bool,
    /// Striped (`--stripes`): the stripes, and which one this run is (its `size` is then the
    /// stripe's bytes).
    stripes: u32,
    stripe: Option<u32>,
    /// The whole blob's size (pieces are cut from it).
    full_size: u64,
    /// Striped: the nodes the first stripe's run killed, killed in the others too.
    kill: Option<Vec<usize>>,
    /// Striped, with each node's real piece schedule (`--engine pieces`), in steps of `step`.
    pieces: bool,
    step: f64,
}

impl Params {
    /// S/B: one node alone at its full link rate.
    fn unit(&self) -> f64 {
        self.size as f64 / self.bw
    }

    fn failures(&self) -> bool {
        self.fail_frac > 0.0 || self.kill_first_owner
    }
}

/// Where a node reads the blob from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Src {
    /// Not started, finished, or between sources.
    Idle,
    /// The owners said `Fetch`.
    Origin,
    /// From the origin without the owners' word: none answered, or the peer tries ran out (or
    /// `--peers-off`).
    Alone,
    Peer(usize),
}

impl Src {
    fn origin_fed(self) -> bool {
        matches!(self, Src::Origin | Src::Alone)
    }
}

/// Something whose readers share an upload: the origin, or a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Up {
    Origin,
    Node(usize),
}

#[derive(Clone, Copy, Debug)]
enum Ev {
    Start(usize),
    /// The next thing that can happen to node `.0`'s download (stale unless `.1` is its version).
    Step(usize, u64),
    Fail,
    /// Node `.0` notices that `.1`, which it reads from, is dead.
    Detect(usize, usize),
    /// Node `.0` has had no byte for the stall timeout (stale unless `.1` is its stall version).
    Stall(usize, u64),
    Membership,
    Tick,
}

struct Sched {
    t: f64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Sched {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Sched {}
impl PartialOrd for Sched {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Sched {
    /// Reversed: the heap pops the earliest, then the first scheduled.
    fn cmp(&self, o: &Self) -> Ordering {
        o.t.total_cmp(&self.t).then_with(|| o.seq.cmp(&self.seq))
    }
}

struct Node {
    addr: String,
    alive: bool,
    died: Option<f64>,
    started: Option<f64>,
    done: Option<f64>,
    src: Src,
    /// Bytes received (from the first on) at `t0`; grows at `rate` until the next event.
    recv: f64,
    t0: f64,
    rate: f64,
    /// Pieces verified (peer-fed) or passed (origin-fed); what is announced.
    pieces: u64,
    ver: u64,
    /// Nodes reading from this one (the dead's readers stay until they notice).
    readers: Vec<usize>,
    /// Peers banned for this fetch: sent as `exclude` (the owners forget them).
    exclude: Vec<String>,
    /// Peers found busy: sent as `avoid`.
    avoid: Vec<String>,
    last_announce: f64,
    /// Since when it has had no byte coming.
    stalled_since: Option<f64>,
    stall_ver: u64,
    from_origin: f64,
    /// Has read from the origin in this run (striped: a root, a k-th of its upload here)...
    was_origin: bool,
    /// ...from its start.
    first_origin: bool,
    dirty: bool,
}

/// What one run found.
#[derive(Clone, Debug, Default)]
struct Outcome {
    /// Pull times of the surviving nodes (start to last byte), seconds; `None`: unfinished.
    times: Vec<Option<f64>>,
    dead: usize,
    owners_dead: usize,
    /// The nodes killed.
    killed: Vec<usize>,
    origin_bytes: f64,
    /// `PeerRouter::locate`s (a node asking where to read).
    locates: u64,
    /// Locates with `probe` (asked of the other owners after the first granted the fetch).
    probes: u64,
    /// Probes that sent the asker to a peer after all.
    probe_follows: u64,
    /// Answers that also named other holders to read pieces from at once (the agent would;
    /// the simulator reads from the followed node only).
    also_named: u64,
    /// Origin reads without the owners' grant: no owner answered, or the peer tries ran out.
    alone: u64,
    gave_up: u64,
    /// Peers that answered busy.
    busy: u64,
    relocates: u64,
    stalls: u64,
    max_depth: u32,
    /// Most readers one node had at once.
    max_fanout: usize,
    cycles: u64,
    announces: u64,
    tracker_cpu: Duration,
    slowest_locate: Duration,
    sim_end: f64,
    events: u64,
    wall: Duration,
}

/// Bytes: closer than this is "caught up".
const EPS: f64 = 1.0;
/// Every held blob is announced to its owners this often, and when the membership changes.
const ANNOUNCE_HELD_EVERY: f64 = 600.0;
/// Seconds between checks for announcements due, `expire` and chain-depth samples.
const TICK: f64 = 1.0;

struct Sim {
    p: Params,
    size: f64,
    piece: f64,
    n_pieces: u64,
    digest: String,
    /// Stand-ins for the piece hashes (hex, as the agent sends them).
    hashes: Vec<String>,
    base: Instant,
    now: f64,
    nodes: Vec<Node>,
    index: HashMap<String, usize>,
    /// Striped: each node's home stripe, its place in the sorted membership modulo k.
    home: Vec<u32>,
    trackers: Vec<Option<Tracker>>,
    /// The digest's owners over the current membership, first first.
    owners: Vec<usize>,
    origin_fetchers: Vec<usize>,
    origin_dirty: bool,
    dirty: Vec<Up>,
    heap: BinaryHeap<Sched>,
    seq: u64,
    /// Scheduled events other than ticks (stale steps included).
    pending: usize,
    remaining: usize,
    next_expire: f64,
    next_held: f64,
    next_depth: f64,
    rng: Rng,
    out: Outcome,
}

impl Sim {
    fn new(p: Params) -> Self {
        let mut rng = Rng(p.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ p.n as u64);
        let digest = format!(
            "sha256:{:016x}{:016x}{:016x}{:016x}",
            rng.next(),
            rng.next(),
            rng.next(),
            rng.next()
        );

        let piece = piece_size(p.full_size) as f64;
        let size = p.size as f64;
        let n_pieces = p.size.div_ceil(piece_size(p.full_size));
        let nodes: Vec<Node> = (0..p.n)
            .map(|i| Node {
                addr: format!("10.{}.{}.{}:5001", i >> 16, (i >> 8) & 255, i & 255),
                alive: true,
                died: None,
                started: None,
                done: None,
                src: Src::Idle,
                recv: 0.0,
                t0: 0.0,
                rate: 0.0,
                pieces: 0,
                ver: 0,
                readers: Vec::new(),
                exclude: Vec::new(),
                avoid: Vec::new(),
                last_announce: 0.0,
                stalled_since: None,
                stall_ver: 0,
                from_origin: 0.0,
                was_origin: false,
                first_origin: false,
                dirty: false,
            })
            .collect();
        let hashes = (0..n_pieces)
            .map(|k| format!("{:064x}", u128::from(k) * 0x9E37_79B9_7F4A_7C15))
            .collect();
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.addr.clone(), i))
            .collect();
        let mut sorted: Vec<(&str, usize)> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.addr.as_str(), i))
            .collect();
        sorted.sort();
        let mut home = vec![0u32; nodes.len()];
        for (rank, (_, i)) in sorted.iter().enumerate() {
            home[*i] = (rank as u32) % p.stripes.max(1);
        }
        let mut sim = Self {
            home,
            size,
            piece,
            n_pieces,
            digest,
            hashes,
            base: Instant::now(),
            now: 0.0,
            trackers: (0..p.n).map(|_| None).collect(),
            nodes,
            index,
            owners: Vec::new(),
            origin_fetchers: Vec::new(),
            origin_dirty: false,
            dirty: Vec::new(),
            heap: BinaryHeap::new(),
            seq: 0,
            pending: 0,
            remaining: p.n,
            next_expire: p.expire_every,
            next_held: ANNOUNCE_HELD_EVERY,
            next_depth: 0.0,
            rng,
            out: Outcome::default(),
            p,
        };
        sim.recompute_owners();
        sim
    }

    fn push(&mut self, t: f64, ev: Ev) {
        if !matches!(ev, Ev::Tick) {
            self.pending += 1;
        }
        self.seq += 1;
        self.heap.push(Sched {
            t,
            seq: self.seq,
            ev,
        });
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_secs_f64(self.now)
    }

    fn boundary(&self, k: u64) -> f64 {
        (k as f64 * self.piece).min(self.size)
    }

    /// What `j` can upload in this run: its link; striped, all of it in its home stripe, a
    /// k-th in each stripe if it reads the origin, nothing elsewhere.
    fn up(&self, j: usize) -> f64 {
        let n = &self.nodes[j];
        if !n.alive {
            return 0.0;
        }
        // (The first origin fetcher gives each stripe a k-th; a node that took the origin
        // fetch over keeps the readers of its home stripe.)
        let k = f64::from(self.p.stripes);
        match self.p.stripe {
            None => self.p.bw,
            Some(_) if n.was_origin && n.first_origin => self.p.bw / k,
            Some(s) if self.home[j] == s => self.p.bw,
            Some(_) if n.was_origin => self.p.bw / k,
            Some(_) => 0.0,
        }
    }

    /// What a node can download in this run: its link, or a k-th of it per stripe.
    fn down(&self) -> f64 {
        match self.p.stripe {
            None => self.p.bw,
            Some(_) => self.p.bw / f64::from(self.p.stripes),
        }
    }

    /// Whether `i`'s readers see its bytes as they land (so they can follow it closely).
    fn streams(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        n.alive
            && n.done.is_none()
            && (n.src.origin_fed() || (self.p.landed && matches!(n.src, Src::Peer(_))))
    }

    /// Bytes of `i` its readers may read now: origin bytes at once, peer bytes as they land
    /// (`--peer-reads landed`) or per checked piece.
    fn vis(&self, i: usize) -> f64 {
        let n = &self.nodes[i];
        if n.done.is_some() {
            self.size
        } else if self.streams(i) {
            self.raw_recv(i)
        } else if n.src.origin_fed() || self.p.landed {
            n.recv
        } else {
            self.boundary(n.pieces)
        }
    }

    /// Bytes received, at the current rate, without the source's bound.
    fn raw_recv(&self, i: usize) -> f64 {
        let n = &self.nodes[i];
        if n.rate <= 0.0 {
            return n.recv;
        }
        (n.recv + n.rate * (self.now - n.t0)).min(self.size)
    }

    fn recv_at(&self, i: usize) -> f64 {
        let n = &self.nodes[i];
        let mut r = self.raw_recv(i);
        if let (Src::Peer(j), true) = (n.src, n.rate > 0.0) {
            r = r.min(self.vis(j).max(n.recv));
        }
        r
    }

    /// Whether reader `r`, caught up with `j`, follows bytes that come from somewhere: up the
    /// chain of nodes caught up with their sources there is one reading bytes it has not got
    /// yet (not a cycle of nodes each waiting for the next).
    fn grounded(&self, r: usize, j: usize) -> bool {
        let mut x = j;
        for _ in 0..=self.nodes.len() {
            if x == r {
                return false;
            }
            let n = &self.nodes[x];
            if n.done.is_some() || n.src.origin_fed() {
                return true;
            }
            match n.src {
                Src::Peer(y) if n.alive && self.vis(y) - self.recv_at(x) <= EPS => x = y,
                Src::Peer(_) => return n.alive,
                _ => return false,
            }
        }
        false
    }

    fn settle(&mut self, i: usize) {
        let r = self.recv_at(i);
        let n = &mut self.nodes[i];
        if n.src.origin_fed() {
            n.from_origin += r - n.recv;
        }
        n.recv = r;
        n.t0 = self.now;
    }

    fn mark(&mut self, u: Up) {
        match u {
            Up::Origin => {
                if !self.origin_dirty {
                    self.origin_dirty = true;
                    self.dirty.push(u);
                }
            }
            Up::Node(j) => {
                if !self.nodes[j].dirty {
                    self.nodes[j].dirty = true;
                    self.dirty.push(u);
                }
            }
        }
    }

    fn flush(&mut self) {
        let mut k = 0;
        while k < self.dirty.len() {
            let u = self.dirty[k];
            k += 1;
            match u {
                Up::Origin => self.origin_dirty = false,
                Up::Node(j) => self.nodes[j].dirty = false,
            }
            self.realloc(u);
        }
        self.dirty.clear();
    }

    /// Share `u`'s upload among its readers (max-min fair, each capped by its download rate and
    /// by what it can read), and reschedule each.
    fn realloc(&mut self, u: Up) {
        let (list, total) = match u {
            Up::Origin => (self.origin_fetchers.clone(), self.p.origin_rate),
            Up::Node(j) => (self.nodes[j].readers.clone(), self.up(j)),
        };
        if list.is_empty() {
            return;
        }
        let mut caps: Vec<(f64, usize)> = Vec::with_capacity(list.len());
        for &r in &list {
            self.settle(r);
            let down = self.down();
            let cap = match u {
                Up::Origin => down,
                Up::Node(j) => {
                    let src = &self.nodes[j];
                    let avail = self.vis(j) - self.nodes[r].recv;
                    if !src.alive {
                        0.0
                    } else if avail > EPS || src.done.is_some() {
                        down
                    } else if avail >= -EPS && self.streams(j) && self.grounded(r, j) {
                        // Caught up with a node whose bytes it sees as they land: as fast as
                        // they arrive.
                        down.min(src.rate)
                    } else {
                        0.0
                    }
                }
            };
            caps.push((cap, r));
        }
        caps.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut left = total;
        let count = caps.len();
        for (k, &(cap, r)) in caps.iter().enumerate() {
            let share = left / (count - k) as f64;
            let rate = cap.min(share).max(0.0);
            left -= rate;
            let changed = rate != self.nodes[r].rate;
            self.nodes[r].rate = rate;
            self.set_stalled(r, rate <= 0.0);
            if changed && self.streams(r) && !self.nodes[r].readers.is_empty() {
                self.mark(Up::Node(r));
            }
            // Same rate from a source whose bytes come a piece at a time: the scheduled event
            // (the reader's next boundary, where it checks again) still stands.
            let steady = !changed
                && rate > 0.0
                && match u {
                    Up::Node(j) => !self.streams(j),
                    Up::Origin => true,
                };
            if !steady {
                self.reschedule(r);
            }
        }
    }

    /// Track since when `i` has had no byte coming, and give up its source after the stall
    /// timeout.
    fn set_stalled(&mut self, i: usize, stalled: bool) {
        let n = &mut self.nodes[i];
        if stalled == n.stalled_since.is_some() {
            return;
        }
        n.stall_ver += 1;
        n.stalled_since = stalled.then_some(self.now);
        if stalled && self.p.stall_timeout > 0.0 {
            let (t, ev) = (self.now + self.p.stall_timeout, Ev::Stall(i, n.stall_ver));
            self.push(t, ev);
        }
    }

    fn reschedule(&mut self, i: usize) {
        self.nodes[i].ver += 1;
        let n = &self.nodes[i];
        if n.done.is_some() || !n.alive {
            return;
        }
        let next = self.boundary(n.pieces + 1);
        if n.recv >= next - EPS {
            // At a piece boundary not passed yet (a source's event came first at this instant).
            let (t, ev) = (self.now, Ev::Step(i, n.ver));
            self.push(t, ev);
            return;
        }
        if n.rate <= 0.0 {
            return;
        }
        let mut dt = ((next - n.recv) / n.rate).max(0.0);
        if let Src::Peer(j) = n.src {
            let s = &self.nodes[j];
            if s.done.is_none() {
                let gap = (self.vis(j) - n.recv).max(0.0);
                if self.streams(j) {
                    let rel = n.rate - s.rate;
                    if rel > 1e-9 * n.rate {
                        dt = dt.min(gap / rel);
                    }
                } else {
                    dt = dt.min(gap / n.rate);
                }
            }
        }
        let (t, ev) = (self.now + dt, Ev::Step(i, n.ver));
        self.push(t, ev);
    }

    fn up_of(src: Src) -> Option<Up> {
        match src {
            Src::Idle => None,
            Src::Origin | Src::Alone => Some(Up::Origin),
            Src::Peer(j) => Some(Up::Node(j)),
        }
    }

    /// Stop reading from the current source.
    fn detach(&mut self, i: usize) {
        self.settle(i);
        let src = self.nodes[i].src;
        match src {
            Src::Idle => {}
            Src::Origin | Src::Alone => self.origin_fetchers.retain(|&x| x != i),
            Src::Peer(j) => self.nodes[j].readers.retain(|&x| x != i),
        }
        if let Some(u) = Self::up_of(src) {
            self.mark(u);
        }
        let n = &mut self.nodes[i];
        n.src = Src::Idle;
        n.rate = 0.0;
        n.ver += 1;
    }

    fn attach(&mut self, i: usize, src: Src) {
        self.nodes[i].src = src;
        self.nodes[i].t0 = self.now;
        self.set_stalled(i, false);
        match src {
            Src::Idle => {}
            Src::Origin | Src::Alone => {
                if !self.nodes[i].was_origin && self.nodes[i].recv == 0.0 {
                    self.nodes[i].first_origin = true;
                }
                self.nodes[i].was_origin = true;
                self.origin_fetchers.push(i);
            }
            Src::Peer(j) => {
                self.nodes[j].readers.push(i);
                if !self.nodes[j].alive {
                    let t = self.now + self.p.detect;
                    self.push(t, Ev::Detect(i, j));
                }
            }
        }
        if let Some(u) = Self::up_of(src) {
            self.mark(u);
        }
    }

    fn tracker(&mut self, o: usize) -> &mut Tracker {
        self.trackers[o].get_or_insert_with(|| Tracker::new(TrackerOptions::default()))
    }

    fn announce(&mut self, i: usize, event: Event, pieces: Option<Pieces>) {
        self.nodes[i].last_announce = self.now;
        let a = Announce {
            stripe: self.p.stripe,
            home: self.p.stripe.map(|_| self.home[i]),
            digest: self.digest.clone(),
            node: self.nodes[i].addr.clone(),
            event,
            pieces,
        };
        let now = self.instant();
        for k in 0..self.owners.len() {
            let o = self.owners[k];
            if !self.nodes[o].alive {
                continue; // the request fails; the announcer goes on
            }
            let t = Instant::now();
            self.tracker(o).announce(&a, now);
            self.out.tracker_cpu += t.elapsed();
            self.out.announces += 1;
        }
    }

    /// `Event::Progress`, with the hashes of pieces `from..` this node just passed when it
    /// reads from the origin (the agent publishes them as it hashes them).
    fn progress(&mut self, i: usize, from: Option<u64>) {
        let origin = self.nodes[i].src.origin_fed();
        // What it trusts: origin bytes, checked pieces.
        let have = if origin {
            self.recv_at(i).floor() as u64
        } else {
            self.boundary(self.nodes[i].pieces) as u64
        };
        let source = match self.nodes[i].src {
            Src::Peer(j) => Some(self.nodes[j].addr.clone()),
            _ => None,
        };
        let pieces = match from {
            Some(first) if origin && first < self.nodes[i].pieces => Some(Pieces {
                size: self.p.size,
                first,
                hashes: self.hashes[first as usize..self.nodes[i].pieces as usize].to_vec(),
            }),
            _ => None,
        };
        self.announce(
            i,
            Event::Progress {
                have,
                size: self.p.size,
                origin,
                from: source,
                also: Vec::new(),
            },
            pieces,
        );
    }

    /// Where to read, as `PeerRouter::locate` decides it: the first live owner answers; if it
    /// grants the origin fetch, the other live owners are probed, and the first that names a
    /// peer wins. No live owner: the origin, without the owners' word.
    fn route(&mut self, i: usize, have: u64) -> Src {
        let mut req = LocateRequest {
            digest: self.digest.clone(),
            node: Some(self.nodes[i].addr.clone()),
            have,
            exclude: self.nodes[i].exclude.clone(),
            avoid: self.nodes[i].avoid.clone(),
            probe: false,
            // The simulator orders the askers (a stripe's home nodes first) where the agent has
            // a node not at home wait for a parent with room: it settles at once.
            settle: self.p.stripe.is_some(),
            stripe: self.p.stripe.map(|index| Stripe {
                index,
                count: self.p.stripes,
                home: self.home[i],
                homes: (0..self.nodes.len())
                    .filter(|&j| j != i && self.nodes[j].alive && self.home[j] == index)
                    .count() as u32,
            }),
        };
        let now = self.instant();
        let mut granted = false;
        self.out.locates += 1;
        for k in 0..self.owners.len() {
            let o = self.owners[k];
            if !self.nodes[o].alive {
                continue; // unreachable: the router tries the next owner
            }
            let t = Instant::now();
            let r = self.tracker(o).locate(&req, now);
            let took = t.elapsed();
            self.out.tracker_cpu += took;
            self.out.slowest_locate = self.out.slowest_locate.max(took);
            if req.probe {
                self.out.probes += 1;
            }
            match r {
                LocateReply::Follow { from, also, .. } => {
                    if req.probe {
                        self.out.probe_follows += 1;
                    }
                    if !also.is_empty() {
                        self.out.also_named += 1;
                    }
                    return match self.index.get(&from) {
                        Some(&j) if j != i => Src::Peer(j),
                        _ => Src::Alone,
                    };
                }
                LocateReply::Fetch => {
                    granted = true;
                    // As `PeerRouter::locate_stripe`: a node starting a stripe probes no
                    // other owner.
                    if self.p.stripe.is_some() && have == 0 {
                        break;
                    }
                    req.probe = true;
                }
            }
        }
        if granted {
            Src::Origin
        } else {
            self.out.alone += 1;
            Src::Alone
        }
    }

    /// (Re)open the blob from the verified offset: ask the owners, start reading, announce.
    fn locate(&mut self, i: usize) {
        self.detach(i);
        // A piece not verified yet is dropped: the next source resends it.
        let keep = self.boundary(self.nodes[i].pieces);
        self.nodes[i].recv = keep;
        if self.p.peers_off {
            self.attach(i, Src::Alone);
            return;
        }
        let src = loop {
            let n = &self.nodes[i];
            if n.exclude.len() + n.avoid.len() >= self.p.max_peer_tries {
                self.out.gave_up += 1;
                break Src::Alone;
            }
            match self.route(i, keep as u64) {
                // Serving as many as it may: 429, read elsewhere (the owners are not told).
                Src::Peer(j)
                    if self.p.max_uploads > 0
                        && self.nodes[j].alive
                        && self.nodes[j].readers.len() >= self.p.max_uploads =>
                {
                    self.out.busy += 1;
                    let addr = self.nodes[j].addr.clone();
                    self.nodes[i].avoid.push(addr);
                }
                src => break src,
            }
        };
        self.attach(i, src);
        if self.p.trace {
            let n = &self.nodes[i];
            eprintln!(
                "{:9.3} {} at {} reads from {:?} (excluded {:?}, avoided {:?})",
                self.now, i, n.recv, n.src, n.exclude, n.avoid
            );
        }
        self.progress(i, None);
    }

    fn relocate(&mut self, i: usize, exclude: usize) {
        // The agent bans a peer once per fetch (a peer it failed before counts once).
        let addr = self.nodes[exclude].addr.clone();
        if !self.nodes[i].exclude.contains(&addr) {
            self.nodes[i].exclude.push(addr);
        }
        self.out.relocates += 1;
        self.locate(i);
    }

    fn step(&mut self, i: usize) {
        self.settle(i);
        let first = self.nodes[i].pieces;
        let mut passed = false;
        while self.nodes[i].pieces < self.n_pieces {
            let b = self.boundary(self.nodes[i].pieces + 1);
            if self.nodes[i].recv < b - EPS {
                break;
            }
            let n = &mut self.nodes[i];
            if n.recv < b {
                if n.src.origin_fed() {
                    n.from_origin += b - n.recv;
                }
                n.recv = b;
            }
            n.pieces += 1;
            passed = true;
        }
        if self.nodes[i].pieces == self.n_pieces {
            self.complete(i);
            return;
        }
        if passed {
            if !self.p.peers_off {
                self.progress(i, Some(first));
            }
            if !self.nodes[i].readers.is_empty() {
                self.mark(Up::Node(i));
            }
        }
        match self.nodes[i].src {
            // Caught up with its source (or tailing it): the source's readers share anew.
            Src::Peer(j)
                if self.nodes[j].done.is_none() && self.vis(j) - self.nodes[i].recv <= EPS =>
            {
                self.mark(Up::Node(j))
            }
            // Still bytes to read at the same rate (an origin fetcher's never changes with its
            // progress).
            _ => self.reschedule(i),
        }
    }

    fn complete(&mut self, i: usize) {
        self.detach(i);
        let n = &mut self.nodes[i];
        n.recv = self.size;
        n.pieces = self.n_pieces;
        n.done = Some(self.now);
        self.remaining -= 1;
        if !self.p.peers_off {
            let pieces = Pieces {
                size: self.p.size,
                first: 0,
                hashes: self.hashes.clone(),
            };
            self.announce(i, Event::Complete { size: self.p.size }, Some(pieces));
        }
        if !self.nodes[i].readers.is_empty() {
            self.mark(Up::Node(i));
        }
    }

    fn kill(&mut self, d: usize) {
        if !self.nodes[d].alive {
            return;
        }
        let was_done = self.nodes[d].done.is_some();
        self.detach(d);
        let n = &mut self.nodes[d];
        n.alive = false;
        n.died = Some(self.now);
        if !was_done {
            self.remaining -= 1;
        }
        self.trackers[d] = None;
        self.out.dead += 1;
        if self.owners.contains(&d) {
            self.out.owners_dead += 1;
        }
        self.mark(Up::Node(d));
        let t = self.now + self.p.detect;
        for r in self.nodes[d].readers.clone() {
            self.push(t, Ev::Detect(r, d));
        }
    }

    fn fail(&mut self) {
        let count = (self.p.fail_frac * self.p.n as f64).round() as usize;
        let count = if self.p.fail_frac > 0.0 {
            count.max(1)
        } else {
            0
        };
        let mut chosen: Vec<usize> = self.p.kill.clone().unwrap_or_default();
        if self.p.kill.is_some() {
            // The nodes another stripe's run killed.
        } else if self.p.kill_origin_fetcher && self.p.fail_frac > 0.0 && !self.p.peers_off {
            chosen.extend(self.origin_fetchers.iter().copied());
        }
        if self.p.kill_first_owner && self.p.kill.is_none() {
            if let Some(&o) = self.owners.first() {
                chosen.push(o);
            }
        }
        let mut pool: Vec<usize> = (0..self.p.n)
            .filter(|&i| self.nodes[i].alive && !chosen.contains(&i))
            .collect();
        while self.p.kill.is_none() && chosen.len() < count && !pool.is_empty() {
            let k = self.rng.below(pool.len());
            chosen.push(pool.swap_remove(k));
        }
        chosen.sort_unstable();
        chosen.dedup();
        self.out.killed.clone_from(&chosen);
        for d in chosen {
            self.kill(d);
        }
        let t = self.now + self.p.membership_delay;
        self.push(t, Ev::Membership);
    }

    /// Every node tells the owners of the blob it holds (a `Complete`) that it does.
    fn announce_held(&mut self) {
        self.next_held = self.now + ANNOUNCE_HELD_EVERY;
        for i in 0..self.nodes.len() {
            if self.nodes[i].alive && self.nodes[i].done.is_some() {
                let size = self.p.size;
                self.announce(i, Event::Complete { size }, None);
            }
        }
    }

    fn recompute_owners(&mut self) {
        let now = self.now;
        let delay = self.p.membership_delay;
        let live: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.died.is_none_or(|d| now - d < delay))
            .map(|n| n.addr.as_str())
            .collect();
        // A stripe is routed under a key of its own.
        let key = match self.p.stripe {
            Some(s) => manta_peer::proto::stripe_key(&self.digest, s),
            None => self.digest.clone(),
        };
        let owners = ring::owners(&key, live, self.p.k);
        self.owners = owners
            .iter()
            .filter_map(|a| self.index.get(a).copied())
            .collect();
    }

    fn tick(&mut self) {
        if self.p.announce_every > 0.0 {
            for i in 0..self.nodes.len() {
                let n = &self.nodes[i];
                let due = n.alive
                    && n.done.is_none()
                    && n.rate > 0.0
                    && self.now - n.last_announce >= self.p.announce_every - 1e-9;
                if due {
                    self.progress(i, None);
                }
            }
        }
        if self.now >= self.next_held {
            self.announce_held();
        }
        if self.now >= self.next_expire {
            self.next_expire += self.p.expire_every;
            let now = self.instant();
            let t = Instant::now();
            for tr in self.trackers.iter_mut().flatten() {
                tr.expire(now);
            }
            self.out.tracker_cpu += t.elapsed();
        }
    }

    /// The longest chain of peer reads at this moment (hops from a node to the origin fetcher
    /// or a complete copy at the head of its chain).
    fn sample_depth(&mut self) {
        const UNKNOWN: u32 = u32::MAX;
        let n = self.nodes.len();
        let mut depth = vec![UNKNOWN; n];
        let mut on_path = vec![false; n];
        let mut path: Vec<usize> = Vec::new();
        let parent = |x: usize| -> Option<usize> {
            let node = &self.nodes[x];
            match node.src {
                Src::Peer(j) if node.alive && node.done.is_none() => Some(j),
                _ => None,
            }
        };
        let mut cycles = 0;
        let mut max = 0;
        for s in 0..n {
            path.clear();
            let mut cur = s;
            let mut base = loop {
                if depth[cur] != UNKNOWN {
                    break depth[cur];
                }
                if on_path[cur] {
                    cycles += 1;
                    if self.p.trace {
                        let at = path.iter().position(|&x| x == cur).unwrap_or(0);
                        eprintln!("{:9.3} a cycle of reads: {:?}", self.now, &path[at..]);
                    }
                    break 0;
                }
                match parent(cur) {
                    Some(j) => {
                        on_path[cur] = true;
                        path.push(cur);
                        cur = j;
                    }
                    None => {
                        depth[cur] = 0;
                        break 0;
                    }
                }
            };
            for &x in path.iter().rev() {
                base += 1;
                depth[x] = base;
                on_path[x] = false;
                max = max.max(base);
            }
        }
        self.out.max_depth = self.out.max_depth.max(max);
        let fanout = self
            .nodes
            .iter()
            .map(|n| n.readers.len())
            .max()
            .unwrap_or(0);
        self.out.max_fanout = self.out.max_fanout.max(fanout);
        self.out.cycles = self.out.cycles.max(cycles);
    }

    fn run(mut self) -> Outcome {
        let wall = Instant::now();
        // Striped, a node asks for its home stripe first: at the same moment, the first node
        // (the origin fetcher), then the nodes whose home stripe this is, then the others.
        let mut order: Vec<usize> = (0..self.p.n).collect();
        if let Some(s) = self.p.stripe {
            order.sort_by_key(|&i| (i != 0 && self.home[i] != s, i));
        }
        let mut starts = vec![0.0; self.p.n];
        for t in starts.iter_mut() {
            if self.p.jitter > 0.0 {
                *t = self.rng.unit() * self.p.jitter;
            }
        }
        for i in order {
            self.push(starts[i], Ev::Start(i));
        }
        if self.p.failures() {
            self.push(self.p.fail_at, Ev::Fail);
        }
        if !self.p.peers_off {
            self.push(TICK, Ev::Tick);
        }
        while let Some(Sched { t, ev, .. }) = self.heap.pop() {
            if t > self.p.max_time {
                break;
            }
            self.now = t;
            self.out.events += 1;
            if !matches!(ev, Ev::Tick) {
                self.pending -= 1;
            }
            match ev {
                Ev::Start(i) => {
                    self.nodes[i].started = Some(self.now);
                    self.nodes[i].last_announce = self.now;
                    self.locate(i);
                }
                Ev::Step(i, ver) => {
                    if self.nodes[i].ver == ver {
                        self.step(i);
                    }
                }
                Ev::Fail => self.fail(),
                Ev::Detect(i, d) => {
                    let n = &self.nodes[i];
                    if n.alive && n.done.is_none() && n.src == Src::Peer(d) {
                        self.relocate(i, d);
                    }
                }
                Ev::Stall(i, ver) => {
                    let n = &self.nodes[i];
                    if let (true, true, None, Src::Peer(j)) =
                        (n.alive, n.stall_ver == ver, n.done, n.src)
                    {
                        self.out.stalls += 1;
                        if self.p.trace {
                            eprintln!("{:9.3} {i} stalled on {j}", self.now);
                        }
                        self.relocate(i, j);
                    }
                }
                Ev::Membership => {
                    self.recompute_owners();
                    self.announce_held();
                }
                Ev::Tick => {
                    self.tick();
                    if self.remaining > 0 && self.pending > 0 {
                        let t = self.now + TICK;
                        self.push(t, Ev::Tick);
                    }
                }
            }
            self.flush();
            if !self.p.peers_off && self.now >= self.next_depth {
                self.next_depth = self.now + 5.0;
                self.sample_depth();
            }
            if self.remaining == 0 {
                break;
            }
        }
        self.out.sim_end = self.now;
        self.out.origin_bytes = self.nodes.iter().map(|n| n.from_origin).sum();
        self.out.times = self
            .nodes
            .iter()
            .filter(|n| n.alive)
            .map(|n| match (n.started, n.done) {
                (Some(s), Some(d)) => Some(d - s),
                _ => None,
            })
            .collect();
        self.out.wall = wall.elapsed();
        self.out
    }
}

/// One run: the blob at once, or (`--stripes k`) each stripe as a swarm of its own, a node
/// done when it has every stripe.
fn simulate(p: &Params) -> Outcome {
    if p.pieces {
        return pieces::run(p);
    }
    if p.stripes < 2 || p.peers_off {
        return Sim::new(p.clone()).run();
    }
    let k = u64::from(p.stripes);
    let piece = piece_size(p.size);
    let pieces = p.size.div_ceil(piece);
    let mut all: Option<Outcome> = None;
    for s in 0..k {
        let size: u64 = (s..pieces)
            .step_by(k as usize)
            .map(|i| (p.size - i * piece).min(piece))
            .sum();
        if size == 0 {
            continue;
        }
        // Every stripe loses the same nodes: those the first stripe's run chose.
        let sub = Params {
            size,
            stripe: Some(s as u32),
            origin_rate: p.origin_rate / k as f64,
            kill: all.as_ref().map(|a| a.killed.clone()),
            ..p.clone()
        };
        let o = Sim::new(sub).run();
        all = Some(match all {
            None => o,
            Some(mut a) => {
                // The same nodes die in every stripe (the same seed draws them).
                for (t, u) in a.times.iter_mut().zip(&o.times) {
                    *t = match (*t, *u) {
                        (Some(x), Some(y)) => Some(x.max(y)),
                        _ => None,
                    };
                }
                a.origin_bytes += o.origin_bytes;
                a.locates += o.locates;
                a.probes += o.probes;
                a.probe_follows += o.probe_follows;
                a.also_named += o.also_named;
                a.alone += o.alone;
                a.gave_up += o.gave_up;
                a.busy += o.busy;
                a.relocates += o.relocates;
                a.stalls += o.stalls;
                a.max_depth = a.max_depth.max(o.max_depth);
                a.max_fanout = a.max_fanout.max(o.max_fanout);
                a.cycles += o.cycles;
                a.announces += o.announces;
                a.tracker_cpu += o.tracker_cpu;
                a.slowest_locate = a.slowest_locate.max(o.slowest_locate);
                a.sim_end = a.sim_end.max(o.sim_end);
                a.events += o.events;
                a.wall += o.wall;
                a
            }
        });
    }
    all.unwrap_or_default()
}

/// Nearest rank; `None` (unfinished) sorts last.
fn percentile(sorted: &[Option<f64>], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn fmt_ratio(v: Option<f64>, unit: f64) -> String {
    match v {
        Some(v) => format!("{:.2}", v / unit),
        None => "∞".into(),
    }
}

fn fmt_bytes(b: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if b.is_multiple_of(GIB) {
        format!("{} GiB", b / GIB)
    } else if b >= GIB {
        format!("{:.2} GiB", b as f64 / GIB as f64)
    } else if b.is_multiple_of(MIB) {
        format!("{} MiB", b / MIB)
    } else {
        format!("{:.1} MiB", b as f64 / MIB as f64)
    }
}

fn fmt_rate(r: f64) -> String {
    let m = r * 8.0 / 1e6;
    if (m - m.round()).abs() < 1e-6 {
        format!("{m:.0} Mbit/s")
    } else {
        format!("{m:.1} Mbit/s")
    }
}

fn scenario(p: &Params) -> String {
    let mut s = if p.peers_off {
        "peers off".to_string()
    } else {
        "peers".to_string()
    };
    if p.fail_frac > 0.0 {
        let _ = write!(s, ", {:.0} % die", p.fail_frac * 100.0);
        if p.kill_origin_fetcher && !p.peers_off {
            s.push_str(" (origin fetcher too)");
        }
    }
    if p.kill_first_owner {
        s.push_str(", first owner dies");
    }
    if p.failures() {
        let _ = write!(s, " at {:.1} s", p.fail_at);
    }
    if p.jitter > 0.0 {
        let _ = write!(s, ", jitter {} s", p.jitter);
    }
    if p.max_uploads == 0 && !p.peers_off {
        s.push_str(", no upload cap");
    }
    s
}

fn row(p: &Params, o: &Outcome) -> String {
    let mut t = o.times.clone();
    t.sort_by(|a, b| match (a, b) {
        (Some(x), Some(y)) => x.total_cmp(y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    });
    let unit = p.unit();
    let unfinished = t.iter().filter(|x| x.is_none()).count();
    // No survivor: nothing to say.
    let pct = |q: f64| {
        if t.is_empty() {
            "–".to_string()
        } else {
            fmt_ratio(percentile(&t, q), unit)
        }
    };
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} s ({:.0} ms) | {:.1} s |",
        p.n,
        fmt_bytes(p.size),
        fmt_rate(p.bw),
        fmt_rate(p.origin_rate),
        scenario(p),
        pct(0.5),
        pct(0.99),
        pct(1.0),
        format_args!("{:.2}", o.origin_bytes / p.size as f64),
        o.locates,
        if p.peers_off {
            "–".to_string()
        } else {
            format!("{} / {}", o.max_depth, o.max_fanout)
        },
        format_args!(
            "{}{}",
            o.dead,
            if o.owners_dead > 0 {
                format!(" ({} owner)", o.owners_dead)
            } else {
                String::new()
            }
        ),
        unfinished,
        format_args!(
            "{} ({} stalls); {} busy; {} probes, {} → peer; {} named others; {} unasked origin; {} in cycles",
            o.relocates,
            o.stalls,
            o.busy,
            o.probes,
            o.probe_follows,
            o.also_named,
            o.alone + o.gave_up,
            o.cycles
        ),
        o.tracker_cpu.as_secs_f64(),
        o.slowest_locate.as_secs_f64() * 1e3,
        o.wall.as_secs_f64(),
    )
}

fn plan(args: &Args) -> Result<Vec<Params>> {
    if args.nodes.is_empty() || args.nodes.contains(&0) {
        bail!("--nodes: at least one node per run");
    }
    if args.owners == 0 {
        bail!("--owners must be at least 1");
    }
    let unit = args.size as f64 / args.bandwidth;
    let fail_at = if args.fail_at.trim().ends_with('s') {
        parse_secs(&args.fail_at).map_err(anyhow::Error::msg)?
    } else {
        let f: f64 = args
            .fail_at
            .trim()
            .parse()
            .with_context(|| format!("--fail-at {:?}", args.fail_at))?;
        f * unit
    };
    let origin_rate = args.origin_rate.unwrap_or(args.bandwidth / 2.0);
    let mut runs = Vec::new();
    for &n in &args.nodes {
        for &f in &args.fail_frac {
            if !(0.0..1.0).contains(&f) {
                bail!("--fail-frac {f}: must be in [0, 1)");
            }
            if args.engine == Engine::Pieces && (args.stripes < 2 || args.peers_off) {
                bail!("--engine pieces: a striped pull (--stripes 2 or more) with peers");
            }
            let mut max_time = args.max_time * unit;
            if args.peers_off {
                max_time += 2.0 * n as f64 * args.size as f64 / origin_rate;
            }
            runs.push(Params {
                n,
                size: args.size,
                bw: args.bandwidth,
                origin_rate,
                k: args.owners,
                jitter: args.jitter,
                fail_frac: f,
                fail_at,
                kill_origin_fetcher: args.kill_origin_fetcher,
                kill_first_owner: args.kill_first_owner && f > 0.0,
                detect: args.detect,
                membership_delay: args.membership_delay,
                announce_every: args.announce_every,
                max_uploads: args.max_uploads,
                expire_every: args.expire_every,
                stall_timeout: args.stall_timeout,
                max_peer_tries: args.max_peer_tries,
                landed: args.peer_reads == PeerReads::Landed,
                peers_off: args.peers_off,
                seed: args.seed,
                max_time,
                trace: args.trace,
                stripes: args.stripes,
                stripe: None,
                full_size: args.size,
                kill: None,
                pieces: args.engine == Engine::Pieces,
                step: args.step,
            });
        }
    }
    Ok(runs)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runs = plan(&args)?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, runs.len());
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new(vec![None; runs.len()]);
    let total = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let k = next.fetch_add(1, AtomicOrdering::Relaxed);
                let Some(p) = runs.get(k) else { break };
                eprintln!(
                    "swarm: run {}/{}: N = {}, {}",
                    k + 1,
                    runs.len(),
                    p.n,
                    scenario(p)
                );
                let o = simulate(p);
                eprintln!(
                    "swarm: run {}/{} done in {:.1} s ({} events, {:.0} simulated s)\n{}",
                    k + 1,
                    runs.len(),
                    o.wall.as_secs_f64(),
                    o.events,
                    o.sim_end,
                    row(p, &o)
                );
                let mut r = results.lock().unwrap_or_else(|e| e.into_inner());
                r[k] = Some(o);
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());

    let first = &runs[0];
    let piece = piece_size(first.size);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Swarm simulator (the real `manta_peer` Tracker, ring and router logic): blob S = {} in \
         {} pieces of {} MiB, B = {} up and down per node, k = {} owners, S/B = {:.1} s. \
         Dead source noticed after {} s, dead nodes leave the membership after {} s, peer \
         stall limit {}, {} peer tries, {} uploads per node, seed {}.\n\n\
         p50/p99/max: pull times (start to last byte) of the surviving nodes ÷ S/B (∞: some \
         never finished). Chain depth / fan-out: longest chain of peer reads, most readers of \
         one node. Re-routes: locates after the first (stalls: peers given up for sending \
         nothing for the stall limit); busy: peers that answered 429 (each one more locate); \
         probes: locates asked of the other owners after the first granted the origin fetch; named \
         others: answers that also named holders to read pieces from at once (the simulator \
         reads from the followed node only); \
         unasked origin: origin reads after the peer tries ran out or with no owner.\n",
        fmt_bytes(first.size),
        first.size.div_ceil(piece),
        piece >> 20,
        fmt_rate(first.bw),
        first.k,
        first.unit(),
        first.detect,
        first.membership_delay,
        if first.stall_timeout > 0.0 {
            format!("{} s", first.stall_timeout)
        } else {
            "off".to_string()
        },
        first.max_peer_tries,
        if first.max_uploads > 0 {
            first.max_uploads.to_string()
        } else {
            "unlimited".to_string()
        },
        first.seed,
    );
    out.push_str(
        "| N | S | B | origin rate | scenario | p50 | p99 | max | origin bytes ÷ S | locates | \
         chain depth / fan-out | dead | unfinished | re-routes | tracker CPU (slowest locate) | wall |\n",
    );
    out.push_str("|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|\n");
    for (p, o) in runs.iter().zip(&results) {
        match o {
            Some(o) => {
                out.push_str(&row(p, o));
                out.push('\n');
            }
            None => bail!("run N = {} did not finish", p.n),
        }
    }
    let _ = writeln!(
        out,
        "\nTotal wall time {:.1} s on {} thread(s).",
        total.elapsed().as_secs_f64(),
        threads
    );
    print!("{out}");
    Ok(())
}
