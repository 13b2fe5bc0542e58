//! Pieces: the units a blob is checked in as it moves between peers. Every node derives the
//! same piece size from the blob's size, so piece `i` means the same bytes everywhere.

use sha2::{Digest as _, Sha256};

const MIN_PIECE: u64 = 4 << 20;
const MAX_PIECE: u64 = 64 << 20;

/// The piece size of a blob of `size` bytes: about 1,024 pieces, a power of two between 4 MiB
/// and 64 MiB (so a 100 GB blob has ~1,500 hashes, and a hop costs at most one piece of latency).
pub fn piece_size(size: u64) -> u64 {
    (size / 1024)
        .next_power_of_two()
        .clamp(MIN_PIECE, MAX_PIECE)
}

/// How many pieces a blob of `size` bytes has.
pub fn piece_count(size: u64) -> u64 {
    size.div_ceil(piece_size(size))
}

/// The byte range `[start, end)` of piece `i`.
pub fn piece_range(size: u64, i: u64) -> (u64, u64) {
    let p = piece_size(size);
    let start = i * p;
    (start.min(size), (start + p).min(size))
}

/// Hashes a blob's bytes, in order, into piece hashes.
#[derive(Clone)]
pub struct PieceHasher {
    size: u64,
    piece: u64,
    pos: u64,
    h: Sha256,
}

impl PieceHasher {
    /// Start at `pos`, which must be a piece boundary.
    pub fn new(size: u64, pos: u64) -> Self {
        Self {
            size,
            piece: piece_size(size),
            pos,
            h: Sha256::new(),
        }
    }

    /// The index of the first piece finished by the next call to [`Self::update`].
    pub fn current(&self) -> u64 {
        self.pos / self.piece
    }

    /// Feed bytes; returns the `(index, hash)` of every piece they finish.
    pub fn update(&mut self, mut data: &[u8]) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let (_, end) = piece_range(self.size, self.pos / self.piece);
            let n = ((end - self.pos) as usize).min(data.len());
            self.h.update(&data[..n]);
            self.pos += n as u64;
            data = &data[n..];
            if self.pos == end {
                let hash = hex::encode(std::mem::take(&mut self.h).finalize());
                out.push(((end - 1) / self.piece, hash));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    #[test]
    fn sizes_stay_between_4_and_64_mib_and_ranges_cover_the_blob() {
        assert_eq!(piece_size(1), 4 << 20);
        assert_eq!(piece_size(300 << 20), 4 << 20);
        assert_eq!(piece_size(10 << 30), 16 << 20);
        assert_eq!(piece_size(200 << 30), 64 << 20);
        let size = (9 << 20) + 5;
        assert_eq!(piece_count(size), 3);
        assert_eq!(piece_range(size, 2), (8 << 20, size));
        assert_eq!(piece_count(0), 0);
    }

    #[test]
    fn the_hasher_finishes_each_piece_once_whatever_the_chunking() {
        let size = (9 << 20) + 5;
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let whole: Vec<String> = (0..3)
            .map(|i| {
                let (s, e) = piece_range(size, i);
                hash(&data[s as usize..e as usize])
            })
            .collect();
        let mut h = PieceHasher::new(size, 0);
        let mut got = Vec::new();
        for chunk in data.chunks(777_777) {
            got.extend(h.update(chunk));
        }
        assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(got.into_iter().map(|(_, h)| h).collect::<Vec<_>>(), whole);
        // Resumed at a boundary.
        let mut h = PieceHasher::new(size, 4 << 20);
        let got = h.update(&data[4 << 20..]);
        assert_eq!(got[0], (1, whole[1].clone()));
    }
}
