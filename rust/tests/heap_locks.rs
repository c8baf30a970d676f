// SPDX-License-Identifier: GPL-2.0

//! Tests of the heap-lock rules (`logic::locks`): the table rules one by one,
//! the cycle search on fixed wait-for graphs, and a model of N CPUs running
//! random runs (nested ones included, as interrupts start them) that take,
//! release, leak and forge-release locks, interleaved step by step with the
//! kernel's protocol: admit, compare-and-swap on the word, wait with the
//! cycle search and a budget, cancel releasing the run's slots. Checked after
//! every step: never two owners, tables and words agree, a cancelled or
//! finished run leaves no slot, no run waits forever, every AA is refused at
//! once, and no run runs out of budget while its wait closes a cycle (the
//! search would have found it).

mod common;

use common::Rng;
use kflex_core::logic::locks::{self, Refusal, Slot, MAX_HELD};

#[test]
fn admit_refuses_aa_at_any_nesting_level_and_a_full_table() {
    let mut t = [Slot::default(); MAX_HELD];
    assert_eq!(locks::admit(&t, 64), Ok(0));
    t[0] = Slot { off: 64, run: 1 };
    assert_eq!(locks::admit(&t, 64), Err(Refusal::Deadlock));
    // another run on the same CPU (an interrupting one) holding it: AA too
    t[0].run = 2;
    assert_eq!(locks::admit(&t, 64), Err(Refusal::Deadlock));
    assert_eq!(locks::admit(&t, 72), Ok(1));
    for (i, s) in t.iter_mut().enumerate() {
        *s = Slot { off: 8 * (i as u64 + 1), run: 1 };
    }
    assert_eq!(locks::admit(&t, 4096), Err(Refusal::TableFull));
    t[5] = Slot::default();
    assert_eq!(locks::admit(&t, 4096), Ok(5));
}

#[test]
fn held_by_needs_the_same_run() {
    let t = [Slot { off: 64, run: 7 }, Slot::default()];
    assert_eq!(locks::held_by(&t, 64, 7), Some(0));
    assert_eq!(locks::held_by(&t, 64, 8), None);
    assert_eq!(locks::held_by(&t, 0, 0), None);
}

#[test]
fn lock_words_are_aligned_nonnull_and_inside() {
    assert!(locks::valid_word(4, 65536));
    assert!(locks::valid_word(65532, 65536));
    assert!(!locks::valid_word(0, 65536));
    assert!(!locks::valid_word(6, 65536));
    assert!(!locks::valid_word(65536, 65536));
    assert!(!locks::valid_word(u64::MAX - 3, 65536));
}

#[test]
fn cycles_through_me_are_found_others_are_not() {
    // lock 300 is held by CPU 3, 100 by CPU 1, 900 by CPU 0
    let holder = |l: u64| match l {
        300 => Some(3),
        100 => Some(1),
        900 => Some(0),
        _ => None,
    };
    // 0 -> 300 (CPU 3, waits for 100) -> 100 (CPU 1, not waiting): no cycle
    let waits = [300u64, 0, 0, 100];
    assert!(!locks::closes_cycle(0, 300, 4, holder, |c| waits[c]));
    // CPU 1 waits for a lock of CPU 0: 0 -> 3 -> 1 -> 0
    let waits = [300u64, 900, 0, 100];
    assert!(locks::closes_cycle(0, 300, 4, holder, |c| waits[c]));
    // a cycle 1 <-> 3 that 0 only waits into: no verdict for 0
    let waits = [300u64, 300, 0, 100];
    assert!(!locks::closes_cycle(0, 300, 4, holder, |c| waits[c]));
    // free lock
    assert!(!locks::closes_cycle(0, 555, 4, holder, |c| waits[c]));
}

// ---------------------------------------------------------------------------
// The model.

#[derive(Clone, Copy, Debug)]
enum Op {
    Lock(u64),
    Unlock(u64),
    /// An interrupt starts a nested run on this CPU.
    Nest,
}

struct Run {
    tag: u64,
    ops: Vec<Op>,
    pc: usize,
    /// The lock it waits for, steps waited, and the CPU's `waiting` before.
    wait: Option<(u64, u32, u64)>,
}

#[derive(Default)]
struct Cpu {
    table: [Slot; MAX_HELD],
    waiting: u64,
    runs: Vec<Run>,
}

#[derive(Default, Debug)]
struct Counts {
    taken: u64,
    aa: u64,
    cycles: u64,
    budget: u64,
    full: u64,
    bad_unlocks: u64,
    leaked: u64,
}

struct Model {
    cpus: Vec<Cpu>,
    /// Lock offset → (cpu, run) per the word (0/owner in the kernel).
    words: Vec<(u64, Option<(usize, u64)>)>,
    budget: u32,
    counts: Counts,
    next_tag: u64,
}

impl Model {
    fn word(&mut self, off: u64) -> &mut Option<(usize, u64)> {
        let i = self.words.iter().position(|w| w.0 == off).unwrap();
        &mut self.words[i].1
    }

    fn holder(&self, off: u64) -> Option<usize> {
        self.cpus.iter().position(|c| c.table.iter().any(|s| s.off == off))
    }

    fn cycle(&self, me: usize, want: u64) -> bool {
        locks::closes_cycle(me, want, self.cpus.len(), |l| self.holder(l), |c| self.cpus[c].waiting)
    }

    /// Ends the top run of `cpu`: releases every slot it holds (cancel or
    /// exit), restores the CPU's `waiting`.
    fn end_run(&mut self, cpu: usize) -> u64 {
        let run = self.cpus[cpu].runs.pop().unwrap();
        if let Some((_, _, prev)) = run.wait {
            self.cpus[cpu].waiting = prev;
        }
        let mut released = 0;
        for i in 0..MAX_HELD {
            let s = self.cpus[cpu].table[i];
            if s.off != 0 && s.run == run.tag {
                assert_eq!(*self.word(s.off), Some((cpu, run.tag)));
                *self.word(s.off) = None;
                self.cpus[cpu].table[i] = Slot::default();
                released += 1;
            }
        }
        for c in &self.cpus {
            assert!(c.table.iter().all(|s| s.off == 0 || s.run != run.tag), "slot left behind");
        }
        released
    }

    fn take(&mut self, cpu: usize, off: u64) -> bool {
        let tag = self.cpus[cpu].runs.last().unwrap().tag;
        if self.word(off).is_some() {
            return false;
        }
        // the kernel re-admits under IRQs off right before the CAS
        let slot = match locks::admit(&self.cpus[cpu].table, off) {
            Ok(s) => s,
            Err(_) => unreachable!("admitted before waiting; nested runs end before it resumes"),
        };
        *self.word(off) = Some((cpu, tag));
        self.cpus[cpu].table[slot] = Slot { off, run: tag };
        self.counts.taken += 1;
        true
    }

    /// One step of the top run of `cpu`. Returns false when the CPU is idle.
    fn step(&mut self, cpu: usize, rng: &mut Rng) -> bool {
        let Some(run) = self.cpus[cpu].runs.last() else {
            return false;
        };
        let tag = run.tag;
        if let Some((off, waited, prev)) = run.wait {
            if self.take(cpu, off) {
                self.cpus[cpu].waiting = prev;
                let r = self.cpus[cpu].runs.last_mut().unwrap();
                r.wait = None;
                r.pc += 1;
            } else if self.cycle(cpu, off) {
                self.counts.cycles += 1;
                self.end_run(cpu);
            } else if waited >= self.budget {
                // out of budget: it must not have been a cycle through us
                assert!(!self.cycle(cpu, off));
                self.counts.budget += 1;
                self.end_run(cpu);
            } else {
                self.cpus[cpu].runs.last_mut().unwrap().wait = Some((off, waited + 1, prev));
            }
            // interrupts may come while waiting
            if rng.below(16) == 0 && self.cpus[cpu].runs.len() < 4 {
                self.nest(cpu, rng);
            }
            return true;
        }
        let Some(&op) = run.ops.get(run.pc) else {
            // exit: leaked locks are released and counted
            self.counts.leaked += self.end_run(cpu);
            return true;
        };
        match op {
            Op::Lock(off) => {
                let held_here = self.cpus[cpu].table.iter().any(|s| s.off == off);
                match locks::admit(&self.cpus[cpu].table, off) {
                    Err(Refusal::Deadlock) => {
                        assert!(held_here);
                        self.counts.aa += 1;
                        self.end_run(cpu);
                    }
                    Err(Refusal::TableFull) => {
                        assert!(!held_here);
                        assert!(self.cpus[cpu].table.iter().all(|s| s.off != 0));
                        self.counts.full += 1;
                        self.end_run(cpu);
                    }
                    Err(Refusal::LockBudget) => unreachable!(),
                    Ok(_) => {
                        assert!(!held_here, "AA not refused");
                        if self.take(cpu, off) {
                            self.cpus[cpu].runs.last_mut().unwrap().pc += 1;
                        } else {
                            let prev = self.cpus[cpu].waiting;
                            self.cpus[cpu].waiting = off;
                            self.cpus[cpu].runs.last_mut().unwrap().wait = Some((off, 0, prev));
                        }
                    }
                }
            }
            Op::Unlock(off) => {
                match locks::held_by(&self.cpus[cpu].table, off, tag) {
                    Some(i) => {
                        assert_eq!(*self.word(off), Some((cpu, tag)));
                        self.cpus[cpu].table[i] = Slot::default();
                        *self.word(off) = None;
                    }
                    None => {
                        assert_ne!(*self.word(off), Some((cpu, tag)));
                        self.counts.bad_unlocks += 1;
                    }
                }
                self.cpus[cpu].runs.last_mut().unwrap().pc += 1;
            }
            Op::Nest => {
                self.cpus[cpu].runs.last_mut().unwrap().pc += 1;
                if self.cpus[cpu].runs.len() < 4 {
                    self.nest(cpu, rng);
                }
            }
        }
        true
    }

    fn nest(&mut self, cpu: usize, rng: &mut Rng) {
        let nlocks = self.words.len() as u64;
        let ops = script(rng, nlocks, 4);
        self.next_tag += 1;
        self.cpus[cpu].runs.push(Run { tag: self.next_tag, ops, pc: 0, wait: None });
    }

    fn check(&self) {
        // every owned word is in exactly one slot, of its owner; every slot
        // names a word its run owns
        for &(off, owner) in &self.words {
            let slots: Vec<(usize, Slot)> = self
                .cpus
                .iter()
                .enumerate()
                .flat_map(|(c, cpu)| cpu.table.iter().map(move |s| (c, *s)))
                .filter(|(_, s)| s.off == off)
                .collect();
            match owner {
                None => assert!(slots.is_empty(), "free word in a table"),
                Some((c, run)) => {
                    assert_eq!(slots.len(), 1, "two owners of {off}");
                    assert_eq!(slots[0], (c, Slot { off, run }));
                }
            }
        }
    }
}

fn script(rng: &mut Rng, nlocks: u64, len: u64) -> Vec<Op> {
    let n = 1 + rng.below(len);
    (0..n)
        .map(|_| {
            let l = 8 * (1 + rng.below(nlocks));
            match rng.below(10) {
                0..=4 => Op::Lock(l),
                5..=8 => Op::Unlock(l),
                _ => Op::Nest,
            }
        })
        .collect()
}

fn simulate(seed: u64) -> Counts {
    let mut rng = Rng::new(seed);
    let ncpu = 2 + rng.below(3) as usize;
    let nlocks = 2 + rng.below(10);
    let mut m = Model {
        cpus: (0..ncpu).map(|_| Cpu::default()).collect(),
        words: (1..=nlocks).map(|i| (8 * i, None)).collect(),
        budget: 1 + rng.below(64) as u32,
        counts: Counts::default(),
        next_tag: 0,
    };
    for c in 0..ncpu {
        for _ in 0..1 + rng.below(6) {
            // outer runs queue up; each starts when the previous ends
            let ops = script(&mut rng, nlocks, 24);
            m.next_tag += 1;
            let tag = m.next_tag;
            m.cpus[c].runs.insert(0, Run { tag, ops, pc: 0, wait: None });
        }
    }
    let mut steps = 0u64;
    loop {
        let busy: Vec<usize> = (0..ncpu).filter(|&c| !m.cpus[c].runs.is_empty()).collect();
        if busy.is_empty() {
            break;
        }
        let cpu = busy[rng.below(busy.len() as u64) as usize];
        m.step(cpu, &mut rng);
        m.check();
        steps += 1;
        assert!(steps < 1_000_000, "seed {seed}: runs did not finish");
    }
    for c in &m.cpus {
        assert!(c.table.iter().all(|s| s.off == 0), "seed {seed}: table not empty at the end");
        assert_eq!(c.waiting, 0, "seed {seed}: waiting left set");
    }
    assert!(m.words.iter().all(|w| w.1.is_none()));
    m.counts
}

#[test]
fn random_interleavings_on_simulated_cpus() {
    let mut total = Counts::default();
    for seed in 0..8_000 {
        let c = simulate(seed);
        total.taken += c.taken;
        total.aa += c.aa;
        total.cycles += c.cycles;
        total.budget += c.budget;
        total.full += c.full;
        total.bad_unlocks += c.bad_unlocks;
        total.leaked += c.leaked;
    }
    // every outcome is exercised
    assert!(total.taken > 100_000, "{total:?}");
    assert!(total.aa > 100, "{total:?}");
    assert!(total.cycles > 100, "{total:?}");
    assert!(total.budget > 100, "{total:?}");
    assert!(total.full > 0, "{total:?}");
    assert!(total.bad_unlocks > 100, "{total:?}");
    assert!(total.leaked > 100, "{total:?}");
}
