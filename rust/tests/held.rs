// SPDX-License-Identifier: GPL-2.0

//! Tests of the object tables of cancellation points (`logic::held`): the
//! entry encoding (every valid entry round-trips, nothing else decodes), the
//! choice of one place per reference and its independence of the order of
//! the facts, every refusal, the merge rule, and a model that replays random
//! acquire/copy/spill/derive/hide/release/transfer sequences on a simulated
//! run and cancels it at random points: whenever the table is accepted, the
//! cancellation releases every object the run still owns exactly once and
//! nothing else; whenever an owned object cannot be found, the point is
//! refused.

mod common;

use common::Rng;
use kflex_core::logic::held::{self, Fact, Kind, Place, Refusal, Table, MAX};

const KINDS: [Kind; 8] = [
    Kind::Task,
    Kind::Cgroup,
    Kind::Cpumask,
    Kind::Obj,
    Kind::Sock,
    Kind::Ringbuf,
    Kind::RingbufDynptr,
    Kind::Iter,
];

#[test]
fn every_valid_entry_round_trips_and_nothing_else_decodes() {
    let mut valid = 0;
    for kind in KINDS {
        for r in 0..=9 {
            let e = held::encode(kind, Place::Reg(r)).unwrap();
            assert_eq!(held::decode(e), Some((kind, Place::Reg(r))));
            valid += 1;
        }
        assert_eq!(held::encode(kind, Place::Reg(10)), None);
        for frame in 0..held::MAX_FRAMES {
            for slot in 1..=64i16 {
                let place = Place::Stack { frame, off: -8 * slot };
                let e = held::encode(kind, place).unwrap();
                assert_eq!(held::decode(e), Some((kind, place)));
                valid += 1;
            }
            for off in [0, 8, -4, -520, -1] {
                assert_eq!(held::encode(kind, Place::Stack { frame, off }), None);
            }
        }
        assert_eq!(held::encode(kind, Place::Stack { frame: 8, off: -8 }), None);
    }
    assert_eq!(valid, 8 * (10 + 8 * 64));
    // random words: whatever decodes is exactly what encodes to it
    let mut rng = Rng::new(7);
    let mut decoded = 0;
    for _ in 0..200_000 {
        let e = rng.next_u64() as u32 & 0xffff_00ff | (rng.below(16) as u32) << 8;
        if let Some((k, p)) = held::decode(e) {
            assert_eq!(held::encode(k, p), Some(e));
            decoded += 1;
        }
    }
    assert!(decoded > 0);
    assert_eq!(held::decode(0), None);
}

fn fact(id: u32, kind: Option<Kind>, place: Place) -> Fact {
    Fact { id, kind, place, aux: id as u64 * 100 }
}

#[test]
fn one_place_per_reference_registers_first() {
    let facts = [
        fact(3, Some(Kind::Task), Place::Stack { frame: 0, off: -16 }),
        fact(3, Some(Kind::Task), Place::Reg(7)),
        fact(3, Some(Kind::Task), Place::Reg(6)),
        fact(5, Some(Kind::Obj), Place::Stack { frame: 1, off: -8 }),
        fact(5, Some(Kind::Obj), Place::Stack { frame: 0, off: -64 }),
        fact(5, None, Place::Reg(1)), // a pointer into the object
    ];
    let t = held::build(&facts, &[5, 3], true, 2).unwrap();
    assert!(t.rcu);
    assert_eq!(t.preempt, 2);
    let got: Vec<_> = held::entries(&t).collect();
    assert_eq!(
        got,
        [(Kind::Task, Place::Reg(6), 300), (Kind::Obj, Place::Stack { frame: 0, off: -64 }, 500)]
    );
    // the same facts in any order give the same table
    let mut rng = Rng::new(1);
    for _ in 0..1000 {
        let mut f = facts.to_vec();
        for i in (1..f.len()).rev() {
            f.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut ids = [3, 5];
        if rng.chance(1, 2) {
            ids.swap(0, 1);
        }
        assert_eq!(held::build(&f, &ids, true, 2), Ok(t));
    }
}

#[test]
fn refusals() {
    let r = Place::Reg(6);
    // only a pointer into the object
    assert_eq!(
        held::build(&[fact(1, None, r)], &[1], false, 0),
        Err(Refusal::Unreleasable { id: 0, fact: 0 })
    );
    // nowhere (a register of a calling frame, an iterator)
    assert_eq!(
        held::build(&[fact(2, Some(Kind::Task), r)], &[2, 9], false, 0),
        Err(Refusal::Nowhere { id: 1 })
    );
    // two kinds for one reference
    assert_eq!(
        held::build(
            &[fact(1, Some(Kind::Task), r), fact(1, Some(Kind::Sock), Place::Reg(7))],
            &[1],
            false,
            0
        ),
        Err(Refusal::Mixed { id: 0 })
    );
    // too many references, too deep a preemption nesting
    let many: Vec<_> = (0..9).map(|i| fact(i, Some(Kind::Obj), Place::Reg(i as u8))).collect();
    let ids: Vec<u32> = (0..9).collect();
    assert_eq!(held::build(&many, &ids, false, 0), Err(Refusal::TooMany));
    assert!(held::build(&many[..MAX], &ids[..MAX], false, 0).is_ok());
    assert_eq!(held::build(&[], &[], false, 256), Err(Refusal::TooMany));
    // a place that cannot be encoded counts as no place
    assert_eq!(
        held::build(
            &[fact(1, Some(Kind::Obj), Place::Stack { frame: 0, off: -3 })],
            &[1],
            false,
            0
        ),
        Err(Refusal::Unreleasable { id: 0, fact: 0 })
    );
    // nothing held: an empty table
    assert_eq!(held::build(&[], &[], false, 0), Ok(Table::default()));
}

#[test]
fn merge_accepts_only_the_same_holdings() {
    let fact = |id, kind, place| Fact { id, kind, place, aux: 0 };
    let a = held::build(&[fact(1, Some(Kind::Task), Place::Reg(6))], &[1], false, 0).unwrap();
    let b = held::build(&[fact(4, Some(Kind::Task), Place::Reg(6))], &[4], false, 0).unwrap();
    // other reference ids, same kinds in the same places: the same table
    assert_eq!(held::merge(&a, &b), Ok(()));
    let moved = held::build(&[fact(1, Some(Kind::Task), Place::Reg(7))], &[1], false, 0).unwrap();
    let other = held::build(&[fact(1, Some(Kind::Cgroup), Place::Reg(6))], &[1], false, 0).unwrap();
    let rcu = held::build(&[fact(1, Some(Kind::Task), Place::Reg(6))], &[1], true, 0).unwrap();
    let none = held::build(&[], &[], false, 0).unwrap();
    for t in [moved, other, rcu, none] {
        assert_eq!(held::merge(&a, &t), Err(()));
        assert_eq!(held::merge(&t, &a), Err(()));
    }
}

// ---------------------------------------------------------------------------
// The model: a run's registers (of the point's frame) and the stack slots of
// its frames, holding objects, pointers into them, or nothing.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Val {
    Nothing,
    /// Object `obj` (reference id `id`).
    Obj {
        obj: usize,
        id: u32,
    },
    /// A pointer into object `obj` (not releasable).
    Inside {
        id: u32,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Owned,
    Released,
    Transferred,
}

struct Run {
    frames: u8,
    regs: [Val; 10],
    stack: Vec<[Val; 64]>,
    /// References in places the table cannot name (a calling frame's
    /// registers, an iterator): id → object.
    hidden: Vec<(u32, usize)>,
    objs: Vec<(Kind, State, u32)>,
    next_id: u32,
}

impl Run {
    fn places(&self) -> Vec<(Place, Val)> {
        let mut v: Vec<_> = (0..10).map(|r| (Place::Reg(r as u8), self.regs[r])).collect();
        for f in 0..self.frames {
            for s in 0..64 {
                let place = Place::Stack { frame: f, off: -8 * (s as i16 + 1) };
                v.push((place, self.stack[f as usize][s]));
            }
        }
        v
    }

    fn get(&self, p: Place) -> Val {
        match p {
            Place::Reg(r) => self.regs[r as usize],
            Place::Stack { frame, off } => self.stack[frame as usize][(-off / 8 - 1) as usize],
        }
    }

    fn set(&mut self, p: Place, v: Val) {
        match p {
            Place::Reg(r) => self.regs[r as usize] = v,
            Place::Stack { frame, off } => self.stack[frame as usize][(-off / 8 - 1) as usize] = v,
        }
    }

    fn random_place(&self, rng: &mut Rng) -> Place {
        if rng.chance(1, 2) {
            Place::Reg(rng.below(10) as u8)
        } else {
            Place::Stack {
                frame: rng.below(self.frames as u64) as u8,
                off: -8 * (rng.below(8) as i16 + 1),
            }
        }
    }

    /// The verifier's release: the object goes, every copy becomes unusable.
    fn drop_ref(&mut self, id: u32, to: State) {
        for (p, v) in self.places() {
            if matches!(v, Val::Obj { id: i, .. } | Val::Inside { id: i } if i == id) {
                self.set(p, Val::Nothing);
            }
        }
        self.hidden.retain(|&(i, _)| i != id);
        for o in self.objs.iter_mut().filter(|o| o.2 == id) {
            o.1 = to;
        }
    }
}

#[test]
fn model_cancellation_releases_every_owned_object_exactly_once() {
    let mut rng = Rng::new(0x4b46_6c65);
    let (mut cancelled, mut refused, mut released) = (0u64, 0u64, 0u64);
    for _ in 0..6000 {
        let frames = 1 + rng.below(3) as u8;
        let mut run = Run {
            frames,
            regs: [Val::Nothing; 10],
            stack: vec![[Val::Nothing; 64]; frames as usize],
            hidden: Vec::new(),
            objs: Vec::new(),
            next_id: 1,
        };
        for _ in 0..rng.below(60) {
            let p = run.random_place(&mut rng);
            let q = run.random_place(&mut rng);
            match rng.below(10) {
                0 | 1 if run.objs.iter().filter(|o| o.1 == State::Owned).count() < 10 => {
                    let kind = rng.pick(&KINDS);
                    let id = run.next_id;
                    run.next_id += 1;
                    run.objs.push((kind, State::Owned, id));
                    if rng.chance(1, 12) {
                        run.hidden.push((id, run.objs.len() - 1));
                    } else {
                        run.set(p, Val::Obj { obj: run.objs.len() - 1, id });
                    }
                }
                2 | 3 if run.get(q) == Val::Nothing || rng.chance(1, 6) => {
                    let v = run.get(p);
                    run.set(q, v); // copy, spill, fill; may overwrite the last copy
                }
                4 => {
                    if let Val::Obj { id, .. } = run.get(p) {
                        run.set(q, Val::Inside { id });
                    }
                }
                5 if rng.chance(1, 4) => run.set(p, Val::Nothing),
                6 => {
                    if let Val::Obj { id, .. } = run.get(p) {
                        run.drop_ref(id, State::Released);
                    }
                }
                7 => {
                    if let Val::Obj { id, .. } = run.get(p) {
                        run.drop_ref(id, State::Transferred);
                    }
                }
                _ => {}
            }
        }
        // a cancellation point: what the glue gives the builder
        let mut facts = Vec::new();
        for (place, v) in run.places() {
            match v {
                Val::Obj { obj, id } => {
                    facts.push(Fact { id, kind: Some(run.objs[obj].0), place, aux: obj as u64 })
                }
                Val::Inside { id } => facts.push(Fact { id, kind: None, place, aux: 0 }),
                Val::Nothing => {}
            }
        }
        let ids: Vec<u32> = run.objs.iter().filter(|o| o.1 == State::Owned).map(|o| o.2).collect();
        let findable = |id: u32| {
            run.places().iter().any(|(_, v)| matches!(v, Val::Obj { id: i, .. } if *i == id))
        };
        let rcu = rng.chance(1, 4);
        let preempt = rng.below(3) as u32;
        match held::build(&facts, &ids, rcu, preempt) {
            Err(e) => {
                refused += 1;
                match e {
                    Refusal::TooMany => assert!(ids.len() > MAX),
                    Refusal::Nowhere { id } | Refusal::Unreleasable { id, .. } => {
                        assert!(!findable(ids[id]), "{e:?} but reference {} is findable", ids[id])
                    }
                    Refusal::Mixed { .. } => panic!("one kind per object in the model"),
                }
            }
            Ok(t) => {
                cancelled += 1;
                assert!(ids.iter().all(|&id| findable(id)));
                assert_eq!((t.rcu, t.preempt as u32), (rcu, preempt));
                // the cancellation: read each entry's place, release it once
                let mut times = vec![0u32; run.objs.len()];
                for (kind, place, aux) in held::entries(&t) {
                    let Val::Obj { obj, .. } = run.get(place) else {
                        panic!("entry {kind:?} at {place:?} holds no object");
                    };
                    assert_eq!(run.objs[obj].0, kind);
                    assert_eq!(aux, obj as u64);
                    times[obj] += 1;
                }
                for (i, o) in run.objs.iter().enumerate() {
                    let want = u32::from(o.1 == State::Owned);
                    assert_eq!(times[i], want, "object {i} ({o:?}) released {} times", times[i]);
                    released += want as u64;
                }
            }
        }
    }
    // both outcomes are exercised
    assert!(cancelled > 2000 && refused > 500, "cancelled {cancelled} refused {refused}");
    assert!(released > 3000, "released {released}");
}
