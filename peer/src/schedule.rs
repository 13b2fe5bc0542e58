//! The piece scheduler of a fetch that reads one blob from several peers at once: which piece
//! to ask for next, and from whom. Plain data with the time passed in.
//!
//! - Pieces are asked for lowest first, at most `window` pieces past the first one missing, so
//!   the contiguous prefix a node's clients stream from grows steadily.
//! - A source takes at most `per_source` pieces at once, a blob at most `per_blob`; the source
//!   with the fewest pieces in flight is asked first, so a fast source ends up with more.
//! - A source that holds only part of the blob (a fetch in progress) is asked only for pieces
//!   within what it held when it was named; the one the owners named first (the node followed)
//!   is asked for any piece, and serves it as it arrives there.
//! - A piece in flight for longer than its deadline (`slow_factor` × the median piece time so
//!   far, at least `min_deadline`) is taken from its source and asked of another; a source
//!   that is late twice, broke, or sent a bad piece is asked for nothing more. A source that
//!   dies mid-piece costs that piece only.

use std::time::{Duration, Instant};

use crate::pieces::{piece_count, piece_range};

/// Bounds of one multi-source fetch.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Pieces in flight from one source.
    pub per_source: usize,
    /// Pieces in flight for the blob.
    pub per_blob: usize,
    /// How far past the first missing piece a piece may be asked for.
    pub window: u64,
    /// The shortest deadline of a piece.
    pub min_deadline: Duration,
    /// A piece is late after this many median piece times.
    pub slow_factor: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_source: 2,
            per_blob: 8,
            window: 32,
            min_deadline: Duration::from_secs(5),
            slow_factor: 4,
        }
    }
}

/// A peer to read pieces from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSpec {
    pub addr: String,
    /// Bytes it can serve at once from the start of the blob; `None`: all of it (complete, or
    /// the node followed, which serves bytes as they arrive).
    pub upto: Option<u64>,
    /// Only the pieces of this stripe, `(index, count)`: pieces `i` with `i % count == index`
    /// (the node it reads that stripe from, in the stripe's tree).
    pub stripe: Option<(u32, u32)>,
}

impl SourceSpec {
    /// A source of every piece it holds.
    pub fn any(addr: impl Into<String>, upto: Option<u64>) -> Self {
        Self {
            addr: addr.into(),
            upto,
            stripe: None,
        }
    }

    /// Whether it may be asked for piece `piece` (of a blob of `size` bytes) at all.
    fn has(&self, size: u64, piece: u64) -> bool {
        self.upto.is_none_or(|u| piece_range(size, piece).1 <= u)
            && self
                .stripe
                .is_none_or(|(i, k)| piece % u64::from(k.max(1)) == u64::from(i))
    }
}

#[derive(Clone, Debug)]
struct Source {
    spec: SourceSpec,
    in_flight: usize,
    late: u32,
    out: bool,
    served: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Want { not: Option<usize> },
    Flight { src: usize, attempt: u64 },
    Done,
}

/// One request to make: piece `piece` (bytes `start..end`) from source `source`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub piece: u64,
    pub source: usize,
    pub attempt: u64,
    pub start: u64,
    pub end: u64,
}

#[derive(Debug)]
pub struct Schedule {
    size: u64,
    first: u64,
    state: Vec<State>,
    since: Vec<Option<Instant>>,
    /// The first piece not done.
    prefix: u64,
    sources: Vec<Source>,
    limits: Limits,
    in_flight: usize,
    attempts: u64,
    /// Durations of the pieces done, newest last (at most 64).
    times: Vec<Duration>,
}

impl Schedule {
    /// Fetch the pieces of a blob of `size` bytes from `offset` (a piece boundary) on.
    pub fn new(size: u64, offset: u64, sources: Vec<SourceSpec>, limits: Limits) -> Self {
        let count = piece_count(size);
        let first = (0..count)
            .find(|&i| piece_range(size, i).0 >= offset)
            .unwrap_or(count);
        Self {
            size,
            first,
            state: vec![State::Want { not: None }; (count - first) as usize],
            since: vec![None; (count - first) as usize],
            prefix: first,
            sources: sources
                .into_iter()
                .map(|spec| Source {
                    spec,
                    in_flight: 0,
                    late: 0,
                    out: false,
                    served: 0,
                })
                .collect(),
            limits,
            in_flight: 0,
            attempts: 0,
            times: Vec::new(),
        }
    }

    fn at(&self, piece: u64) -> Option<State> {
        piece
            .checked_sub(self.first)
            .and_then(|k| self.state.get(k as usize).copied())
    }

    fn set(&mut self, piece: u64, s: State) {
        self.state[(piece - self.first) as usize] = s;
    }

    fn can_serve(&self, src: usize, piece: u64) -> bool {
        let s = &self.sources[src];
        !s.out && s.in_flight < self.limits.per_source && s.spec.has(self.size, piece)
    }

    /// The next request to make now, if any.
    pub fn next(&mut self, now: Instant) -> Option<Assignment> {
        if self.in_flight >= self.limits.per_blob {
            return None;
        }
        let end = (self.first + self.state.len() as u64).min(self.prefix + self.limits.window);
        for piece in self.prefix..end {
            let State::Want { not } = self.at(piece)? else {
                continue;
            };
            let usable = |i: &usize| self.can_serve(*i, piece);
            // Not the source that just failed it, unless no other can take it.
            let pick = (0..self.sources.len())
                .filter(usable)
                .filter(|i| Some(*i) != not)
                .min_by_key(|&i| {
                    (
                        self.sources[i].in_flight,
                        std::cmp::Reverse(self.sources[i].served),
                        i,
                    )
                })
                .or_else(|| not.filter(|i| usable(i) && self.others_cannot(piece, *i)));
            let Some(src) = pick else {
                continue;
            };
            self.attempts += 1;
            let attempt = self.attempts;
            self.set(piece, State::Flight { src, attempt });
            self.since[(piece - self.first) as usize] = Some(now);
            self.sources[src].in_flight += 1;
            self.in_flight += 1;
            let (start, end) = piece_range(self.size, piece);
            return Some(Assignment {
                piece,
                source: src,
                attempt,
                start,
                end,
            });
        }
        None
    }

    /// Whether no live source but `src` could ever serve `piece`.
    fn others_cannot(&self, piece: u64, src: usize) -> bool {
        !self
            .sources
            .iter()
            .enumerate()
            .any(|(i, s)| i != src && !s.out && s.spec.has(self.size, piece))
    }

    /// Whether `attempt` is still the one in flight for `piece` (a late answer to a request
    /// taken back is ignored).
    pub fn current(&self, piece: u64, attempt: u64) -> bool {
        matches!(self.at(piece), Some(State::Flight { attempt: a, .. }) if a == attempt)
    }

    fn land(&mut self, piece: u64) -> Option<usize> {
        let Some(State::Flight { src, .. }) = self.at(piece) else {
            return None;
        };
        self.sources[src].in_flight -= 1;
        self.in_flight -= 1;
        Some(src)
    }

    /// Piece `piece` arrived whole and checked.
    pub fn done(&mut self, piece: u64, attempt: u64, now: Instant) {
        if !self.current(piece, attempt) {
            return;
        }
        let src = self.land(piece).unwrap_or_default();
        self.sources[src].served += 1;
        if let Some(t) = self.since[(piece - self.first) as usize] {
            if self.times.len() == 64 {
                self.times.remove(0);
            }
            self.times.push(now.saturating_duration_since(t));
        }
        self.set(piece, State::Done);
        while self.at(self.prefix) == Some(State::Done) {
            self.prefix += 1;
        }
    }

    /// Piece `piece` failed at its source; with `drop_source`, nothing more is asked of it.
    pub fn failed(&mut self, piece: u64, attempt: u64, drop_source: bool) {
        if !self.current(piece, attempt) {
            return;
        }
        let src = self.land(piece).unwrap_or_default();
        if drop_source {
            self.sources[src].out = true;
        }
        self.set(piece, State::Want { not: Some(src) });
    }

    /// The deadline of a piece now.
    pub fn deadline(&self) -> Duration {
        let mut t = self.times.clone();
        t.sort();
        let median = t.get(t.len() / 2).copied().unwrap_or_default();
        (median * self.limits.slow_factor).max(self.limits.min_deadline)
    }

    /// Take back the pieces in flight past their deadline that another source could take:
    /// `(piece, attempt, source)` for each, to cancel. A source late twice is asked for
    /// nothing more.
    pub fn overdue(&mut self, now: Instant) -> Vec<(u64, u64, usize)> {
        let deadline = self.deadline();
        let mut out = Vec::new();
        for k in 0..self.state.len() {
            let piece = self.first + k as u64;
            let State::Flight { src, attempt } = self.state[k] else {
                continue;
            };
            let late = self.since[k].is_some_and(|t| now.saturating_duration_since(t) > deadline);
            if !late || self.others_cannot(piece, src) {
                continue;
            }
            self.land(piece);
            self.set(piece, State::Want { not: Some(src) });
            let s = &mut self.sources[src];
            s.late += 1;
            if s.late >= 2 {
                s.out = true;
            }
            out.push((piece, attempt, src));
        }
        out
    }

    /// The first piece not done (the contiguous prefix ends at its start).
    pub fn prefix(&self) -> u64 {
        self.prefix
    }

    /// Every piece is done.
    pub fn finished(&self) -> bool {
        self.prefix == self.first + self.state.len() as u64
    }

    /// Nothing in flight, and some piece left that no live source can serve: the fetch must
    /// find another source.
    pub fn stuck(&self) -> bool {
        self.in_flight == 0 && self.orphans().next().is_some()
    }

    /// The pieces wanted that no live source can serve.
    fn orphans(&self) -> impl Iterator<Item = u64> + '_ {
        (self.prefix..self.first + self.state.len() as u64).filter(|&p| {
            matches!(self.at(p), Some(State::Want { .. }))
                && !self
                    .sources
                    .iter()
                    .any(|s| !s.out && s.spec.has(self.size, p))
        })
    }

    /// The stripes (of `count`) that have pieces wanted and no live source: their tree lost
    /// this node's parent, and the stripe must be located again.
    pub fn orphaned_stripes(&self, count: u32) -> Vec<u32> {
        let k = u64::from(count.max(1));
        let mut out: Vec<u32> = Vec::new();
        for p in self.orphans() {
            let s = (p % k) as u32;
            if !out.contains(&s) {
                out.push(s);
                if out.len() == count as usize {
                    break;
                }
            }
        }
        out
    }

    /// Read from `spec` too (a stripe's new parent); returns its index.
    pub fn add_source(&mut self, spec: SourceSpec) -> usize {
        self.sources.push(Source {
            spec,
            in_flight: 0,
            late: 0,
            out: false,
            served: 0,
        });
        self.sources.len() - 1
    }

    pub fn addr(&self, src: usize) -> &str {
        &self.sources[src].spec.addr
    }

    /// Pieces each source delivered.
    pub fn served(&self) -> impl Iterator<Item = (&str, u64)> {
        self.sources
            .iter()
            .map(|s| (s.spec.addr.as_str(), s.served))
    }

    /// The sources still asked besides the first (the node followed).
    pub fn others(&self) -> Vec<String> {
        self.sources
            .iter()
            .skip(1)
            .filter(|s| !s.out)
            .map(|s| s.spec.addr.clone())
            .collect()
    }

    /// Whether nothing more is asked of `src`.
    pub fn dropped(&self, src: usize) -> bool {
        self.sources[src].out
    }

    /// Sources still asked.
    pub fn live(&self) -> usize {
        self.sources.iter().filter(|s| !s.out).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pieces::piece_size;

    const SIZE: u64 = 40 << 20; // ten 4 MiB pieces

    fn src(addr: &str, upto: Option<u64>) -> SourceSpec {
        SourceSpec::any(addr, upto)
    }

    fn drain(s: &mut Schedule, now: Instant) -> Vec<Assignment> {
        std::iter::from_fn(|| s.next(now)).collect()
    }

    #[test]
    fn pieces_go_lowest_first_to_the_least_busy_source_within_the_bounds() {
        let now = Instant::now();
        let mut s = Schedule::new(
            SIZE,
            0,
            vec![src("a", None), src("b", None), src("c", None)],
            Limits {
                per_blob: 5,
                ..Limits::default()
            },
        );
        let got = drain(&mut s, now);
        assert_eq!(
            got.iter().map(|a| a.piece).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        assert_eq!(
            got.iter().map(|a| a.source).collect::<Vec<_>>(),
            [0, 1, 2, 0, 1]
        );
        assert_eq!((got[1].start, got[1].end), (4 << 20, 8 << 20));
        // Done out of order: the prefix waits for piece 0.
        s.done(1, got[1].attempt, now);
        assert_eq!(s.prefix(), 0);
        s.done(0, got[0].attempt, now);
        assert_eq!(s.prefix(), 2);
        // Freed slots are used again, for the next pieces.
        let more = drain(&mut s, now);
        assert_eq!(more.iter().map(|a| a.piece).collect::<Vec<_>>(), [5, 6]);
    }

    #[test]
    fn a_partial_holder_is_asked_only_within_what_it_held() {
        let now = Instant::now();
        let p = piece_size(SIZE);
        let mut s = Schedule::new(
            SIZE,
            2 * p,
            vec![src("followed", None), src("partial", Some(4 * p))],
            Limits::default(),
        );
        let got = drain(&mut s, now);
        let partial: Vec<u64> = got
            .iter()
            .filter(|a| a.source == 1)
            .map(|a| a.piece)
            .collect();
        assert!(partial.iter().all(|&i| i < 4), "{partial:?}");
        assert_eq!(partial, [3]);
        assert_eq!(got[0].piece, 2, "resumed at the offset");
        // Piece 5 waits: the followed node has two in flight, the partial one lacks it.
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn a_failed_piece_goes_to_another_source_and_a_broken_one_is_dropped() {
        let now = Instant::now();
        let mut s = Schedule::new(
            SIZE,
            0,
            vec![src("a", None), src("b", None)],
            Limits::default(),
        );
        let got = drain(&mut s, now);
        let a0 = got.iter().find(|a| a.piece == 0).unwrap().clone();
        assert_eq!(a0.source, 0);
        s.failed(0, a0.attempt, true);
        // A late answer of the failed attempt changes nothing.
        s.done(0, a0.attempt, now);
        assert_eq!(s.prefix(), 0);
        let b1 = got.iter().find(|a| a.piece == 1).unwrap().clone();
        s.done(1, b1.attempt, now);
        let again = drain(&mut s, now);
        assert_eq!(again[0].piece, 0);
        assert_eq!(again[0].source, 1, "not the dropped source");
        assert!(again.iter().all(|a| a.source == 1));
        assert_eq!(s.live(), 1);
    }

    #[test]
    fn a_late_piece_is_taken_back_and_a_source_late_twice_is_dropped() {
        let t0 = Instant::now();
        let mut s = Schedule::new(
            SIZE,
            0,
            vec![src("slow", None), src("fast", None)],
            Limits {
                per_source: 1,
                min_deadline: Duration::from_secs(5),
                ..Limits::default()
            },
        );
        let first = drain(&mut s, t0);
        assert_eq!(first.len(), 2);
        // The fast one keeps delivering, a second each.
        let mut t = t0;
        let mut fast = first[1].clone();
        for _ in 0..3 {
            t += Duration::from_secs(1);
            s.done(fast.piece, fast.attempt, t);
            fast = s.next(t).unwrap();
            assert_eq!(fast.source, 1);
        }
        assert!(s.overdue(t).is_empty(), "not late before the deadline");
        t = t0 + Duration::from_secs(6);
        let late = s.overdue(t);
        assert_eq!(late, vec![(0, first[0].attempt, 0)]);
        assert_eq!(s.deadline(), Duration::from_secs(5));
        // Piece 0 is asked again, of the fast source once it is free.
        s.done(fast.piece, fast.attempt, t);
        let next = s.next(t).unwrap();
        assert_eq!((next.piece, next.source), (0, 1));
        // The slow source may take another piece; late again, it is dropped.
        let slow = s.next(t).unwrap();
        assert_eq!(slow.source, 0);
        s.done(next.piece, next.attempt, t + Duration::from_secs(1));
        let n = s.next(t + Duration::from_secs(1)).unwrap();
        // Both late; the fast one, now the only source left, keeps its piece.
        let late = s.overdue(t + Duration::from_secs(20));
        assert_eq!(late, vec![(slow.piece, slow.attempt, 0)]);
        assert_eq!(s.live(), 1);
        assert_eq!(s.addr(n.source), "fast");
    }

    #[test]
    fn the_only_source_of_a_piece_keeps_it_however_slow_and_is_asked_again() {
        let now = Instant::now();
        let mut s = Schedule::new(SIZE, 0, vec![src("a", None)], Limits::default());
        let got = drain(&mut s, now);
        assert!(s.overdue(now + Duration::from_secs(3600)).is_empty());
        s.failed(0, got[0].attempt, false);
        assert_eq!(s.next(now).map(|a| (a.piece, a.source)), Some((0, 0)));
    }

    #[test]
    fn with_every_source_dropped_the_fetch_is_stuck_and_can_finish_otherwise() {
        let now = Instant::now();
        let p = piece_size(SIZE);
        let mut s = Schedule::new(
            SIZE,
            0,
            vec![src("partial", Some(2 * p))],
            Limits::default(),
        );
        let got = drain(&mut s, now);
        assert_eq!(got.len(), 2, "only what it held");
        assert!(!s.stuck());
        for a in &got {
            s.done(a.piece, a.attempt, now);
        }
        assert_eq!(s.prefix(), 2);
        assert!(s.stuck(), "piece 2 on has no source");
        assert!(!s.finished());
        let mut whole = Schedule::new(SIZE, 9 * p, vec![src("a", None)], Limits::default());
        let last = whole.next(now).unwrap();
        assert_eq!((last.piece, last.end), (9, SIZE));
        whole.done(9, last.attempt, now);
        assert!(whole.finished());
    }

    #[test]
    fn a_stripe_source_is_asked_only_for_its_stripe_and_an_orphaned_stripe_is_named() {
        let now = Instant::now();
        let stripe = |addr: &str, i: u32| SourceSpec {
            stripe: Some((i, 2)),
            ..src(addr, None)
        };
        let mut s = Schedule::new(
            SIZE,
            0,
            vec![stripe("even", 0), stripe("odd", 1)],
            Limits::default(),
        );
        let got = drain(&mut s, now);
        assert_eq!(
            got.iter().map(|a| (a.piece, a.source)).collect::<Vec<_>>(),
            [(0, 0), (1, 1), (2, 0), (3, 1)]
        );
        // The only source of its stripe keeps a piece however late.
        assert!(s.overdue(now + Duration::from_secs(3600)).is_empty());
        assert!(s.orphaned_stripes(2).is_empty());
        // The odd stripe's parent breaks: that stripe, and only it, must be located again,
        // while the even one goes on.
        s.failed(1, got[1].attempt, true);
        assert_eq!(s.orphaned_stripes(2), [1]);
        assert!(!s.stuck(), "pieces are still in flight");
        s.done(0, got[0].attempt, now);
        assert_eq!(s.next(now).map(|a| (a.piece, a.source)), Some((4, 0)));
        // Its new parent takes the stripe from where it stands.
        let new = s.add_source(stripe("odd2", 1));
        assert!(s.orphaned_stripes(2).is_empty());
        let more = drain(&mut s, now);
        assert_eq!(
            more.iter().map(|a| (a.piece, a.source)).collect::<Vec<_>>(),
            [(1, new), (5, new)]
        );
    }
}
