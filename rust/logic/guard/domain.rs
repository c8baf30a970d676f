// SPDX-License-Identifier: GPL-2.0

//! The abstract domain of the guard pass: a value per register and per
//! 8-byte stack slot ([`Val`]), the state of one program point
//! ([`AbsState`]), their join (interval hull) and widening (to `Unknown`).

use super::{STACK_SIZE, WINDOW_HI, WINDOW_LO};

/// Tracked registers: r0..r9 (r10 and AX always read as unknown).
pub(super) const NREGS: usize = 10;
/// 8-byte stack slots.
pub(super) const SLOTS: usize = STACK_SIZE / 8;

/// Abstract value of a register or stack slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Val {
    Unknown,
    /// Known 64-bit value, split to keep the type 4-byte aligned.
    Const {
        lo: u32,
        hi: u32,
    },
    /// `g + c`, `g` in `[0, size)`, `c` in `[lo, hi]`.
    Guarded {
        lo: i32,
        hi: i32,
    },
}

impl Val {
    pub(super) const GUARD: Val = Val::Guarded { lo: 0, hi: 0 };

    pub(super) const fn konst(v: i64) -> Val {
        Val::Const { lo: v as u32, hi: ((v as u64) >> 32) as u32 }
    }

    pub(super) const fn as_const(self) -> Option<i64> {
        match self {
            Val::Const { lo, hi } => Some((((hi as u64) << 32) | lo as u64) as i64),
            _ => None,
        }
    }

    fn guarded(lo: i64, hi: i64) -> Val {
        match (i32::try_from(lo), i32::try_from(hi)) {
            (Ok(lo), Ok(hi)) if lo <= hi => Val::Guarded { lo, hi },
            _ => Val::Unknown,
        }
    }

    /// The value plus `k` (64-bit wrapping for scalars).
    pub(super) fn shift(self, k: i64) -> Val {
        match self {
            Val::Guarded { lo, hi } => {
                match (i64::from(lo).checked_add(k), i64::from(hi).checked_add(k)) {
                    (Some(lo), Some(hi)) => Val::guarded(lo, hi),
                    _ => Val::Unknown,
                }
            }
            Val::Const { .. } => match self.as_const() {
                Some(v) => Val::konst(v.wrapping_add(k)),
                None => Val::Unknown,
            },
            Val::Unknown => Val::Unknown,
        }
    }

    fn join(self, o: Val) -> Val {
        match (self, o) {
            (a, b) if a == b => a,
            (Val::Guarded { lo: l1, hi: h1 }, Val::Guarded { lo: l2, hi: h2 }) => {
                Val::Guarded { lo: l1.min(l2), hi: h1.max(h2) }
            }
            _ => Val::Unknown,
        }
    }

    /// Whether an access at this value plus `off` may skip its guard.
    pub(super) fn elidable(self, off: i16) -> bool {
        match self {
            Val::Guarded { lo, hi } => {
                let off = i64::from(off);
                i64::from(lo).saturating_add(off) >= WINDOW_LO
                    && i64::from(hi).saturating_add(off) < WINDOW_HI
            }
            _ => false,
        }
    }
}

/// Abstract state at one program point (reached).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct AbsState {
    regs: [Val; NREGS],
    pub(super) stack: [Val; SLOTS],
}

impl AbsState {
    pub(super) const UNKNOWN: AbsState =
        AbsState { regs: [Val::Unknown; NREGS], stack: [Val::Unknown; SLOTS] };

    pub(super) fn get(&self, r: u8) -> Val {
        self.regs.get(usize::from(r)).copied().unwrap_or(Val::Unknown)
    }

    /// Writes a register; r10 and AX are not tracked and stay unknown.
    pub(super) fn set(&mut self, r: u8, v: Val) {
        if let Some(slot) = self.regs.get_mut(usize::from(r)) {
            *slot = v;
        }
    }

    pub(super) fn clobber_caller_saved(&mut self) {
        for r in 0..=5 {
            self.set(r, Val::Unknown);
        }
    }

    pub(super) fn clobber_stack(&mut self) {
        self.stack = [Val::Unknown; SLOTS];
    }

    /// Joins `o` into `self`, widening changed components to unknown if
    /// `widen`. Returns whether `self` changed.
    pub(super) fn join_from(&mut self, o: &AbsState, widen: bool) -> bool {
        let mut changed = false;
        let pairs = self
            .regs
            .iter_mut()
            .zip(o.regs.iter())
            .chain(self.stack.iter_mut().zip(o.stack.iter()));
        for (a, b) in pairs {
            let j = a.join(*b);
            if j != *a {
                changed = true;
                *a = if widen { Val::Unknown } else { j };
            }
        }
        changed
    }
}
