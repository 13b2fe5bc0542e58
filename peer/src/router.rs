//! One node's view of the peers: it asks a digest's owners where to read it, announces what it
//! fetches, and (as an owner) answers the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::client::{PeerClient, Timeouts, TokenSource};
use crate::members::{Membership, Seeds};
use crate::proto::{
    stripe_key, Announce, Event, Fetching, Hello, Holding, LocateReply, LocateRequest, Pieces,
    Status,
};
use crate::rate::RateLimit;
use crate::tracker::{Tracker, TrackerOptions};
use crate::{ring, PeerError};

#[derive(Clone)]
pub struct PeerConfig {
    pub seeds: Seeds,
    pub node_name: String,
    /// Owners per digest.
    pub owners: usize,
    /// How often the membership is re-read and backed-off members probed.
    pub refresh: Duration,
    pub token: TokenSource,
    pub timeouts: Timeouts,
    /// Bytes per second this node sends to peers, and (separately) takes from them.
    pub rate_limit: Option<u64>,
    /// Blob reads this node serves to peers at once; more are told it is busy (429).
    pub max_uploads: usize,
    /// Stripes a large blob's pieces are cut into in a large cluster, each spread by a tree of
    /// its own (1: never).
    pub stripes: u32,
    /// Live members from which on blobs are read in stripes.
    pub stripe_min_nodes: usize,
}

/// A blob is read in stripes only with at least this many pieces per stripe.
pub const MIN_STRIPE_PIECES: u64 = 4;

/// Where to read a blob from, as the owners decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// From this peer.
    Peer {
        addr: String,
        complete: bool,
        pieces: Option<Pieces>,
        /// Other holders to read pieces from at the same time.
        also: Vec<Holding>,
    },
    /// From the origin: this node is the cluster's fetcher of the blob.
    Origin,
    /// From the origin, without the owners' word (none answered, or no peers).
    Alone,
}

impl Route {
    fn follow(reply: LocateReply) -> Option<Route> {
        match reply {
            LocateReply::Follow {
                from,
                complete,
                pieces,
                also,
            } => Some(Route::Peer {
                addr: from,
                complete,
                pieces,
                also,
            }),
            LocateReply::Fetch => None,
        }
    }
}

pub struct PeerRouter {
    me: Hello,
    owners_k: usize,
    stripes: u32,
    stripe_min_nodes: usize,
    members: Arc<Membership>,
    client: PeerClient,
    tracker: Mutex<Tracker>,
    /// Woken when piece hashes arrive.
    pieces_changed: Notify,
    fetching: Mutex<HashMap<String, Fetching>>,
    uploads: Arc<Semaphore>,
    up: Option<RateLimit>,
    down: Option<RateLimit>,
}

impl PeerRouter {
    /// Build the router and start re-reading the membership every `refresh`.
    pub fn start(cfg: PeerConfig) -> Result<Arc<Self>, PeerError> {
        let client = PeerClient::new(cfg.token.clone(), cfg.timeouts.clone())?;
        let me = Hello {
            node: cfg.node_name.clone(),
            instance: uuid::Uuid::new_v4().to_string(),
            protocol: crate::proto::PROTOCOL,
        };
        let members = Membership::new(cfg.seeds.clone(), me.clone(), client.clone());
        let router = Arc::new(Self {
            me,
            owners_k: cfg.owners.max(1),
            stripes: cfg.stripes.clamp(1, crate::proto::MAX_STRIPES),
            stripe_min_nodes: cfg.stripe_min_nodes,
            members,
            client,
            tracker: Mutex::new(Tracker::new(TrackerOptions::default())),
            pieces_changed: Notify::new(),
            fetching: Mutex::new(HashMap::new()),
            uploads: Arc::new(Semaphore::new(cfg.max_uploads.max(1))),
            up: cfg.rate_limit.map(RateLimit::new),
            down: cfg.rate_limit.map(RateLimit::new),
        });
        let weak = Arc::downgrade(&router);
        let every = cfg.refresh;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(r) = weak.upgrade() else { break };
                r.members.refresh().await;
                r.tracker().expire(Instant::now());
            }
        });
        Ok(router)
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn hello(&self) -> Hello {
        self.me.clone()
    }

    /// A slot to serve a peer a blob in, held until the response ends; `None`: this node
    /// serves as many as it may already (answer 429, the peer moves on).
    pub fn upload_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.uploads.clone().try_acquire_owned().ok()
    }

    /// The limit on what this node sends to peers.
    pub fn upload_limit(&self) -> Option<&RateLimit> {
        self.up.as_ref()
    }

    /// The limit on what this node takes from peers.
    pub fn download_limit(&self) -> Option<&RateLimit> {
        self.down.as_ref()
    }

    pub fn client(&self) -> &PeerClient {
        &self.client
    }

    pub fn members(&self) -> &Membership {
        &self.members
    }

    /// This node's cluster address, once it has found itself among the peers.
    pub fn self_addr(&self) -> Option<String> {
        self.members.self_addr()
    }

    fn owners(&self, digest: &str) -> Vec<String> {
        let live = self.members.live();
        ring::owners(digest, live.iter().map(String::as_str), self.owners_k)
    }

    /// The stripes to read a blob of `size` bytes in: `Some(count)` when stripes are on, the
    /// cluster has `stripe_min_nodes` live members or more, and each stripe would have
    /// [`MIN_STRIPE_PIECES`] pieces or more. (In a small cluster a stripe has too few nodes at
    /// home to carry its tree, and one pipeline does better.)
    pub fn stripes_for(&self, size: u64) -> Option<u32> {
        let k = self.stripes;
        (k > 1
            && crate::pieces::piece_count(size) >= MIN_STRIPE_PIECES * u64::from(k)
            && self.members.live().len() >= self.stripe_min_nodes.max(2)
            && self.members.oldest_protocol() >= crate::proto::STRIPES_PROTOCOL)
            .then_some(k)
    }

    /// The stripe of `count` in which this node takes readers: its place in the sorted live
    /// membership, modulo `count`, so each stripe has a fair share of the nodes at home.
    pub fn home(&self, count: u32) -> u32 {
        match (self.ranked(), self.self_addr()) {
            (Some((_, rank)), _) => (rank % count.max(1) as usize) as u32,
            (None, Some(me)) => crate::tracker::home(&me, count),
            (None, None) => crate::tracker::home(&self.me.instance, count),
        }
    }

    /// The live membership, sorted, and this node's place in it (`None`: not found in it).
    fn ranked(&self) -> Option<(Vec<String>, usize)> {
        let me = self.self_addr()?;
        let mut live = self.members.live();
        live.sort();
        let rank = live.iter().position(|a| *a == me)?;
        Some((live, rank))
    }

    /// How many other live members take readers in stripe `index` of `count` (by their place
    /// in the sorted membership, as [`Self::home`]); 0 when this node is not found in it.
    pub fn homes(&self, index: u32, count: u32) -> u32 {
        let Some((live, me)) = self.ranked() else {
            return 0;
        };
        let k = count.max(1) as usize;
        (0..live.len())
            .filter(|rank| rank % k == index as usize && *rank != me)
            .count() as u32
    }

    /// Ask `digest`'s owners, first live one first, where to read it. `have` bytes are held
    /// already; `exclude` are peers that failed this node for it.
    /// `exclude`: peers that failed this node for the blob (the owners forget them); `avoid`:
    /// peers not to name this time (busy).
    pub async fn locate(
        &self,
        digest: &str,
        have: u64,
        exclude: &[String],
        avoid: &[String],
    ) -> Route {
        let req = self.request(digest, have, exclude, avoid);
        self.locate_at(self.owners(digest), req, true).await
    }

    /// This node's locate of `digest` (the whole blob, not settling).
    fn request(
        &self,
        digest: &str,
        have: u64,
        exclude: &[String],
        avoid: &[String],
    ) -> LocateRequest {
        LocateRequest {
            digest: digest.to_string(),
            node: self.self_addr(),
            have,
            exclude: exclude.to_vec(),
            avoid: avoid.to_vec(),
            probe: false,
            settle: false,
            stripe: None,
        }
    }

    /// Ask the owners of stripe `index` of `count` of `digest` where to read its pieces: the
    /// stripe's tree (see [`crate::tracker`]). `Route::Origin`: nobody has or is fetching the
    /// stripe, and this node is now its fetcher; or, starting (`have` 0) and not `settle`,
    /// nobody with room to read from yet: ask again.
    #[allow(clippy::too_many_arguments)]
    pub async fn locate_stripe(
        &self,
        digest: &str,
        index: u32,
        count: u32,
        have: u64,
        exclude: &[String],
        avoid: &[String],
        settle: bool,
    ) -> Route {
        let req = LocateRequest {
            settle,
            stripe: Some(crate::proto::Stripe {
                index,
                count,
                home: self.home(count),
                homes: self.homes(index, count),
            }),
            ..self.request(digest, have, exclude, avoid)
        };
        // Starting, a stripe nobody is in yet is asked of its first owner again a moment
        // later (see the tracker): other owners are not probed, as a parent one of them names
        // is recorded by none, and the stripe's root would take more than its one reader.
        let probe = have > 0;
        self.locate_at(self.owners(&stripe_key(digest, index)), req, probe)
            .await
    }

    /// The first of `owners` that answers decides; if it grants this node the origin fetch,
    /// and `probe`, the other owners are still asked who has the blob (the first may have
    /// just joined and know less than they do), all at once: a hung owner costs one timeout,
    /// not one each.
    async fn locate_at(&self, owners: Vec<String>, mut req: LocateRequest, probe: bool) -> Route {
        for (k, owner) in owners.iter().enumerate() {
            match self.ask(owner, &req).await {
                Some(LocateReply::Fetch) if !probe => return Route::Origin,
                Some(LocateReply::Fetch) => {
                    req.probe = true;
                    let probes = owners[k + 1..].iter().map(|o| self.ask(o, &req));
                    let replies = futures_util::future::join_all(probes).await;
                    return replies
                        .into_iter()
                        .flatten()
                        .find_map(Route::follow)
                        .unwrap_or(Route::Origin);
                }
                Some(reply) => return Route::follow(reply).unwrap_or(Route::Alone),
                None => continue,
            }
        }
        Route::Alone
    }

    /// One owner's answer to a locate (this node's own, when it is the owner); `None` when it
    /// gave none.
    async fn ask(&self, owner: &str, req: &LocateRequest) -> Option<LocateReply> {
        if Some(owner) == req.node.as_deref() {
            return Some(self.handle_locate(req));
        }
        match self.client.locate(owner, req).await {
            Ok(r) => {
                self.members.succeeded(owner);
                Some(r)
            }
            Err(e) => {
                if e.is_unreachable() {
                    self.members.failed(owner, &e);
                } else {
                    tracing::debug!(owner, error = %e, "owner did not answer a locate");
                }
                None
            }
        }
    }

    /// A peer that holds or fetches `digest`, as its owners know, without asking for it
    /// (nothing is recorded).
    pub async fn holder(&self, digest: &str) -> Option<String> {
        let me = self.self_addr();
        let req = LocateRequest {
            digest: digest.to_string(),
            node: me.clone(),
            have: 0,
            exclude: Vec::new(),
            avoid: Vec::new(),
            probe: true,
            settle: false,
            stripe: None,
        };
        for owner in self.owners(digest) {
            let reply = if Some(&owner) == me.as_ref() {
                self.handle_locate(&req)
            } else {
                match self.client.locate(&owner, &req).await {
                    Ok(r) => r,
                    Err(e) => {
                        if e.is_unreachable() {
                            self.members.failed(&owner, &e);
                        }
                        continue;
                    }
                }
            };
            if let LocateReply::Follow { from, .. } = reply {
                // The token goes only to members.
                return self.members.is_member(&from).then_some(from);
            }
        }
        None
    }

    /// Tell `digest`'s owners what this node has of it (in the background; an owner that does
    /// not answer is backed off).
    /// Tell `digest`'s owners at once (in the background) to name `bad` to nobody: it failed
    /// this node for the blob (broke, or sent a bad piece). A probe: nothing else is recorded.
    pub fn report(self: &Arc<Self>, digest: &str, bad: &str) {
        let req = LocateRequest {
            digest: digest.to_string(),
            node: self.self_addr(),
            have: 0,
            exclude: vec![bad.to_string()],
            avoid: Vec::new(),
            probe: true,
            settle: false,
            stripe: None,
        };
        for owner in self.owners(digest) {
            if Some(&owner) == req.node.as_ref() {
                self.handle_locate(&req);
                continue;
            }
            let (me, req) = (self.clone(), req.clone());
            tokio::spawn(async move {
                match me.client.locate(&owner, &req).await {
                    Ok(_) => me.members.succeeded(&owner),
                    Err(e) if e.is_unreachable() => me.members.failed(&owner, &e),
                    Err(e) => tracing::debug!(owner, error = %e, "a report was refused"),
                }
            });
        }
    }

    /// Complete and gone are told to the owners of every stripe of the blob too (a complete
    /// copy serves any stripe, and one gone serves none).
    pub fn announce(self: &Arc<Self>, digest: &str, event: Event, pieces: Option<Pieces>) {
        {
            let mut f = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
            match &event {
                Event::Progress { .. } => {}
                Event::Complete { .. } | Event::Gone => {
                    f.remove(digest);
                }
            }
        }
        let stripes = match &event {
            Event::Progress { .. } => None,
            Event::Complete { size } => self.stripes_for(*size),
            Event::Gone => (self.stripes > 1).then_some(self.stripes),
        };
        if let Some(k) = stripes {
            let home = self.home(k);
            for s in 0..k {
                self.send_announce(digest, Some((s, home)), event.clone(), None);
            }
        }
        self.send_announce(digest, None, event, pieces);
    }

    /// Tell the owners of stripe `index` of `digest` how this node reads it (`from`), or that
    /// it reads it from the origin.
    /// Tell the owners of stripe `index` of `count` (with the stripe this node takes readers
    /// in).
    pub fn announce_stripe(self: &Arc<Self>, digest: &str, index: u32, count: u32, event: Event) {
        self.send_announce(digest, Some((index, self.home(count))), event, None);
    }

    fn send_announce(
        self: &Arc<Self>,
        digest: &str,
        stripe: Option<(u32, u32)>,
        event: Event,
        pieces: Option<Pieces>,
    ) {
        let Some(node) = self.self_addr() else { return };
        let a = Announce {
            stripe: stripe.map(|(index, _)| index),
            home: stripe.map(|(_, home)| home),
            digest: digest.to_string(),
            node: node.clone(),
            event,
            pieces,
        };
        let key = match stripe {
            Some((s, _)) => stripe_key(digest, s),
            None => digest.to_string(),
        };
        for owner in self.owners(&key) {
            if owner == node {
                self.handle_announce(&a);
                continue;
            }
            let (me, a) = (self.clone(), a.clone());
            tokio::spawn(async move {
                match me.client.announce(&owner, &a).await {
                    Ok(()) => me.members.succeeded(&owner),
                    Err(e) if e.is_unreachable() => me.members.failed(&owner, &e),
                    Err(e) => tracing::debug!(owner, error = %e, "an announcement was refused"),
                }
            });
        }
    }

    /// Tell each owner of each of `held` (digest, size) that this node holds it: at start-up
    /// and from time to time, so owners that restarted, or became owners when the membership
    /// changed, know the copies there are. Batched per owner.
    pub async fn announce_held(&self, held: &[(String, u64)]) {
        let Some(node) = self.self_addr() else { return };
        let live = self.members.live();
        let mut by_owner: HashMap<String, Vec<Announce>> = HashMap::new();
        for (digest, size) in held {
            for owner in ring::owners(digest, live.iter().map(String::as_str), self.owners_k) {
                by_owner.entry(owner).or_default().push(Announce {
                    stripe: None,
                    home: None,
                    digest: digest.clone(),
                    node: node.clone(),
                    event: Event::Complete { size: *size },
                    pieces: None,
                });
            }
        }
        for (owner, all) in by_owner {
            if owner == node {
                let now = Instant::now();
                let mut t = self.tracker();
                for a in &all {
                    t.announce(a, now);
                }
                continue;
            }
            for batch in all.chunks(crate::proto::MAX_BATCH) {
                if let Err(e) = self.client.announce_batch(&owner, batch).await {
                    if e.is_unreachable() {
                        self.members.failed(&owner, &e);
                    }
                    tracing::debug!(owner, error = %e, "held blobs not announced to an owner");
                    break;
                }
            }
        }
    }

    /// Record, for `manta peers`, where this node reads a blob from.
    pub fn note_fetching(&self, digest: &str, from: &str, have: u64, size: u64) {
        self.fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                digest.to_string(),
                Fetching {
                    digest: digest.to_string(),
                    from: from.to_string(),
                    have,
                    size,
                },
            );
    }

    /// This node's fetch of `digest` is over, however it ended.
    pub fn done_fetching(&self, digest: &str) {
        self.fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest);
    }

    /// The piece hashes of `digest` from piece `from`, from its first live owner that knows
    /// them, waiting up to `wait` for piece `from`.
    pub async fn pieces(&self, digest: &str, from: u64, wait: Duration) -> Option<Pieces> {
        let me = self.self_addr();
        for owner in self.owners(digest) {
            if Some(&owner) == me.as_ref() {
                if let Some(p) = self.handle_pieces(digest, from, wait).await {
                    return Some(p);
                }
                continue;
            }
            match self.client.pieces(&owner, digest, from, wait).await {
                Ok(Some(p)) => return Some(p),
                Ok(None) => {}
                Err(e) if e.is_unreachable() => self.members.failed(&owner, &e),
                Err(e) => tracing::debug!(owner, error = %e, "no piece hashes from an owner"),
            }
        }
        None
    }

    /// Owner side of `locate`.
    pub fn handle_locate(&self, req: &LocateRequest) -> LocateReply {
        let reply = self.tracker().locate(req, Instant::now());
        tracing::debug!(digest = req.digest, stripe = ?req.stripe.map(|s| s.index),
            asker = ?req.node, have = req.have, probe = req.probe, ?reply, "locate answered");
        reply
    }

    /// Owner side of `announce`.
    pub fn handle_announce(&self, a: &Announce) {
        self.tracker().announce(a, Instant::now());
        if a.pieces.is_some() {
            self.pieces_changed.notify_waiters();
        }
    }

    /// Owner side of `pieces`: the known hashes from piece `from`, waiting up to `wait` (at most
    /// 10 s) for piece `from` to be announced.
    pub async fn handle_pieces(&self, digest: &str, from: u64, wait: Duration) -> Option<Pieces> {
        let deadline = tokio::time::Instant::now() + wait.min(Duration::from_secs(10));
        loop {
            let changed = self.pieces_changed.notified();
            if let Some(p) = self.tracker().pieces(digest, from) {
                return Some(p);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    pub fn status(&self) -> Status {
        let mut fetching: Vec<Fetching> = self
            .fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        fetching.sort_by(|a, b| a.digest.cmp(&b.digest));
        Status {
            node: self.me.node.clone(),
            addr: self.self_addr(),
            members: self.members.status(),
            tracked: self.tracker().len(),
            fetching,
        }
    }
}
