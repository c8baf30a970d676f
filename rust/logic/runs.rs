// SPDX-License-Identifier: GPL-2.0

//! Free page runs of the page pool: as many as the heap has room for,
//! tracked with boundary tags in the pages' descriptors (outside the heap)
//! and found by size through segregated lists.
//!
//! A run `[start, start + len)` keeps in its first page's descriptor its
//! length and its links in the list of its size bin (bin `b` holds runs of
//! `2^b` to `2^(b+1) - 1` pages), and in its last page's descriptor its
//! start. Freed pages merge with the runs right before and right after them
//! in O(1): the page before them, if it is in a run, is that run's last
//! page, whose tag names the run's start. So runs are maximal: no two
//! touch. Taking `n` pages looks at up to [`SCAN`] runs of `n`'s own bin,
//! then takes the first run of a higher bin (every one is long enough).
//!
//! The tags are the kernel's own memory, but every run read is checked: its
//! first and last pages must be in a run (the pages' kinds) and agree on
//! each other. A list whose run does not check out is dropped (its pages
//! leak, counted in [`Runs::dropped`]); a page is never handed out twice.

/// Size bins; page indices fit 32 bits.
pub const NBINS: usize = 32;
/// Runs of the request's own bin looked at before a higher bin's.
pub const SCAN: usize = 32;

/// Boundary tags of a run, one word each in a page's descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// First page: the run's length in pages (0: not a run's first page).
    Len,
    /// First page: the next run of the bin, first page + 1 (0: none).
    Next,
    /// First page: the previous run of the bin, first page + 1 (0: none).
    Prev,
    /// Last page: the run's first page + 1 (0: not a run's last page).
    Start,
}

/// Where the runs' tags live.
pub trait RunStore {
    /// Whether `page` is a page of a free run (its kind says so); `false`
    /// for pages outside the heap.
    fn in_run(&self, page: u64) -> bool;
    /// Tag `t` of `page` (0 for pages outside the heap).
    fn tag(&self, page: u64, t: Tag) -> u64;
    /// Sets tag `t` of `page` (ignored outside the heap).
    fn set_tag(&self, page: u64, t: Tag, v: u64);
}

/// The free runs: one list per size bin.
pub struct Runs {
    heads: [u64; NBINS],
    count: u64,
    dropped: u64,
}

impl Default for Runs {
    fn default() -> Self {
        Self::new()
    }
}

/// Bin of a run of `len` (>= 1) pages.
pub fn bin(len: u64) -> usize {
    let b = 63u32.saturating_sub(len.max(1).leading_zeros()) as usize;
    b.min(NBINS.wrapping_sub(1))
}

impl Runs {
    /// No runs.
    pub const fn new() -> Self {
        Runs { heads: [0; NBINS], count: 0, dropped: 0 }
    }

    /// Runs tracked.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Lists dropped because a run on them did not check out.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// First page + 1 of bin `b`'s first run (0: empty); for walks.
    pub fn head(&self, b: usize) -> u64 {
        self.heads.get(b).copied().unwrap_or(0)
    }

    fn set_head(&mut self, b: usize, v: u64) {
        if let Some(h) = self.heads.get_mut(b) {
            *h = v;
        }
    }

    /// The length of the run whose first page is `start`, if its tags and
    /// its pages' kinds agree.
    pub fn run_at(s: &impl RunStore, start: u64) -> Option<u64> {
        let len = s.tag(start, Tag::Len);
        let last = start.checked_add(len.checked_sub(1)?)?;
        let ok =
            s.in_run(start) && s.in_run(last) && s.tag(last, Tag::Start) == start.wrapping_add(1);
        ok.then_some(len)
    }

    /// The run whose last page is `last`: `(start, len)`.
    fn run_ending_at(s: &impl RunStore, last: u64) -> Option<(u64, u64)> {
        let start = s.tag(last, Tag::Start).checked_sub(1)?;
        let len = Self::run_at(s, start)?;
        // `run_at` checked that `start + len - 1` does not wrap.
        (start.wrapping_add(len).wrapping_sub(1) == last).then_some((start, len))
    }

    /// Lists run `(start, len)`; `len >= 1`, `start + len` within the heap.
    fn push(&mut self, s: &impl RunStore, start: u64, len: u64) {
        let b = bin(len);
        let old = self.head(b);
        s.set_tag(start, Tag::Len, len);
        s.set_tag(start, Tag::Next, old);
        s.set_tag(start, Tag::Prev, 0);
        s.set_tag(start.wrapping_add(len).wrapping_sub(1), Tag::Start, start.wrapping_add(1));
        if let Some(o) = old.checked_sub(1) {
            s.set_tag(o, Tag::Prev, start.wrapping_add(1));
        }
        self.set_head(b, start.wrapping_add(1));
        self.count = self.count.wrapping_add(1);
    }

    /// Unlists run `(start, len)`, which checked out (`run_at`).
    fn unlink(&mut self, s: &impl RunStore, start: u64, len: u64) {
        let (next, prev) = (s.tag(start, Tag::Next), s.tag(start, Tag::Prev));
        match prev.checked_sub(1) {
            None => self.set_head(bin(len), next),
            Some(p) => s.set_tag(p, Tag::Next, next),
        }
        if let Some(n) = next.checked_sub(1) {
            s.set_tag(n, Tag::Prev, prev);
        }
        s.set_tag(start, Tag::Len, 0);
        s.set_tag(start.wrapping_add(len).wrapping_sub(1), Tag::Start, 0);
        self.count = self.count.saturating_sub(1);
    }

    /// Adds the free pages `[start, start + len)` (inside the heap), which
    /// the caller has already marked as in a run, merged with the runs
    /// before and after them. Returns the run they are now part of.
    pub fn insert(&mut self, s: &impl RunStore, start: u64, len: u64) -> (u64, u64) {
        let (mut start, mut len) = (start, len.max(1));
        if let Some(before) = start.checked_sub(1).filter(|&p| s.in_run(p)) {
            if let Some((ps, pl)) = Self::run_ending_at(s, before) {
                self.unlink(s, ps, pl);
                start = ps;
                len = len.saturating_add(pl);
            }
        }
        let after = start.saturating_add(len);
        if s.in_run(after) {
            if let Some(al) = Self::run_at(s, after) {
                self.unlink(s, after, al);
                len = len.saturating_add(al);
            }
        }
        self.push(s, start, len);
        (start, len)
    }

    /// Takes the first `n` pages of run `(start, len)`, `len >= n`; the
    /// rest stays a run.
    fn split(&mut self, s: &impl RunStore, start: u64, len: u64, n: u64) -> u64 {
        self.unlink(s, start, len);
        if len > n {
            self.push(s, start.wrapping_add(n), len.wrapping_sub(n));
        }
        start
    }

    /// A list whose run did not check out: dropped.
    fn drop_bin(&mut self, b: usize) -> Option<u64> {
        self.set_head(b, 0);
        self.dropped = self.dropped.wrapping_add(1);
        None
    }

    /// Takes `n` contiguous pages: the first run long enough among the
    /// first [`SCAN`] of `n`'s bin, else the first run of a higher bin.
    /// Returns the first page; the caller marks the pages as taken.
    pub fn take(&mut self, s: &impl RunStore, n: u64) -> Option<u64> {
        if n == 0 {
            return None;
        }
        let b = bin(n);
        let mut at = self.head(b);
        for _ in 0..SCAN {
            let Some(start) = at.checked_sub(1) else { break };
            let Some(len) = Self::run_at(s, start).filter(|&l| bin(l) == b) else {
                return self.drop_bin(b);
            };
            if len >= n {
                return Some(self.split(s, start, len, n));
            }
            at = s.tag(start, Tag::Next);
        }
        for hb in b.wrapping_add(1)..NBINS {
            if let Some(start) = self.head(hb).checked_sub(1) {
                return match Self::run_at(s, start).filter(|&l| bin(l) == hb && l >= n) {
                    Some(len) => Some(self.split(s, start, len, n)),
                    None => self.drop_bin(hb),
                };
            }
        }
        None
    }

    /// Takes one page to give back to the system: the last page of the
    /// first run of the lowest bin that has one (short runs go first, long
    /// ones stay for large allocations).
    pub fn take_last(&mut self, s: &impl RunStore) -> Option<u64> {
        let b = self.heads.iter().position(|&h| h != 0)?;
        let start = self.head(b).wrapping_sub(1);
        let Some(len) = Self::run_at(s, start).filter(|&l| bin(l) == b) else {
            return self.drop_bin(b);
        };
        self.unlink(s, start, len);
        if len > 1 {
            self.push(s, start, len.wrapping_sub(1));
        }
        // `run_at` checked that this does not wrap.
        Some(start.wrapping_add(len).wrapping_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A heap of `n` pages: which are in runs, and their tags.
    struct Model {
        in_run: RefCell<Vec<bool>>,
        tags: RefCell<Vec<[u64; 4]>>,
    }

    impl Model {
        fn new(n: usize) -> Self {
            Model { in_run: RefCell::new(vec![false; n]), tags: RefCell::new(vec![[0; 4]; n]) }
        }
        fn mark(&self, start: u64, len: u64, v: bool) {
            for p in start..start + len {
                let mut r = self.in_run.borrow_mut();
                assert_ne!(r[p as usize], v, "page {p} marked twice");
                r[p as usize] = v;
            }
        }
    }

    impl RunStore for Model {
        fn in_run(&self, page: u64) -> bool {
            self.in_run.borrow().get(page as usize).copied().unwrap_or(false)
        }
        fn tag(&self, page: u64, t: Tag) -> u64 {
            self.tags.borrow().get(page as usize).map_or(0, |w| w[t as usize])
        }
        fn set_tag(&self, page: u64, t: Tag, v: u64) {
            if let Some(w) = self.tags.borrow_mut().get_mut(page as usize) {
                w[t as usize] = v;
            }
        }
    }

    /// Every list's runs: disjoint, maximal, in the right bin, doubly
    /// linked, and together exactly the pages marked in a run.
    fn check(runs: &Runs, m: &Model) -> Vec<(u64, u64)> {
        let mut all = Vec::new();
        for b in 0..NBINS {
            let (mut at, mut prev) = (runs.head(b), 0);
            while let Some(start) = at.checked_sub(1) {
                let len = Runs::run_at(m, start).expect("a listed run checks out");
                assert_eq!(bin(len), b);
                assert_eq!(m.tag(start, Tag::Prev), prev);
                all.push((start, len));
                prev = at;
                at = m.tag(start, Tag::Next);
            }
        }
        assert_eq!(all.len() as u64, runs.count());
        all.sort();
        for w in all.windows(2) {
            assert!(w[0].0 + w[0].1 < w[1].0, "runs {:?} and {:?} touch or overlap", w[0], w[1]);
        }
        let mut covered = vec![false; m.in_run.borrow().len()];
        for &(s, l) in &all {
            for p in s..s + l {
                covered[p as usize] = true;
            }
        }
        assert_eq!(covered, *m.in_run.borrow(), "runs and free pages differ");
        all
    }

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) % n.max(1)
        }
    }

    #[test]
    fn bins() {
        assert_eq!(bin(1), 0);
        assert_eq!(bin(2), 1);
        assert_eq!(bin(3), 1);
        assert_eq!(bin(4096), 12);
        assert_eq!(bin(u64::MAX), NBINS - 1);
    }

    #[test]
    fn neighbours_merge() {
        let m = Model::new(64);
        let mut r = Runs::new();
        for (s, l) in [(10, 4), (20, 5), (14, 6)] {
            m.mark(s, l, true);
            r.insert(&m, s, l);
        }
        assert_eq!(check(&r, &m), vec![(10, 15)]);
        // a 1-page run at either end merges too
        m.mark(25, 1, true);
        r.insert(&m, 25, 1);
        m.mark(9, 1, true);
        assert_eq!(r.insert(&m, 9, 1), (9, 17));
        assert_eq!(check(&r, &m), vec![(9, 17)]);
    }

    #[test]
    fn more_runs_than_the_old_limit() {
        // 200 separate runs (the pool used to remember 32)
        let m = Model::new(1000);
        let mut r = Runs::new();
        for i in 0..200 {
            m.mark(i * 5, 3, true);
            r.insert(&m, i * 5, 3);
        }
        assert_eq!(check(&r, &m).len(), 200);
        for _ in 0..200 {
            let s = r.take(&m, 3).expect("a 3-page run");
            m.mark(s, 3, false);
        }
        assert_eq!(r.take(&m, 1), None);
        check(&r, &m);
    }

    #[test]
    fn takes_split_and_higher_bins_serve() {
        let m = Model::new(256);
        let mut r = Runs::new();
        m.mark(0, 100, true);
        r.insert(&m, 0, 100);
        m.mark(150, 6, true);
        r.insert(&m, 150, 6);
        // 5 pages: bin 2 has the 6-page run
        assert_eq!(r.take(&m, 5), Some(150));
        m.mark(150, 5, false);
        // 40 pages: only the 100-page run (bin 6) is long enough
        assert_eq!(r.take(&m, 40), Some(0));
        m.mark(0, 40, false);
        assert_eq!(check(&r, &m), vec![(40, 60), (155, 1)]);
        assert_eq!(r.take(&m, 61), None);
        // giving back starts with the shortest run
        assert_eq!(r.take_last(&m), Some(155));
        m.mark(155, 1, false);
        assert_eq!(r.take_last(&m), Some(99));
        m.mark(99, 1, false);
        assert_eq!(check(&r, &m), vec![(40, 59)]);
    }

    #[test]
    fn a_run_that_does_not_check_out_is_dropped() {
        let m = Model::new(64);
        let mut r = Runs::new();
        m.mark(8, 8, true);
        r.insert(&m, 8, 8);
        // its last page's tag is lost: the list is dropped, nothing handed out
        m.set_tag(15, Tag::Start, 0);
        assert_eq!(r.take(&m, 2), None);
        assert_eq!(r.dropped(), 1);
        assert_eq!(r.take(&m, 2), None);
    }

    /// Random frees (of ranges taken before, or fresh ones), takes and
    /// gives-back over a 4096-page heap: the lists always check out, no page
    /// is handed out twice, and a take finds pages whenever a run of a
    /// higher bin exists.
    #[test]
    fn random_sequences() {
        const PAGES: u64 = 4096;
        let mut rng = Rng(0x5eed);
        for round in 0..200 {
            let m = Model::new(PAGES as usize);
            let mut r = Runs::new();
            // pages not free: held by someone (start, len)
            let mut held: Vec<(u64, u64)> = Vec::new();
            let mut p = 0;
            while p < PAGES {
                let l = (1 + rng.below(40)).min(PAGES - p);
                held.push((p, l));
                p += l;
            }
            for step in 0..400 {
                match rng.below(4) {
                    0 | 1 if !held.is_empty() => {
                        let (s, l) = held.swap_remove(rng.below(held.len() as u64) as usize);
                        m.mark(s, l, true);
                        r.insert(&m, s, l);
                    }
                    2 => {
                        let big = rng.below(4) == 0;
                        let n = 1 + rng.below(if big { 300 } else { 8 });
                        let longest = check(&r, &m).iter().map(|x| x.1).max().unwrap_or(0);
                        match r.take(&m, n) {
                            Some(s) => {
                                // the pages were free: mark() asserts it
                                m.mark(s, n, false);
                                held.push((s, n));
                            }
                            None => assert!(
                                longest < 1 << (bin(n) + 1),
                                "round {round} step {step}: {n} pages refused, a {longest}-page \
                                 run exists"
                            ),
                        }
                    }
                    _ => {
                        if let Some(s) = r.take_last(&m) {
                            m.mark(s, 1, false);
                            held.push((s, 1));
                        }
                    }
                }
                check(&r, &m);
            }
            assert_eq!(r.dropped(), 0);
        }
    }
}
