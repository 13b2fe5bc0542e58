//! Disk space: the cache's capacity, what its blobs use, and reservations for downloads in flight.
//!
//! A download reserves its whole size before its first byte is written (the size is known from
//! the upstream's answer or the hub's file list), so concurrent downloads cannot overshoot the
//! capacity together, and one that cannot fit fails at once instead of halfway through a full
//! disk. A reservation is also checked against the filesystem's free space (less a headroom for
//! the index), because other tenants of the disk may have taken what the capacity promised.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Free space kept on the filesystem beyond every reservation, for the index's writes.
pub const FS_HEADROOM: u64 = 32 << 20;

/// `--capacity`: bytes, or a share of the filesystem holding the data directory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Capacity {
    Bytes(u64),
    Percent(f64),
}

impl std::str::FromStr for Capacity {
    type Err = String;

    /// `500GiB`, `1.5TB`, `1048576`, `80%`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("{s:?}: not a percentage"))?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(format!("{s:?}: a percentage must be in (0, 100]"));
            }
            return Ok(Capacity::Percent(p));
        }
        parse_size(s).map(Capacity::Bytes)
    }
}

/// A size in bytes with an optional unit: `B`, `K`/`KB` (1000), `KiB` (1024), up to `T`/`TiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: not a size (e.g. 500GiB, 80%)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        u => return Err(format!("{s:?}: unknown unit {u:?}")),
    };
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("{s:?}: out of range"));
    }
    Ok(bytes as u64)
}

/// Capacity and watermarks, as configured.
#[derive(Clone, Debug, PartialEq)]
pub struct SpaceConfig {
    pub capacity: Capacity,
    /// Background eviction starts above this share of the capacity...
    pub high_watermark: f64,
    /// ...and frees down to this share.
    pub low_watermark: f64,
}

impl Default for SpaceConfig {
    fn default() -> Self {
        Self {
            capacity: Capacity::Percent(90.0),
            high_watermark: 0.85,
            low_watermark: 0.70,
        }
    }
}

/// Total and available bytes of the filesystem holding `path`.
pub fn fs_space(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
    let v = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    Ok((
        v.f_blocks.saturating_mul(v.f_frsize),
        v.f_bavail.saturating_mul(v.f_frsize),
    ))
}

/// Why a reservation was refused: `needed` bytes more than the cache can make room for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shortfall {
    pub needed: u64,
    /// Bytes that must be freed for the reservation to fit.
    pub to_free: u64,
    /// Set when the filesystem, not the capacity, is what is short: its available bytes.
    pub fs_available: Option<u64>,
}

/// The space accounting of one store.
pub struct Space {
    pub(super) dir: PathBuf,
    capacity: u64,
    high: u64,
    low: u64,
    /// Bytes of verified blobs in the store.
    used: AtomicU64,
    /// Bytes promised to downloads and uploads in flight.
    reserved: AtomicU64,
    /// The part of `reserved` not yet written to the filesystem (what its free space must hold).
    unwritten: AtomicU64,
}

impl Space {
    /// Account for `n` bytes already on disk (an upload session found at start-up): they count
    /// against the capacity from now on, whatever it says.
    pub fn hold_existing(self: &Arc<Self>, n: u64) -> Reservation {
        self.reserved.fetch_add(n, Ordering::AcqRel);
        Reservation {
            space: self.clone(),
            n,
            written: n,
        }
    }

    pub fn new(dir: PathBuf, cfg: &SpaceConfig) -> std::io::Result<Self> {
        let capacity = match cfg.capacity {
            Capacity::Bytes(b) => b,
            Capacity::Percent(p) => (fs_space(&dir)?.0 as f64 * p / 100.0) as u64,
        };
        let share = |w: f64| (capacity as f64 * w.clamp(0.0, 1.0)) as u64;
        Ok(Self {
            dir,
            capacity,
            high: share(cfg.high_watermark),
            low: share(cfg.low_watermark.min(cfg.high_watermark)),
            used: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
            unwritten: AtomicU64::new(0),
        })
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    pub fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Acquire)
    }

    pub fn high_watermark(&self) -> u64 {
        self.high
    }

    pub fn low_watermark(&self) -> u64 {
        self.low
    }

    pub(super) fn add_used(&self, n: u64) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    pub(super) fn sub_used(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }

    pub(super) fn set_used(&self, n: u64) {
        self.used.store(n, Ordering::Release);
    }

    /// Bytes above the high watermark's trigger that background eviction should free (down to
    /// the low watermark), or 0.
    pub fn over_high(&self) -> u64 {
        let total = self.used() + self.reserved();
        if total > self.high {
            total - self.low
        } else {
            0
        }
    }

    /// Bytes to free to come down to the low watermark (what `manta gc` does), or 0.
    pub fn over_low(&self) -> u64 {
        (self.used() + self.reserved()).saturating_sub(self.low)
    }

    /// Reserve `n` bytes if they fit both the capacity and the filesystem.
    pub(super) fn try_reserve(self: &Arc<Self>, n: u64) -> Result<Reservation, Shortfall> {
        let mut cur = self.reserved.load(Ordering::Acquire);
        loop {
            let total = self.used() + cur + n;
            if total > self.capacity {
                return Err(Shortfall {
                    needed: n,
                    to_free: total - self.capacity,
                    fs_available: None,
                });
            }
            match self
                .reserved
                .compare_exchange(cur, cur + n, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        self.unwritten.fetch_add(n, Ordering::AcqRel);
        let r = Reservation {
            space: self.clone(),
            n,
            written: 0,
        };
        // The filesystem must hold what every reservation has yet to write, plus the index's
        // headroom (what is written already is no longer in its free space).
        if let Ok((_, avail)) = fs_space(&self.dir) {
            let want = self.unwritten.load(Ordering::Acquire) + FS_HEADROOM;
            if avail < want {
                return Err(Shortfall {
                    needed: n,
                    to_free: want - avail,
                    fs_available: Some(avail),
                });
            }
        }
        Ok(r)
    }
}

/// The space figures as the admin API reports them (`GET /manta/v1/cache`).
pub use manta_api::SpaceView;

/// Bytes promised to one download or upload; given back on drop.
pub struct Reservation {
    space: Arc<Space>,
    n: u64,
    written: u64,
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.n
    }

    /// Reserved bytes not yet written.
    pub fn unwritten(&self) -> u64 {
        self.n - self.written
    }

    /// Take over another reservation's bytes (one reservation for a whole upload session).
    pub fn absorb(&mut self, mut other: Reservation) {
        self.n += other.n;
        self.written += other.written;
        // `other` gives nothing back when dropped: its bytes are ours now.
        other.n = 0;
        other.written = 0;
    }

    /// Give back what was reserved but not written.
    pub fn shrink_to_written(&mut self) {
        let spare = self.n - self.written;
        self.space.reserved.fetch_sub(spare, Ordering::AcqRel);
        self.space.unwritten.fetch_sub(spare, Ordering::AcqRel);
        self.n = self.written;
    }

    /// The file was cut back to `len` bytes (bytes a peer sent that failed their check): they
    /// count as unwritten again.
    pub fn shrink_written_to(&mut self, len: u64) {
        let back = self.written.saturating_sub(len);
        self.written -= back;
        self.space.unwritten.fetch_add(back, Ordering::AcqRel);
    }

    /// `n` more of the reserved bytes reached the filesystem.
    pub fn written(&mut self, n: u64) {
        let n = n.min(self.n - self.written);
        self.written += n;
        self.space.unwritten.fetch_sub(n, Ordering::AcqRel);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.space.reserved.fetch_sub(self.n, Ordering::AcqRel);
        self.space
            .unwritten
            .fetch_sub(self.n - self.written, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation").field("n", &self.n).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities_parse() {
        assert_eq!("500GiB".parse(), Ok(Capacity::Bytes(500 << 30)));
        assert_eq!("1.5TB".parse(), Ok(Capacity::Bytes(1_500_000_000_000)));
        assert_eq!("1048576".parse(), Ok(Capacity::Bytes(1 << 20)));
        assert_eq!("64 MiB".parse(), Ok(Capacity::Bytes(64 << 20)));
        assert_eq!("80%".parse(), Ok(Capacity::Percent(80.0)));
        for bad in ["", "0%", "101%", "-5", "5XB", "GiB", "0", "1e400"] {
            assert!(bad.parse::<Capacity>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reservations_never_overshoot_and_are_returned() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpaceConfig {
            capacity: Capacity::Bytes(1000),
            ..Default::default()
        };
        let s = Arc::new(Space::new(dir.path().to_path_buf(), &cfg).unwrap());
        s.add_used(600);
        let a = s.try_reserve(300).unwrap();
        let e = s.try_reserve(200).unwrap_err();
        assert_eq!(e.to_free, 100);
        drop(a);
        assert_eq!(s.reserved(), 0);
        let mut c = s.try_reserve(100).unwrap();
        c.written(60);
        c.written(60);
        assert_eq!(s.unwritten.load(Ordering::Acquire), 0);
        drop(c);
        assert_eq!((s.reserved(), s.unwritten.load(Ordering::Acquire)), (0, 0));
        let _b = s.try_reserve(400).unwrap();
        assert_eq!(s.over_high(), 1000 - 700);
    }

    #[test]
    fn a_session_reservation_absorbs_its_chunks_and_gives_back_the_slack() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpaceConfig {
            capacity: Capacity::Bytes(1000),
            ..Default::default()
        };
        let s = Arc::new(Space::new(dir.path().to_path_buf(), &cfg).unwrap());
        let mut session = s.hold_existing(100);
        assert_eq!(
            (s.reserved(), s.unwritten.load(Ordering::Acquire)),
            (100, 0)
        );
        let mut chunk = s.try_reserve(300).unwrap();
        chunk.written(120);
        session.absorb(chunk);
        assert_eq!((session.bytes(), session.unwritten()), (400, 180));
        session.shrink_to_written();
        assert_eq!(
            (s.reserved(), s.unwritten.load(Ordering::Acquire)),
            (220, 0)
        );
        drop(session);
        assert_eq!((s.reserved(), s.unwritten.load(Ordering::Acquire)), (0, 0));
    }
}
