//! What an owner knows about the digests it owns: which nodes hold or fetch each, who reads
//! from whom, and the piece hashes the origin fetcher published. Plain data with the time
//! passed in, so the swarm simulator drives the same code as the agent.
//!
//! The routing rule, for one `locate`:
//! 1. drop the nodes the asker could not use, and in-progress nodes not heard from lately;
//! 2. the candidates are the other nodes that hold or fetch the blob and do not read from the
//!    asker, directly or down a chain (no cycles);
//! 3. pick the candidate with the fewest readers, then a complete one, then one already past the
//!    asker's offset, then the furthest along — so nodes that arrive together form a pipeline,
//!    each reading from the one before while it downloads, and a later node reads from an idle
//!    complete copy;
//! 4. no candidate: the asker fetches from the origin, and is named to everyone who asks next;
//! 5. with a candidate, also name up to four others with upload to spare — complete copies, and
//!    fetches nobody reads from that are a piece or more ahead of the asker — for the asker to
//!    read pieces from in parallel ([`crate::schedule`]). A node announces those it reads
//!    pieces from, and they count as its sources' readers in rules 3 and 5 (not for cycles: a
//!    node reads pieces only from what a holder already has, so it never waits on it).
//!
//! A locate for one *stripe* of a blob's pieces (`LocateRequest::stripe`, under the stripe's own
//! key) follows another rule, SplitStream's: the origin fetcher takes one reader, a node whose
//! home stripe it is (as it said when it asked) up to `count`, other nodes none; the shallowest
//! with room is named, else the least loaded home node (the deepest for a node starting, the
//! shallowest for one that lost its parent). So each stripe spreads down a tree about
//! log_count(N) deep, and each node's upload serves one stripe only. A node starting a stripe
//! that nobody here is in is told `Fetch` but not recorded (it asks again: the blob's fetcher
//! announces itself to every stripe's owners as it starts); a node resuming one is its fetcher
//! from the origin. The agent stripes large blobs in large clusters, and the swarm simulator
//! drives the same rule (`--stripes`).
//!
//! When the origin fetcher dies, its readers ask again; the furthest-along survivor is offered
//! to the others, and finds no candidate itself (everyone else reads from it), so it resumes
//! the origin download from its own offset: the origin is asked only for what no survivor has.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::pieces::piece_count;
use crate::proto::{stripe_key, Announce, Event, Holding, LocateReply, LocateRequest, Pieces};

/// How far past the known piece hashes an announcement may start.
const MAX_PIECE_GAP: u64 = 4096;
/// Longest chain of readers an owner builds before it starts a branch.
const MAX_CHAIN: usize = 16;
/// Most other holders named in one `Follow` to read pieces from in parallel.
const MAX_ALSO: usize = 4;
/// Most nodes tracked per digest (a cluster's worth).
const MAX_HOLDERS: usize = 10_000;
/// The largest blob size believed (16 TiB).
const MAX_SIZE: u64 = 16 << 40;

/// How an owner ages what it knows.
#[derive(Clone, Debug)]
pub struct TrackerOptions {
    /// A node fetching a blob that has not announced for this long is forgotten.
    pub stale_after: Duration,
    /// Most digests tracked; the least recently used go first.
    pub max_entries: usize,
}

impl Default for TrackerOptions {
    fn default() -> Self {
        Self {
            stale_after: Duration::from_secs(20),
            max_entries: 100_000,
        }
    }
}

#[derive(Clone, Debug)]
struct Holder {
    complete: bool,
    have: u64,
    /// The node it reads from.
    source: Option<String>,
    /// Nodes it reads pieces from besides its source.
    also: Vec<String>,
    /// The stripe it takes readers in, as it said when it asked.
    home: Option<u32>,
    seen: Instant,
}

#[derive(Debug)]
struct Entry {
    size: Option<u64>,
    holders: HashMap<String, Holder>,
    pieces: Vec<Option<String>>,
    /// The origin fetcher whose hashes `pieces` holds, while no verified holder confirmed them.
    pieces_by: Option<String>,
    /// `pieces` came with a `Complete`: from a node that verified the whole blob.
    pieces_confirmed: bool,
    touched: Instant,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Self {
            size: None,
            holders: HashMap::new(),
            pieces: Vec::new(),
            pieces_by: None,
            pieces_confirmed: false,
            touched: now,
        }
    }

    /// Forget `node` as a holder. Who reads from it is left as it is: those nodes still do
    /// until they ask again, and forgetting it would let a cycle through.
    fn remove(&mut self, node: &str) {
        self.holders.remove(node);
    }

    /// `node` says its fetch is over without the blob (it may have failed on the digest): the
    /// hashes only it vouched for count for nothing now. (A node that merely died or was
    /// excluded keeps them: they are of bytes it had from the origin, and its successor
    /// resumes after them.)
    fn gone(&mut self, node: &str) {
        self.remove(node);
        if self.pieces_by.as_deref() == Some(node) && !self.pieces_confirmed {
            self.pieces.clear();
            self.pieces_by = None;
        }
    }

    fn pieces_from(&self, first: u64) -> Option<Pieces> {
        let size = self.size?;
        let hashes: Vec<String> = self
            .pieces
            .iter()
            .skip(first as usize)
            .map_while(|h| h.clone())
            .collect();
        (!hashes.is_empty()).then_some(Pieces {
            size,
            first,
            hashes,
        })
    }
}

/// The key a locate is answered under: the digest's, or its stripe's.
fn locate_key(req: &LocateRequest) -> String {
    match req.stripe {
        Some(st) => stripe_key(&req.digest, st.index),
        None => req.digest.clone(),
    }
}

/// The stripe in which `node` takes readers (of `count`).
pub fn home(node: &str, count: u32) -> u32 {
    (crate::ring::weight("stripe", node) % u64::from(count.max(1))) as u32
}

/// An owner's table of the digests it owns.
#[derive(Debug, Default)]
pub struct Tracker {
    entries: HashMap<String, Entry>,
    opts: TrackerOptions,
}

impl Tracker {
    pub fn new(opts: TrackerOptions) -> Self {
        Self {
            entries: HashMap::new(),
            opts,
        }
    }

    /// Digests tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Where the asker should get the blob; records what it will do.
    pub fn locate(&mut self, req: &LocateRequest, now: Instant) -> LocateReply {
        let stale = self.opts.stale_after;
        let key = locate_key(req);
        if req.probe && !self.entries.contains_key(&key) {
            return LocateReply::Fetch;
        }
        let e = self
            .entries
            .entry(key.clone())
            .or_insert_with(|| Entry::new(now));
        e.touched = now;
        for x in &req.exclude {
            e.remove(x);
        }
        let gone: Vec<String> = e
            .holders
            .iter()
            .filter(|(_, h)| !h.complete && now.duration_since(h.seen) > stale)
            .map(|(n, _)| n.clone())
            .collect();
        for n in gone {
            e.remove(&n);
        }
        let asker = req.node.as_deref();
        if let (Some(a), false) = (asker, req.probe) {
            // Asking again: whatever it read from before is over.
            if let Some(h) = e.holders.get_mut(a) {
                h.source = None;
                h.also.clear();
            }
        }
        // Readers per node, and everyone reading from the asker down any chain, in one pass
        // each: a locate is linear in the holders, so N nodes asking at once cost O(N²).
        let mut readers: HashMap<&str, Vec<&str>> = HashMap::new();
        // (Whose upload is in use: readers that follow a node, and those that read pieces from
        // it besides; only the first can wait on it, so only they count for cycles and depth.)
        let mut load: HashMap<&str, usize> = HashMap::new();
        for (n, h) in &e.holders {
            if let Some(src) = h.source.as_deref() {
                readers.entry(src).or_default().push(n.as_str());
                *load.entry(src).or_default() += 1;
            }
            for x in &h.also {
                *load.entry(x.as_str()).or_default() += 1;
            }
        }
        let mut below: std::collections::HashSet<&str> = std::collections::HashSet::new();
        if let Some(a) = asker {
            let mut stack = vec![a];
            while let Some(x) = stack.pop() {
                for r in readers.get(x).into_iter().flatten() {
                    if below.insert(r) {
                        stack.push(r);
                    }
                }
            }
        }
        // How deep each holder sits in a chain of readers (0: it has its own copy or reads the
        // origin). A chain adds a little delay per hop; past MAX_CHAIN hops, a reader is hung
        // beside another one instead (a tree), so a cluster of thousands does not become one
        // chain thousands deep.
        let mut depth: HashMap<&str, usize> = HashMap::new();
        for n in e.holders.keys() {
            let mut path = Vec::new();
            let mut x = n.as_str();
            let base = loop {
                if let Some(d) = depth.get(x) {
                    break *d;
                }
                if path.len() > e.holders.len() {
                    break MAX_CHAIN; // a cycle: treat as too deep
                }
                path.push(x);
                match e.holders.get(x).and_then(|h| h.source.as_deref()) {
                    Some(src) if e.holders.contains_key(src) => x = src,
                    _ => break 0,
                }
            };
            // `path` ends at the first node whose depth is known (or the root, at `base`).
            let known = depth.contains_key(x);
            for (i, p) in path.iter().rev().enumerate() {
                let d = if known { base + i + 1 } else { base + i };
                depth.insert(p, d);
            }
        }
        let shallow = |n: &str| depth.get(n).copied().unwrap_or(0) < MAX_CHAIN;
        let usable = |n: &String| Some(n.as_str()) != asker && !req.avoid.contains(n);
        if let Some(st) = req.stripe.filter(|st| st.count > 1 && st.index < st.count) {
            // A stripe: the origin fetcher takes one reader, a node whose home stripe this is
            // (complete or not) up to `count`, other nodes none; the shallowest first, so the
            // tree is about log(count) of the nodes deep and every node's upload goes to one
            // stripe.
            let k = st.count as usize;
            let at_home =
                |n: &str, h: &Holder| h.home.unwrap_or_else(|| home(n, st.count)) == st.index;
            let cap = |n: &str, h: &Holder| {
                if !h.complete && h.source.is_none() {
                    1
                } else if at_home(n, h) {
                    k
                } else {
                    0
                }
            };
            let load_of = |n: &str| load.get(n).copied().unwrap_or(0);
            let candidates = || {
                e.holders
                    .iter()
                    .filter(|(n, _)| usable(n) && !below.contains(n.as_str()))
            };
            // A node starting a stripe it is not at home in waits (asks again) for a node at
            // home there with room: the fetcher's one reader must be a node that passes the
            // stripe on, or the whole stripe hangs below a node whose upload serves another;
            // and a home node that takes more than its share slows all its readers, while
            // home nodes still joining may have room. Once it has waited (`settle`), it is
            // given a parent as below.
            let leaf = req.have == 0 && st.home != st.index && !req.settle;
            // It also waits while nodes at home here that the asker knows of are not in the
            // tree yet: else nodes that arrive together fill the upper home nodes with leaves,
            // and the home nodes still to come hang one below the other, a hop each.
            let homes_in = e
                .holders
                .iter()
                .filter(|(n, h)| Some(n.as_str()) != asker && at_home(n, h))
                .count();
            let waiting = leaf && homes_in < st.homes as usize;
            let best = candidates()
                .filter(|_| !waiting)
                .filter(|(n, h)| load_of(n) < cap(n, h) && !(leaf && cap(n, h) == 1))
                .min_by_key(|(n, _)| {
                    (
                        depth.get(n.as_str()).copied().unwrap_or(0),
                        load_of(n),
                        n.as_str(),
                    )
                })
                // None has room: the least loaded of the nodes whose home stripe this is (the
                // origin fetcher keeps its one reader: the whole stripe flows through it), and
                // only then anyone. A node starting goes deepest (an extra reader slows the
                // subtree below it: let it be small); a node that lost its parent shallowest
                // (deep nodes are behind it, and it would wait for them).
                .or_else(|| {
                    let resuming = req.have > 0;
                    candidates()
                        .filter(|(n, h)| !leaf && cap(n, h) > 1)
                        .min_by_key(|(n, _)| {
                            let d = depth.get(n.as_str()).copied().unwrap_or(0);
                            (
                                load_of(n),
                                if resuming { d as isize } else { -(d as isize) },
                                n.as_str(),
                            )
                        })
                })
                .or_else(|| {
                    candidates().filter(|_| !leaf).min_by_key(|(n, _)| {
                        (
                            load_of(n),
                            depth.get(n.as_str()).copied().unwrap_or(0),
                            n.as_str(),
                        )
                    })
                })
                .map(|(n, h)| (n.clone(), h.complete));
            let reply = match best {
                Some((from, complete)) => LocateReply::Follow {
                    pieces: None,
                    also: Vec::new(),
                    from,
                    complete,
                },
                None => LocateReply::Fetch,
            };
            // A node starting a stripe nobody here is in is not made its fetcher: the blob's
            // fetcher tells each stripe's owners as it starts, a moment after the blob's own
            // owners named it, and the asker asks again. (Recorded, it would be named to the
            // next askers as the stripe's root, with no source of its own.) A node resuming a
            // stripe that nobody else has the rest of is its fetcher from the origin.
            if reply != LocateReply::Fetch || req.have > 0 {
                self.record(&key, req, &reply, now);
            }
            return reply;
        }
        let any_shallow = e
            .holders
            .keys()
            .any(|n| usable(n) && !below.contains(n.as_str()) && shallow(n));
        let best = e
            .holders
            .iter()
            .filter(|(n, _)| usable(n))
            .filter(|(n, _)| !below.contains(n.as_str()))
            .filter(|(n, _)| !any_shallow || shallow(n))
            .min_by_key(|(n, h)| {
                (
                    load.get(n.as_str()).copied().unwrap_or(0),
                    !h.complete,
                    h.have < req.have,
                    std::cmp::Reverse(h.have),
                    n.as_str(),
                )
            })
            .map(|(n, h)| (n.clone(), h.complete));
        let reply = match best {
            Some((from, complete)) => {
                // Others to read pieces from at the same time: copies with upload to spare
                // (complete ones, or a fetch nobody reads from that is ahead of the asker).
                // Not nodes that read from the asker, and not the links of a pipeline, whose
                // upload the next node down needs whole.
                let piece = e.size.map_or(u64::MAX, crate::pieces::piece_size);
                let mut also: Vec<(&String, &Holder)> = e
                    .holders
                    .iter()
                    .filter(|(n, _)| usable(n) && **n != from && !below.contains(n.as_str()))
                    .filter(|(n, h)| {
                        h.complete
                            || (!load.contains_key(n.as_str())
                                && h.have >= req.have.saturating_add(piece))
                    })
                    .collect();
                also.sort_by_key(|(n, h)| {
                    (
                        !h.complete,
                        load.get(n.as_str()).copied().unwrap_or(0),
                        std::cmp::Reverse(h.have),
                        n.as_str(),
                    )
                });
                LocateReply::Follow {
                    pieces: e.pieces_from(0),
                    also: also
                        .into_iter()
                        .take(MAX_ALSO)
                        .map(|(n, h)| Holding {
                            addr: n.clone(),
                            have: h.have,
                            complete: h.complete,
                        })
                        .collect(),
                    from,
                    complete,
                }
            }
            None => LocateReply::Fetch,
        };
        self.record(&key, req, &reply, now);
        reply
    }

    /// Record what the asker of `req` will do after `reply`.
    fn record(&mut self, key: &str, req: &LocateRequest, reply: &LocateReply, now: Instant) {
        if let (Some(a), false, Some(e)) =
            (req.node.as_deref(), req.probe, self.entries.get_mut(key))
        {
            let source = match reply {
                LocateReply::Follow { from, .. } => Some(from.clone()),
                LocateReply::Fetch => None,
            };
            let h = e.holders.entry(a.to_string()).or_insert(Holder {
                complete: false,
                have: req.have,
                source: None,
                also: Vec::new(),
                home: None,
                seen: now,
            });
            h.have = h.have.max(req.have);
            h.source = source;
            h.seen = now;
            if let Some(st) = req.stripe {
                h.home = Some(st.home);
            }
        }
        self.trim();
    }

    /// Record what a node says about a digest.
    pub fn announce(&mut self, a: &Announce, now: Instant) {
        let key = match a.stripe {
            Some(s) => stripe_key(&a.digest, s),
            None => a.digest.clone(),
        };
        // A node gone from a blob nobody tracks here changes nothing (and makes no entry).
        if a.event == Event::Gone && !self.entries.contains_key(&key) {
            return;
        }
        let e = self.entries.entry(key).or_insert_with(|| Entry::new(now));
        e.touched = now;
        let trusted = match a.event {
            Event::Gone => {
                e.gone(&a.node);
                false
            }
            Event::Progress {
                have,
                size,
                origin,
                ref from,
                ref also,
            } => {
                if e.size.is_some_and(|s| s != size) || size > MAX_SIZE {
                    return;
                }
                if !e.holders.contains_key(&a.node) && e.holders.len() >= MAX_HOLDERS {
                    return;
                }
                e.size = Some(size);
                let h = e.holders.entry(a.node.clone()).or_insert(Holder {
                    complete: false,
                    have,
                    source: None,
                    also: Vec::new(),
                    home: None,
                    seen: now,
                });
                h.have = have;
                h.seen = now;
                if a.stripe.is_some() && a.home.is_some() {
                    h.home = a.home;
                }
                if origin {
                    h.source = None;
                } else if from.is_some() && from.as_deref() != Some(a.node.as_str()) {
                    h.source.clone_from(from);
                }
                h.also = also
                    .iter()
                    .filter(|n| **n != a.node)
                    .take(crate::proto::MAX_ALSO)
                    .cloned()
                    .collect();
                origin
            }
            Event::Complete { size } => {
                if size > MAX_SIZE {
                    return;
                }
                if e.size.is_some_and(|s| s != size) {
                    // Whoever said otherwise before was wrong: a verified holder knows.
                    e.pieces.clear();
                    e.pieces_by = None;
                    e.pieces_confirmed = false;
                }
                if !e.holders.contains_key(&a.node) && e.holders.len() >= MAX_HOLDERS {
                    return;
                }
                e.size = Some(size);
                // (The stripe it takes readers in stays what it said.)
                let home = a
                    .home
                    .filter(|_| a.stripe.is_some())
                    .or_else(|| e.holders.get(&a.node).and_then(|h| h.home));
                e.holders.insert(
                    a.node.clone(),
                    Holder {
                        complete: true,
                        have: size,
                        source: None,
                        also: Vec::new(),
                        home,
                        seen: now,
                    },
                );
                true
            }
        };
        // Piece hashes are the blob's, kept under the digest itself.
        if let (true, Some(p), None) = (trusted, &a.pieces, a.stripe) {
            // Announcements travel in parallel and may arrive out of order, but never far
            // ahead of what is known, and never past the blob's last piece.
            let end = p.first.saturating_add(p.hashes.len() as u64);
            let sane = end <= piece_count(p.size)
                && p.first <= e.pieces.len() as u64 + MAX_PIECE_GAP
                && e.size == Some(p.size);
            let complete = matches!(a.event, Event::Complete { .. });
            if sane && complete && !e.pieces_confirmed {
                // A verified holder's list replaces what an origin fetcher said on the way
                // (which a fetch that then failed on the digest may have got wrong).
                e.pieces = p.hashes.iter().cloned().map(Some).collect();
                e.pieces_by = None;
                e.pieces_confirmed = p.first == 0 && end == piece_count(p.size);
            } else if sane && !complete && !e.pieces_confirmed {
                // A hash once known stands (the first word). Another node reading from the
                // origin fills only pieces nobody spoke for: after the first origin fetcher
                // died, a striped blob's stripes are read from the origin by several nodes,
                // each its own pieces. The first fetcher that is still fetching answers for
                // the list (its `Gone` takes back what nobody verified).
                let first_stands = e
                    .pieces_by
                    .as_deref()
                    .is_some_and(|b| b != a.node && e.holders.contains_key(b));
                if !first_stands {
                    e.pieces_by = Some(a.node.clone());
                }
                if e.pieces.len() < end as usize {
                    e.pieces.resize(end as usize, None);
                }
                for (i, h) in p.hashes.iter().enumerate() {
                    e.pieces[p.first as usize + i].get_or_insert_with(|| h.clone());
                }
            }
        }
        self.trim();
    }

    /// The known piece hashes of `digest` from piece `from` on (consecutive, so it stops at the
    /// first unknown one).
    pub fn pieces(&self, digest: &str, from: u64) -> Option<Pieces> {
        self.entries.get(digest)?.pieces_from(from)
    }

    /// Forget digests nobody holds or fetches that nobody asked about for `stale_after`.
    pub fn expire(&mut self, now: Instant) {
        let stale = self.opts.stale_after;
        self.entries.retain(|_, e| {
            e.holders
                .retain(|_, h| h.complete || now.duration_since(h.seen) <= stale);
            !e.holders.is_empty() || now.duration_since(e.touched) <= stale
        });
    }

    fn trim(&mut self) {
        if self.entries.len() <= self.opts.max_entries {
            return;
        }
        let mut by_age: Vec<(Instant, String)> = self
            .entries
            .iter()
            .map(|(d, e)| (e.touched, d.clone()))
            .collect();
        by_age.sort();
        // A hundredth at a time, so a full table is not sorted on every call.
        let excess = self.entries.len() - self.opts.max_entries + self.opts.max_entries / 100;
        for (_, d) in by_age.into_iter().take(excess) {
            self.entries.remove(&d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(t: &mut Tracker, node: &str, have: u64, exclude: &[&str], now: Instant) -> LocateReply {
        t.locate(
            &LocateRequest {
                digest: "sha256:x".into(),
                node: Some(node.into()),
                have,
                exclude: exclude.iter().map(|s| s.to_string()).collect(),
                avoid: vec![],
                probe: false,
                settle: false,
                stripe: None,
            },
            now,
        )
    }

    fn from(r: &LocateReply) -> &str {
        match r {
            LocateReply::Follow { from, .. } => from,
            LocateReply::Fetch => "origin",
        }
    }

    fn progress(t: &mut Tracker, node: &str, have: u64, origin: bool, now: Instant) {
        t.announce(
            &Announce {
                stripe: None,
                home: None,
                digest: "sha256:x".into(),
                node: node.into(),
                event: Event::Progress {
                    have,
                    size: 100,
                    origin,
                    from: None,
                    also: vec![],
                },
                pieces: None,
            },
            now,
        );
    }

    #[test]
    fn nodes_that_ask_together_form_a_pipeline_with_one_origin_fetch() {
        let mut t = Tracker::default();
        let now = Instant::now();
        let order: Vec<String> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| from(&ask(&mut t, n, 0, &[], now)).to_string())
            .collect();
        assert_eq!(order, ["origin", "a", "b", "c"]);
    }

    fn also(r: &LocateReply) -> Vec<(&str, u64, bool)> {
        match r {
            LocateReply::Follow { also, .. } => also
                .iter()
                .map(|h| (h.addr.as_str(), h.have, h.complete))
                .collect(),
            LocateReply::Fetch => vec![],
        }
    }

    fn complete(t: &mut Tracker, node: &str, now: Instant) {
        t.announce(
            &Announce {
                stripe: None,
                home: None,
                digest: "sha256:x".into(),
                node: node.into(),
                event: Event::Complete { size: 100 },
                pieces: None,
            },
            now,
        );
    }

    #[test]
    fn a_pipeline_names_no_second_source_and_idle_copies_are_named_for_pieces() {
        let mut t = Tracker::default();
        let now = Instant::now();
        // Nodes that pull together: every link's upload is its reader's; nobody else is named.
        for n in ["a", "b", "c"] {
            let r = ask(&mut t, n, 0, &[], now);
            assert!(also(&r).is_empty(), "{n}: {r:?}");
        }
        // c, the end of the pipeline, reads from nobody's upload but its own source's; a node
        // far behind it may read pieces from it within what it has.
        progress(&mut t, "c", 60, false, now);
        let r = ask(&mut t, "d", 0, &[], now);
        assert_eq!(from(&r), "c", "the fewest readers first");
        assert!(also(&r).is_empty(), "c is the one followed");
        // Complete copies are named besides the one followed, complete first, up to four.
        for n in ["e", "f", "g", "h", "i"] {
            complete(&mut t, n, now);
        }
        let r = ask(&mut t, "j", 0, &[], now);
        let named = also(&r);
        assert_eq!(named.len(), MAX_ALSO);
        assert!(named
            .iter()
            .all(|(n, have, c)| *c && *have == 100 && *n != from(&r)));
        // Never a node downstream of the asker.
        let r = ask(&mut t, "c", 60, &[], now);
        assert!(also(&r).iter().all(|(n, ..)| *n != "d"), "{r:?}");
    }

    #[test]
    fn holders_read_for_pieces_count_as_busy_for_the_next_asker() {
        let mut t = Tracker::default();
        let now = Instant::now();
        for n in ["e", "f", "g", "h", "i", "j"] {
            complete(&mut t, n, now);
        }
        let r = ask(&mut t, "x", 0, &[], now);
        assert_eq!(from(&r), "e");
        let named: Vec<String> = also(&r).iter().map(|(n, ..)| n.to_string()).collect();
        assert_eq!(named, ["f", "g", "h", "i"]);
        // x reads pieces from all of them, and says so.
        t.announce(
            &Announce {
                stripe: None,
                home: None,
                digest: "sha256:x".into(),
                node: "x".into(),
                event: Event::Progress {
                    have: 0,
                    size: 100,
                    origin: false,
                    from: Some("e".into()),
                    also: named.clone(),
                },
                pieces: None,
            },
            now,
        );
        // The next asker follows the copy nobody reads, and is named the busy ones after it.
        let r = ask(&mut t, "y", 0, &[], now);
        assert_eq!(from(&r), "j");
        assert_eq!(also(&r).len(), MAX_ALSO);
        // Asking again, x reads from nothing it read before.
        ask(&mut t, "x", 0, &["e", "f", "g", "h", "i"], now);
        let r = ask(&mut t, "z", 0, &[], now);
        assert_eq!(from(&r), "x", "j is read by y, x by nobody");
    }

    /// A locate of stripe `index` of `count` by `node` (at home in stripe `home`, knowing of
    /// `homes` other nodes at home in this one), holding `have` bytes.
    fn stripe_req(
        node: &str,
        (index, count): (u32, u32),
        home: u32,
        homes: u32,
        have: u64,
    ) -> LocateRequest {
        LocateRequest {
            digest: "sha256:x".into(),
            node: Some(node.into()),
            have,
            exclude: vec![],
            avoid: vec![],
            probe: false,
            settle: false,
            stripe: Some(crate::proto::Stripe {
                index,
                count,
                home,
                homes,
            }),
        }
    }

    /// "root" says it reads stripe 0 (of a 100 MiB blob) from the origin, at home in `home`.
    fn root_of_stripe_0(t: &mut Tracker, home: Option<u32>, now: Instant) {
        t.announce(
            &Announce {
                stripe: Some(0),
                home,
                digest: "sha256:x".into(),
                node: "root".into(),
                event: Event::Progress {
                    have: 0,
                    size: 100 << 20,
                    origin: true,
                    from: None,
                    also: vec![],
                },
                pieces: None,
            },
            now,
        );
    }

    #[test]
    fn a_node_not_at_home_waits_for_the_nodes_at_home_it_knows_of() {
        let now = Instant::now();
        // The root reads from the origin, and is at home in stripe 0 (as it says: it never
        // asks).
        let root_in = |t: &mut Tracker| root_of_stripe_0(t, Some(0), now);
        // Nodes at home elsewhere know of three at home here: root, h1, h2.
        let leaf = |t: &mut Tracker, node: &str, settle: bool| {
            let mut req = stripe_req(node, (0, 2), 1, 3, 0);
            req.settle = settle;
            t.locate(&req, now)
        };
        let home = |t: &mut Tracker, node: &str| t.locate(&stripe_req(node, (0, 2), 0, 2, 0), now);
        let mut t = Tracker::default();
        root_in(&mut t);
        assert_eq!(
            leaf(&mut t, "o1", false),
            LocateReply::Fetch,
            "h1, h2 not in"
        );
        assert_eq!(from(&home(&mut t, "h1")), "root");
        assert_eq!(leaf(&mut t, "o1", false), LocateReply::Fetch, "h2 not in");
        // Having waited long enough, a node takes a place all the same.
        assert_eq!(from(&leaf(&mut t, "o2", true)), "h1");
        // The last home node still finds the upper place: nodes at home pass the stripe on.
        assert_eq!(from(&home(&mut t, "h2")), "h1");
        // All in: the others hang below them.
        assert_eq!(from(&leaf(&mut t, "o1", false)), "h2");

        // A node that knows of nobody at home here (an older agent) does not wait.
        let mut t = Tracker::default();
        root_in(&mut t);
        assert_eq!(from(&home(&mut t, "h1")), "root");
        assert_eq!(leaf(&mut t, "o1", false), LocateReply::Fetch, "h2 not in");
        let old = t.locate(&stripe_req("old", (0, 2), 1, 0, 0), now);
        assert_eq!(from(&old), "h1");
    }

    #[test]
    fn a_stripe_is_a_tree_of_the_nodes_whose_home_it_is() {
        let mut t = Tracker::default();
        let now = Instant::now();
        let ask_stripe = |t: &mut Tracker, node: &str, home: u32| {
            t.locate(&stripe_req(node, (0, 2), home, 0, 0), now)
        };
        // Nobody is in the stripe: the first asker is told so, and is not named to others
        // until it says it reads the stripe from the origin (the blob's fetcher does, as it
        // starts). It then takes one reader in the stripe.
        assert_eq!(ask_stripe(&mut t, "early", 0), LocateReply::Fetch);
        assert_eq!(ask_stripe(&mut t, "root", 1), LocateReply::Fetch);
        root_of_stripe_0(&mut t, None, now);
        // A node at home in another stripe does not take the root's one reader: it waits
        // (asks again) until a node at home here can pass the stripe on to it.
        assert_eq!(ask_stripe(&mut t, "o0", 1), LocateReply::Fetch);
        let mut parent: HashMap<&str, String> = HashMap::new();
        // Nodes at home in stripe 0 ask first, then the others.
        for (n, home) in [
            ("h1", 0),
            ("h2", 0),
            ("h3", 0),
            ("o1", 1),
            ("o2", 1),
            ("o3", 1),
        ] {
            parent.insert(n, from(&ask_stripe(&mut t, n, home)).to_string());
        }
        assert_eq!(parent["h1"], "root", "the stripe's head");
        let mut readers: HashMap<&str, usize> = HashMap::new();
        for p in parent.values() {
            *readers.entry(p.as_str()).or_default() += 1;
        }
        assert_eq!(
            readers.get("root"),
            Some(&1),
            "the origin fetcher takes one reader"
        );
        for (n, r) in &readers {
            assert!(
                n.starts_with('h') || *n == "root",
                "{n} is not at home here: {r} readers"
            );
            assert!(*r <= 2, "{n} has {r} readers, more than the stripe count");
        }
        // Shallowest first: h2 and h3 hang under h1, the others under h2 and h3.
        assert_eq!((parent["h2"].as_str(), parent["h3"].as_str()), ("h1", "h1"));
        assert!(["h2", "h3"].contains(&parent["o1"].as_str()));
        // A node at home elsewhere that completes the stripe still takes no reader in it.
        t.announce(
            &Announce {
                stripe: Some(0),
                home: None,
                digest: "sha256:x".into(),
                node: "o1".into(),
                event: Event::Complete { size: 100 },
                pieces: None,
            },
            now,
        );
        assert_ne!(from(&ask_stripe(&mut t, "late", 1)), "o1");
        // A node resuming a stripe that nobody else has the rest of becomes its fetcher from
        // the origin, and is named to the next asker.
        let stripe_1 = |t: &mut Tracker, node: &str, have: u64| {
            t.locate(&stripe_req(node, (1, 2), 1, 0, have), now)
        };
        assert_eq!(stripe_1(&mut t, "top", 4 << 20), LocateReply::Fetch);
        assert_eq!(from(&stripe_1(&mut t, "next", 0)), "top");
        // The stripe is routed apart from the blob: nobody is known under the digest itself.
        assert_eq!(ask(&mut t, "whole", 0, &[], now), LocateReply::Fetch);
    }

    #[test]
    fn a_probe_records_nothing_and_grants_nothing() {
        let mut t = Tracker::default();
        let now = Instant::now();
        let probe = |t: &mut Tracker, node: &str| {
            t.locate(
                &LocateRequest {
                    digest: "sha256:x".into(),
                    node: Some(node.into()),
                    have: 0,
                    exclude: vec![],
                    avoid: vec![],
                    probe: true,
                    settle: false,
                    stripe: None,
                },
                now,
            )
        };
        assert_eq!(probe(&mut t, "a"), LocateReply::Fetch);
        assert!(t.is_empty(), "a probe of an unknown digest leaves no entry");
        ask(&mut t, "b", 0, &[], now);
        assert_eq!(from(&probe(&mut t, "a")), "b");
        // The probe did not make a a reader of b: c is sent to b as well, not to a.
        assert_eq!(from(&ask(&mut t, "c", 0, &[], now)), "b");
    }

    #[test]
    fn six_hundred_nodes_asking_at_once_form_a_tree_of_short_chains() {
        // (A locate is linear in the holders: this runs in well under a second, where a
        // quadratic locate took minutes.)
        let mut t = Tracker::default();
        let now = Instant::now();
        let names: Vec<String> = (0..600)
            .map(|i| format!("10.0.{}.{}:5001", i / 250, i % 250))
            .collect();
        let mut source: HashMap<String, String> = HashMap::new();
        for (i, n) in names.iter().enumerate() {
            let r = ask(&mut t, n, 0, &[], now);
            if i == 0 {
                assert_eq!(from(&r), "origin");
            } else {
                source.insert(n.clone(), from(&r).to_string());
            }
            if i > 0 && i <= MAX_CHAIN {
                assert_eq!(from(&r), names[i - 1], "the first nodes form a chain");
            }
        }
        // Every node is at most MAX_CHAIN hops from the origin fetcher...
        for n in &names {
            let (mut x, mut d) = (n.clone(), 0);
            while let Some(s) = source.get(&x) {
                x = s.clone();
                d += 1;
            }
            assert!(d <= MAX_CHAIN, "{n} is {d} hops from the origin fetcher");
        }
        // ...and no node serves more than a few readers.
        let mut readers: HashMap<&str, usize> = HashMap::new();
        for s in source.values() {
            *readers.entry(s).or_default() += 1;
        }
        let most = readers.values().copied().max().unwrap_or(0);
        assert!(most <= 4, "a node serves {most} readers");
    }

    #[test]
    fn a_later_node_reads_from_an_idle_complete_copy() {
        let mut t = Tracker::default();
        let now = Instant::now();
        ask(&mut t, "a", 0, &[], now);
        ask(&mut t, "b", 0, &[], now);
        for n in ["a", "b"] {
            t.announce(
                &Announce {
                    stripe: None,
                    home: None,
                    digest: "sha256:x".into(),
                    node: n.into(),
                    event: Event::Complete { size: 100 },
                    pieces: None,
                },
                now,
            );
        }
        let r = ask(&mut t, "c", 0, &[], now);
        assert!(matches!(r, LocateReply::Follow { complete: true, .. }));
        // c reads from one of them; d is sent to the other.
        let d = ask(&mut t, "d", 0, &[], now);
        assert_ne!(from(&r), from(&d));
    }

    #[test]
    fn when_the_origin_fetcher_dies_the_furthest_survivor_resumes_it() {
        let mut t = Tracker::default();
        let now = Instant::now();
        ask(&mut t, "a", 0, &[], now); // origin
        ask(&mut t, "b", 0, &[], now); // reads a
        ask(&mut t, "c", 0, &[], now); // reads b
        ask(&mut t, "d", 0, &[], now); // reads c
        progress(&mut t, "a", 60, true, now);
        progress(&mut t, "b", 59, false, now);
        progress(&mut t, "c", 55, false, now);
        // a dies: only b read from it. b asks, naming a.
        let r = ask(&mut t, "b", 59, &["a"], now);
        assert_eq!(from(&r), "origin", "c and d read from b: b resumes at 59");
        // c and d go on reading down the chain; a newcomer goes to the end of it.
        assert_eq!(from(&ask(&mut t, "e", 0, &[], now)), "d");
    }

    #[test]
    fn a_reader_that_asks_first_is_sent_to_the_survivor_furthest_along() {
        let mut t = Tracker::default();
        let now = Instant::now();
        ask(&mut t, "a", 0, &[], now);
        ask(&mut t, "b", 0, &[], now); // reads a
        progress(&mut t, "b", 59, false, now);
        progress(&mut t, "d", 40, false, now);
        // d held 40 bytes from an earlier read of a. a dies; d asks first: b, with more, is
        // offered to it, and b, asking next, resumes the origin (d now reads from it).
        assert_eq!(from(&ask(&mut t, "d", 40, &["a"], now)), "b");
        assert_eq!(from(&ask(&mut t, "b", 59, &["a"], now)), "origin");
    }

    #[test]
    fn an_owner_that_only_heard_announcements_still_never_makes_a_cycle() {
        // This owner answered no locate: it knows who reads from whom only from progress.
        let mut t = Tracker::default();
        let now = Instant::now();
        for (node, from) in [("b", "a"), ("c", "b")] {
            t.announce(
                &Announce {
                    stripe: None,
                    home: None,
                    digest: "sha256:x".into(),
                    node: node.into(),
                    event: Event::Progress {
                        have: 10,
                        size: 100,
                        origin: false,
                        from: Some(from.into()),
                        also: vec![],
                    },
                    pieces: None,
                },
                now,
            );
        }
        // a is gone; b asks: c reads from b, so b must go to the origin, not to c.
        assert_eq!(from(&ask(&mut t, "b", 10, &["a"], now)), "origin");
    }

    #[test]
    fn silent_fetchers_are_forgotten_and_complete_holders_are_not() {
        let mut t = Tracker::new(TrackerOptions {
            stale_after: Duration::from_secs(10),
            max_entries: 10,
        });
        let t0 = Instant::now();
        ask(&mut t, "a", 0, &[], t0);
        let later = t0 + Duration::from_secs(11);
        assert_eq!(from(&ask(&mut t, "b", 0, &[], later)), "origin");
        t.announce(
            &Announce {
                stripe: None,
                home: None,
                digest: "sha256:x".into(),
                node: "b".into(),
                event: Event::Complete { size: 100 },
                pieces: None,
            },
            later,
        );
        let much_later = later + Duration::from_secs(3600);
        t.expire(much_later);
        assert_eq!(from(&ask(&mut t, "c", 0, &[], much_later)), "b");
    }

    #[test]
    fn piece_hashes_come_only_from_the_origin_fetcher_or_a_complete_holder() {
        let mut t = Tracker::default();
        let now = Instant::now();
        let pieces = |hashes: &[&str]| Pieces {
            size: 12 << 20,
            first: 0,
            hashes: hashes.iter().map(|s| s.to_string()).collect(),
        };
        t.announce(
            &Announce {
                stripe: None,
                home: None,
                digest: "sha256:x".into(),
                node: "liar".into(),
                event: Event::Progress {
                    have: 50,
                    size: 12 << 20,
                    origin: false,
                    from: None,
                    also: vec![],
                },
                pieces: Some(pieces(&["bad"])),
            },
            now,
        );
        assert_eq!(t.pieces("sha256:x", 0), None);
        t.announce(
            &Announce {
                stripe: None,
                home: None,
                digest: "sha256:x".into(),
                node: "a".into(),
                event: Event::Progress {
                    have: 50,
                    size: 12 << 20,
                    origin: true,
                    from: None,
                    also: vec![],
                },
                pieces: Some(pieces(&["p0", "p1"])),
            },
            now,
        );
        t.announce(
            &Announce {
                stripe: None,
                home: None,
                digest: "sha256:x".into(),
                node: "b".into(),
                event: Event::Complete { size: 12 << 20 },
                pieces: Some(pieces(&["other", "p1", "p2"])),
            },
            now,
        );
        assert_eq!(
            t.pieces("sha256:x", 1),
            Some(Pieces {
                size: 12 << 20,
                first: 1,
                hashes: vec!["p1".into(), "p2".into()]
            })
        );
    }

    #[test]
    fn hashes_of_an_origin_fetch_that_failed_are_forgotten_and_a_verified_list_wins() {
        let mut t = Tracker::default();
        let now = Instant::now();
        let size = 12u64 << 20;
        let say = |t: &mut Tracker, node: &str, event: Event, hashes: &[&str]| {
            t.announce(
                &Announce {
                    stripe: None,
                    home: None,
                    digest: "sha256:x".into(),
                    node: node.into(),
                    event,
                    pieces: Some(Pieces {
                        size,
                        first: 0,
                        hashes: hashes.iter().map(|s| s.to_string()).collect(),
                    }),
                },
                now,
            )
        };
        let progress = Event::Progress {
            have: 8 << 20,
            size,
            origin: true,
            from: None,
            also: vec![],
        };
        // The origin sent a's fetch a corrupt piece 1: its digest failed, and it says so.
        say(&mut t, "a", progress.clone(), &["p0", "bad"]);
        assert_eq!(
            t.pieces("sha256:x", 1).map(|p| p.hashes),
            Some(vec!["bad".to_string()])
        );
        t.announce(
            &Announce {
                stripe: None,
                home: None,
                digest: "sha256:x".into(),
                node: "a".into(),
                event: Event::Gone,
                pieces: None,
            },
            now,
        );
        assert_eq!(t.pieces("sha256:x", 0), None);
        // Another origin fetcher says "bad" again, then a verified holder corrects it.
        say(&mut t, "b", progress, &["p0", "bad"]);
        say(&mut t, "c", Event::Complete { size }, &["p0", "p1", "p2"]);
        assert_eq!(
            t.pieces("sha256:x", 0).map(|p| p.hashes),
            Some(vec!["p0".to_string(), "p1".into(), "p2".into()])
        );
        // Once confirmed, no later word changes it.
        say(&mut t, "d", Event::Complete { size }, &["x0", "x1", "x2"]);
        assert_eq!(
            t.pieces("sha256:x", 1).map(|p| p.hashes[0].clone()),
            Some("p1".into())
        );
    }

    #[test]
    fn a_second_origin_fetcher_fills_only_the_hashes_nobody_gave() {
        // After the first origin fetcher died, each stripe's first reader reads the rest of
        // its stripe from the origin and publishes those pieces' hashes.
        let mut t = Tracker::default();
        let now = Instant::now();
        let size = 16u64 << 20; // four pieces
                                // `node` read from the origin and hashed pieces `first..` of `digest` (or of its
                                // stripe).
        let say_of = |t: &mut Tracker, digest: &str, stripe, node: &str, first, hashes: &[&str]| {
            t.announce(
                &Announce {
                    stripe,
                    home: None,
                    digest: digest.into(),
                    node: node.into(),
                    event: Event::Progress {
                        have: 0,
                        size,
                        origin: true,
                        from: None,
                        also: vec![],
                    },
                    pieces: Some(Pieces {
                        size,
                        first,
                        hashes: hashes.iter().map(|s| s.to_string()).collect(),
                    }),
                },
                now,
            )
        };
        let say = |t: &mut Tracker, node: &str, first: u64, hashes: &[&str]| {
            say_of(t, "sha256:x", None, node, first, hashes)
        };
        say(&mut t, "a", 0, &["p0", "p1"]);
        say(&mut t, "b", 1, &["other", "p2"]);
        say(&mut t, "c", 3, &["p3"]);
        assert_eq!(
            t.pieces("sha256:x", 0).map(|p| p.hashes),
            Some(vec!["p0".into(), "p1".into(), "p2".into(), "p3".into()]),
            "a hash once known stands; the others fill what nobody gave"
        );
        // A stripe's announcements carry no hashes for the blob.
        say_of(&mut t, "sha256:y", Some(1), "a", 0, &["q0"]);
        assert_eq!(t.pieces("sha256:y", 0), None);
    }

    #[test]
    fn the_table_keeps_at_most_max_entries() {
        let mut t = Tracker::new(TrackerOptions {
            stale_after: Duration::from_secs(10),
            max_entries: 3,
        });
        let now = Instant::now();
        for i in 0..10u64 {
            t.locate(
                &LocateRequest {
                    digest: format!("sha256:{i}"),
                    node: Some("a".into()),
                    have: 0,
                    exclude: vec![],
                    avoid: vec![],
                    probe: false,
                    settle: false,
                    stripe: None,
                },
                now + Duration::from_millis(i),
            );
        }
        assert_eq!(t.len(), 3);
    }
}
