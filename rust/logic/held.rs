// SPDX-License-Identifier: GPL-2.0

//! What a run holds at a cancellation point, as the verifier saw it, and
//! where the cancellation finds it: the point's *object table*.
//!
//! The verifier visits each point once per distinct state. At every visit
//! the C glue lists what the state holds: the references (`ids`, the
//! verifier's reference ids) and, for each place that holds one of them (a
//! register of the point's frame, a spilled pointer or a dynptr in a stack
//! slot of any frame of the run), a [`Fact`] with the object's [`Kind`].
//! [`build`] picks one place per reference (the lowest encoding: registers
//! before stack slots) and encodes the table; the glue then marks those
//! places as read, so that the verifier prunes a later path at or before the
//! point only when the same places hold the same kinds of objects. Every
//! visit must produce the same table ([`merge`]); a point reached with
//! different holdings is refused. At a cancellation the glue decodes the
//! point's table ([`decode`]) and releases each entry once, then leaves the
//! RCU read-side sections and re-enables preemption as often as the table
//! says. A reference the table cannot name (only in a register of a calling
//! frame, an iterator other than a numbers iterator, an object kind without
//! a release) makes [`build`] refuse: the program is refused at load.
//!
//! Entry encoding (`u32`): bits 0–3 the kind, bit 4 set for a stack slot,
//! bits 5–7 the frame (0 = the main program's), bits 8–15 the register
//! (registers only), bits 16–31 the slot's offset from the frame pointer as
//! an `i16` (stack only; negative, a multiple of 8).

/// References one point's table can hold.
pub const MAX: usize = 8;

/// Frames of a run (BPF's call depth limit).
pub const MAX_FRAMES: u8 = 8;

/// BPF's stack size of one frame.
pub const STACK: i16 = 512;

/// Kinds of objects a cancellation can release. The values are the C
/// glue's `KFLEX_HELD_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    /// A `struct task_struct` reference (`bpf_task_release`).
    Task = 1,
    /// A `struct cgroup` reference (`bpf_cgroup_release`).
    Cgroup = 2,
    /// A `struct bpf_cpumask` (`bpf_cpumask_release`).
    Cpumask = 3,
    /// A `bpf_obj_new` object (`bpf_obj_drop`); the fact's `aux` is its
    /// type's `struct btf_struct_meta` (or 0).
    Obj = 4,
    /// A socket from `bpf_sk_lookup_*`/`bpf_skc_lookup_tcp`
    /// (`bpf_sk_release`).
    Sock = 5,
    /// A ring buffer reservation (`bpf_ringbuf_discard`).
    Ringbuf = 6,
    /// A ring buffer dynptr (`bpf_ringbuf_discard_dynptr`); its place is the
    /// dynptr's first stack slot.
    RingbufDynptr = 7,
    /// An open-coded iterator other than a numbers iterator (its
    /// `bpf_iter_<type>_destroy`, whose address is the fact's `aux`); its
    /// place is the iterator's first stack slot.
    Iter = 8,
}

/// Number of kinds plus one (counters are indexed by kind).
pub const KINDS: usize = 9;

impl Kind {
    /// The kind of the C glue's value, `None` for "none that can be
    /// released" (0) and unknown values.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Task,
            2 => Self::Cgroup,
            3 => Self::Cpumask,
            4 => Self::Obj,
            5 => Self::Sock,
            6 => Self::Ringbuf,
            7 => Self::RingbufDynptr,
            8 => Self::Iter,
            _ => return None,
        })
    }
}

/// Where a reference is kept at the point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A register (0–9) of the point's frame.
    Reg(u8),
    /// The 8-byte stack slot at `off` from the frame pointer of `frame`
    /// (0 = the main program's frame).
    Stack {
        /// Frame number, as the verifier counts them.
        frame: u8,
        /// Offset from the frame pointer: negative, a multiple of 8.
        off: i16,
    },
}

/// One place where the verifier sees reference `id` at a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fact {
    /// The verifier's reference id.
    pub id: u32,
    /// The object's kind; `None` for a pointer that cannot be released
    /// (a pointer into the object, an object kind without a release).
    pub kind: Option<Kind>,
    /// Where.
    pub place: Place,
    /// Kind-specific data needed to release it (see [`Kind::Obj`]).
    pub aux: u64,
}

/// A point's object table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Table {
    /// Inside a `bpf_rcu_read_lock` section.
    pub rcu: bool,
    /// `bpf_preempt_disable` nesting.
    pub preempt: u8,
    /// Entries used.
    pub n: u8,
    /// Encoded entries, ascending.
    pub ents: [u32; MAX],
    /// Each entry's `aux`.
    pub aux: [u64; MAX],
}

/// Why a point's holdings cannot be released by a cancellation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// More than [`MAX`] references, or a preemption nesting above 255.
    TooMany,
    /// Reference `ids[id]` is only kept as a pointer that cannot be
    /// released (`facts[fact]` names one).
    Unreleasable {
        /// Index into `ids`.
        id: usize,
        /// Index into `facts`.
        fact: usize,
    },
    /// Reference `ids[id]` is in no place the table can name.
    Nowhere {
        /// Index into `ids`.
        id: usize,
    },
    /// Reference `ids[id]` is seen as objects of different kinds.
    Mixed {
        /// Index into `ids`.
        id: usize,
    },
}

/// The encoding of an entry, `None` when the place cannot be encoded (a
/// register above 9, a frame above 7, a stack offset that is not a slot).
pub fn encode(kind: Kind, place: Place) -> Option<u32> {
    let k = kind as u32;
    match place {
        Place::Reg(r) if r <= 9 => Some(k | (r as u32) << 8),
        Place::Stack { frame, off }
            if frame < MAX_FRAMES && (-STACK..0).contains(&off) && off % 8 == 0 =>
        {
            Some(k | 1 << 4 | (frame as u32) << 5 | ((off as u16) as u32) << 16)
        }
        _ => None,
    }
}

/// The kind and place of an encoded entry; `None` for a value [`encode`]
/// cannot produce.
pub fn decode(e: u32) -> Option<(Kind, Place)> {
    let kind = Kind::from_u8((e & 0xf) as u8)?;
    let place = if e & 1 << 4 != 0 {
        Place::Stack { frame: ((e >> 5) & 7) as u8, off: (e >> 16) as u16 as i16 }
    } else {
        if e >> 16 != 0 || e & 0xe0 != 0 {
            return None;
        }
        Place::Reg((e >> 8) as u8)
    };
    (encode(kind, place) == Some(e)).then_some((kind, place))
}

/// The table of a point where the state holds references `ids`, seen at
/// `facts`, with an RCU read-side section open (`rcu`) and preemption
/// disabled `preempt` times. (Host builds; the kernel uses [`build_from`].)
#[cfg(feature = "host-tools")]
pub fn build(facts: &[Fact], ids: &[u32], rcu: bool, preempt: u32) -> Result<Table, Refusal> {
    build_from(facts, |f| *f, ids, rcu, preempt)
}

/// `build` over facts in another representation (the C glue's), each
/// converted by `fact` when it is looked at.
pub fn build_from<T>(
    facts: &[T],
    fact: impl Fn(&T) -> Fact,
    ids: &[u32],
    rcu: bool,
    preempt: u32,
) -> Result<Table, Refusal> {
    let preempt = u8::try_from(preempt).map_err(|_| Refusal::TooMany)?;
    if ids.len() > MAX {
        return Err(Refusal::TooMany);
    }
    // One (entry, aux) per reference, in the order of `ids`. (Counters
    // wrap instead of `enumerate()`: the kernel build checks overflows and
    // the lengths are small.)
    let mut chosen = [(0u32, 0u64); MAX];
    let mut i = 0usize;
    for (&id, slot) in ids.iter().zip(chosen.iter_mut()) {
        let mut best: Option<(u32, Kind, u64)> = None;
        let mut unreleasable = None;
        let mut f = 0usize;
        for raw in facts {
            let at = f;
            f = f.wrapping_add(1);
            let fact = fact(raw);
            if fact.id != id {
                continue;
            }
            let Some((e, kind)) = fact.kind.and_then(|k| encode(k, fact.place).map(|e| (e, k)))
            else {
                unreleasable.get_or_insert(at);
                continue;
            };
            match best {
                Some((_, k, _)) if k != kind => return Err(Refusal::Mixed { id: i }),
                Some((b, _, _)) if b <= e => {}
                _ => best = Some((e, kind, fact.aux)),
            }
        }
        let Some((e, _, aux)) = best else {
            return Err(match unreleasable {
                Some(fact) => Refusal::Unreleasable { id: i, fact },
                None => Refusal::Nowhere { id: i },
            });
        };
        *slot = (e, aux);
        i = i.wrapping_add(1);
    }
    // sorted by encoding: a table is then one value per holding
    let mut t = Table { rcu, preempt, n: ids.len() as u8, ..Table::default() };
    let mut i = 0usize;
    for (&(e, aux), _) in chosen.iter().zip(ids) {
        let mut rank = 0usize;
        for (&(x, _), _) in chosen.iter().zip(ids) {
            if x < e {
                rank = rank.wrapping_add(1);
            }
        }
        match (t.ents.get_mut(rank), t.aux.get_mut(rank)) {
            // two references in one place: the verifier never allows it
            (Some(slot), _) if *slot != 0 => return Err(Refusal::Mixed { id: i }),
            (Some(slot), Some(a)) => {
                *slot = e;
                *a = aux;
            }
            _ => return Err(Refusal::TooMany),
        }
        i = i.wrapping_add(1);
    }
    Ok(t)
}

/// The merge rule: a point visited again must hold exactly what it held at
/// its first visit, in the same places (the table is then valid on every
/// path). `Err(())` means the program must be refused.
#[allow(clippy::result_unit_err)]
pub fn merge(old: &Table, new: &Table) -> Result<(), ()> {
    if old == new {
        Ok(())
    } else {
        Err(())
    }
}

/// The entries of a table, in release order (ascending encoding), decoded.
/// An entry that does not decode (a corrupt table) is skipped. (Host
/// builds: the kernel decodes one entry at a time.)
#[cfg(feature = "host-tools")]
pub fn entries(t: &Table) -> impl Iterator<Item = (Kind, Place, u64)> + '_ {
    let n = (t.n as usize).min(MAX);
    t.ents[..n].iter().zip(&t.aux[..n]).filter_map(|(&e, &aux)| decode(e).map(|(k, p)| (k, p, aux)))
}
