//! The set of dirty pages a diff layer holds.

use super::*;

/// Dirty 4 KiB pages of guest RAM, one bit each, numbered as the memory file lays RAM
/// out (regions back to back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyPages {
    pub(super) words: Vec<u64>,
    pub(super) pages: u64,
}

impl DirtyPages {
    /// None dirty, for `size` bytes of RAM.
    pub fn new(size: u64) -> Self {
        let pages = size.div_ceil(PAGE_SIZE);
        Self {
            words: vec![0; usize::try_from(pages.div_ceil(64)).unwrap_or(0)],
            pages,
        }
    }

    /// Marks page `page`.
    pub fn set(&mut self, page: u64) {
        if page < self.pages {
            if let Some(w) = usize::try_from(page / 64)
                .ok()
                .and_then(|i| self.words.get_mut(i))
            {
                *w |= 1 << (page % 64);
            }
        }
    }

    /// Whether page `page` is dirty.
    pub fn is_set(&self, page: u64) -> bool {
        usize::try_from(page / 64)
            .ok()
            .and_then(|i| self.words.get(i))
            .is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    /// Adds a region's bitmap (KVM's dirty log or vm-memory's, bit i = the region's page
    /// i) for a region whose first page is `first`.
    pub fn add(&mut self, first: u64, bits: &[u64]) {
        for (i, w) in (0u64..).zip(bits) {
            let mut w = *w;
            while w != 0 {
                let b = u64::from(w.trailing_zeros());
                self.set(first + i * 64 + b);
                w &= w - 1;
            }
        }
    }

    /// How many pages are dirty.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Runs of consecutive dirty pages: (first page, count).
    pub fn runs(&self) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for p in 0..self.pages {
            if self.is_set(p) {
                match runs.last_mut() {
                    Some((first, n)) if *first + *n == p => *n += 1,
                    _ => runs.push((p, 1)),
                }
            }
        }
        runs
    }

    pub(super) fn to_bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }
}
