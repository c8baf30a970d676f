// SPDX-License-Identifier: GPL-2.0

//! Tests of the placement of cancellation points (`logic::cancel`): one per
//! loop shape, malformed programs, and a property test over random
//! control-flow graphs (reducible and irreducible, several functions,
//! `may_goto`s): after placement, every cycle of every function passes
//! through a point, and every call of a helper that calls back is followed
//! by a point that polls.

mod common;

use common::*;
use kflex_core::logic::{
    bpf::*,
    cancel::{self, is_may_goto, Error, Frame, Stats},
};

fn mov(dst: u8, imm: i32) -> Insn {
    ins(ALU64 | MOV | K, dst, 0, 0, imm)
}
fn ja(off: i16) -> Insn {
    ins(JMP | JA, 0, 0, off, 0)
}
fn jeq(dst: u8, imm: i32, off: i16) -> Insn {
    ins(JMP | JEQ | K, dst, 0, off, imm)
}
fn may_goto(off: i16) -> Insn {
    ins(JMP | JCOND, 0, 0, off, 0)
}
fn call(imm: i32) -> Insn {
    ins(JMP | CALL, 0, 0, 0, imm)
}
fn call_sub(delta: i32) -> Insn {
    ins(JMP | CALL, 0, PSEUDO_CALL, 0, delta)
}
fn exit() -> Insn {
    ins(JMP | EXIT, 0, 0, 0, 0)
}

fn place(insns: &[Insn], starts: &[usize]) -> Result<(Vec<bool>, Stats), Error> {
    let n = insns.len();
    let mut marks = vec![false; n];
    let mut state = vec![0; n];
    let mut stack = vec![Frame::default(); n];
    let s = cancel::place(insns, starts, &mut marks, &mut state, &mut stack)?;
    Ok((marks, s))
}

fn marked(m: &[bool]) -> Vec<usize> {
    m.iter().enumerate().filter(|(_, &b)| b).map(|(i, _)| i).collect()
}

#[test]
fn straight_line_needs_none() {
    let (m, s) = place(&[mov(0, 1), jeq(0, 1, 1), mov(0, 2), exit()], &[0]).unwrap();
    assert_eq!(marked(&m), Vec::<usize>::new());
    assert_eq!(s, Stats { placed: 0, may_gotos: 0 });
}

#[test]
fn simple_loop_gets_one_point_on_its_back_edge() {
    // 0: r0 = 0; 1: r0 += 1 (mov); 2: if r0 == 5 goto 4; 3: goto 1; 4: exit
    let p = [mov(0, 0), mov(1, 1), jeq(0, 5, 1), ja(-3), exit()];
    let (m, s) = place(&p, &[0]).unwrap();
    assert_eq!(marked(&m), vec![3]);
    assert_eq!(s.placed, 1);
}

#[test]
fn self_loop_and_call_loop() {
    let (m, _) = place(&[mov(0, 0), ja(-1)], &[0]).unwrap();
    assert_eq!(marked(&m), vec![1]);
    // An iterator-style loop: call next; if r0 == 0 exit; body; goto call.
    let p = [mov(1, 0), call(7), jeq(0, 0, 2), mov(2, 1), ja(-4), exit()];
    let (m, _) = place(&p, &[0]).unwrap();
    assert_eq!(marked(&m), vec![4]);
}

#[test]
fn nested_loops_each_get_a_point() {
    // outer: 1..6, inner: 2..4
    let p = [
        mov(0, 0),
        mov(1, 0),    // 1 outer head
        jeq(1, 3, 1), // 2 inner head: exit inner to 4
        ja(-2),       // 3 inner back edge -> 2
        jeq(0, 9, 1), // 4 -> 6
        ja(-5),       // 5 outer back edge -> 1
        exit(),       // 6
    ];
    let (m, _) = place(&p, &[0]).unwrap();
    assert_eq!(marked(&m), vec![3, 5]);
}

#[test]
fn may_goto_loops_need_no_other_point() {
    // while (can_loop) { ... }: 1: may_goto +2; 2: mov; 3: goto 1; 4: exit
    let p = [mov(0, 0), may_goto(2), mov(0, 1), ja(-3), exit()];
    let (m, s) = place(&p, &[0]).unwrap();
    assert_eq!(marked(&m), Vec::<usize>::new());
    assert_eq!(s.may_gotos, 1);
}

#[test]
fn irreducible_loop_is_cut() {
    // Two entries into the cycle {2, 3}: 1 jumps to 3, falls to 2.
    let p = [mov(0, 0), jeq(0, 1, 1), mov(0, 2), jeq(0, 3, -2), exit()];
    let (m, _) = place(&p, &[0]).unwrap();
    assert_eq!(marked(&m).len(), 1);
    assert!(acyclic_without(&p, &[0], &m));
}

#[test]
fn loops_in_subprograms_and_ld_imm64() {
    let p = [
        call_sub(2),               // 0 -> function at 3
        mov(0, 0),                 // 1
        exit(),                    // 2
        ins(LD_IMM64, 1, 0, 0, 5), // 3 function 1
        ins(0, 0, 0, 0, 0),        // 4 second slot
        jeq(1, 0, 1),              // 5
        ja(-4),                    // 6 -> 3
        exit(),                    // 7
    ];
    let (m, _) = place(&p, &[0, 3]).unwrap();
    assert_eq!(marked(&m), vec![6]);
}

#[test]
fn a_poll_follows_every_helper_that_calls_back() {
    // bpf_loop, bpf_for_each_map_elem, another helper, bpf_find_vma,
    // bpf_user_ringbuf_drain, a subprogram call with a helper's number
    let p = [call(181), mov(0, 0), call(164), call(1), call(180), call(209), call_sub(181), exit()];
    let mut polls = vec![false; p.len()];
    assert_eq!(cancel::place_after_callbacks(&p, &mut polls), 4);
    assert_eq!(marked(&polls), [1, 3, 5, 6]);
    // a helper call as the last instruction: nothing to mark past the end
    let mut polls = vec![false; 1];
    assert_eq!(cancel::place_after_callbacks(&[call(181)], &mut polls), 0);
    assert_eq!(polls, [false]);
}

#[test]
fn malformed_programs_are_errors() {
    assert_eq!(place(&[ja(5), exit()], &[0]), Err(Error::BadJump { pc: 0 }));
    assert_eq!(place(&[mov(0, 0)], &[0]), Err(Error::BadJump { pc: 0 }));
    assert_eq!(place(&[exit(), ja(-2), exit()], &[0, 1]), Err(Error::BadJump { pc: 1 }));
    assert_eq!(place(&[ins(LD_IMM64, 1, 0, 0, 0)], &[0]), Err(Error::BadLdImm64 { pc: 0 }));
    assert_eq!(place(&[exit()], &[1]), Err(Error::BadSubprogs));
    assert_eq!(place(&[exit(), exit()], &[0, 0]), Err(Error::BadSubprogs));
    let mut marks = vec![false; 1];
    let mut state = vec![0; 1];
    let mut stack: Vec<Frame> = Vec::new();
    assert_eq!(
        cancel::place(&[exit()], &[0], &mut marks, &mut state, &mut stack),
        Err(Error::Buffers)
    );
}

/// Successors within `[lo, hi)` (the tests' own reading of the ISA).
fn succ(p: &[Insn], pc: usize) -> Vec<usize> {
    let i = p[pc];
    if i.code == LD_IMM64 {
        return vec![pc + 2];
    }
    let class = i.code & CLASS_MASK;
    if class != JMP && class != JMP32 {
        return vec![pc + 1];
    }
    let t = (pc as i64 + 1 + i64::from(i.off)) as usize;
    match i.code & OP_MASK {
        EXIT => vec![],
        CALL => vec![pc + 1],
        JA => vec![t],
        _ => vec![pc + 1, t],
    }
}

/// Whether each function's graph, reachable part, is acyclic once marked
/// instructions and `may_goto`s are taken out.
fn acyclic_without(p: &[Insn], starts: &[usize], marks: &[bool]) -> bool {
    let cut = |pc: usize| marks[pc] || is_may_goto(&p[pc]);
    for &lo in starts {
        // Reachable set from the entry (through every instruction).
        let mut seen = vec![false; p.len()];
        let mut work = vec![lo];
        while let Some(pc) = work.pop() {
            if std::mem::replace(&mut seen[pc], true) {
                continue;
            }
            work.extend(succ(p, pc));
        }
        // Kahn's algorithm on the reachable, uncut nodes.
        let nodes: Vec<usize> = (0..p.len()).filter(|&i| seen[i] && !cut(i)).collect();
        let mut indeg = vec![0usize; p.len()];
        for &u in &nodes {
            for v in succ(p, u) {
                if !cut(v) {
                    indeg[v] += 1;
                }
            }
        }
        let mut ready: Vec<usize> = nodes.iter().copied().filter(|&u| indeg[u] == 0).collect();
        let mut done = 0;
        while let Some(u) = ready.pop() {
            done += 1;
            for v in succ(p, u) {
                if !cut(v) {
                    indeg[v] -= 1;
                    if indeg[v] == 0 {
                        ready.push(v);
                    }
                }
            }
        }
        if done != nodes.len() {
            return false;
        }
    }
    true
}

/// A random valid program: 1 to 4 functions of 2 to 40 instructions, with
/// forward and backward jumps anywhere in the function (irreducible graphs
/// come naturally), `may_goto`s, helper calls, `LD_IMM64` pairs; every
/// function ends with `exit` or a backward `ja`.
fn random_program(rng: &mut Rng) -> (Vec<Insn>, Vec<usize>) {
    let nfun = rng.range(1, 4) as usize;
    let mut p = Vec::new();
    let mut starts = Vec::new();
    for _ in 0..nfun {
        let lo = p.len();
        starts.push(lo);
        let len = rng.range(2, 40) as usize;
        // Slot kinds first, so that jumps know where LD_IMM64 halves are.
        let mut second = vec![false; len];
        let mut i = 0;
        while i < len - 1 {
            if i + 2 < len && rng.chance(1, 12) {
                second[i + 1] = true;
                i += 2;
            } else {
                i += 1;
            }
        }
        let heads: Vec<usize> = (0..len).filter(|&k| !second[k]).collect();
        for k in 0..len {
            let pc = lo + k;
            let jump_to = |rng: &mut Rng| -> i16 {
                let t = lo + rng.pick(&heads);
                (t as i64 - pc as i64 - 1) as i16
            };
            let insn = if second[k] {
                ins(0, 0, 0, 0, 0)
            } else if k + 1 < len && second[k + 1] {
                ins(LD_IMM64, 1, 0, 0, 1)
            } else if k == len - 1 {
                if rng.chance(1, 2) || k == 0 {
                    exit()
                } else {
                    ja(jump_to(rng))
                }
            } else {
                match rng.below(10) {
                    0 | 1 => jeq(1, 0, jump_to(rng)),
                    2 => ja(jump_to(rng)),
                    3 => may_goto(jump_to(rng)),
                    4 if rng.chance(1, 3) => call(rng.pick(&cancel::CALLBACK_HELPERS)),
                    4 => call(1),
                    5 => exit(),
                    _ => mov(1, 1),
                }
            };
            p.push(insn);
        }
    }
    (p, starts)
}

#[test]
fn every_cycle_passes_a_point_in_random_programs() {
    let mut rng = Rng::new(0x5eed);
    let (mut loops, mut placed, mut irreducible_seen, mut callbacks) = (0u64, 0u64, 0u64, 0u64);
    for _ in 0..25_000 {
        let (p, starts) = random_program(&mut rng);
        let (m, s) = place(&p, &starts).expect("valid program");
        let mut polls = vec![false; p.len()];
        let n = cancel::place_after_callbacks(&p, &mut polls);
        let calls: Vec<usize> = (0..p.len()).filter(|&i| cancel::calls_back(&p[i])).collect();
        assert_eq!(n as usize, calls.len());
        for (i, &poll) in polls.iter().enumerate() {
            let want = i > 0 && calls.contains(&(i - 1));
            assert_eq!(poll, want, "poll mark at {i}: {p:?}");
        }
        callbacks += n as u64;
        assert!(
            acyclic_without(&p, &starts, &m),
            "a cycle without a point: {p:?} {starts:?} {m:?}"
        );
        // Nothing marked twice, only instruction heads marked.
        for (i, &b) in m.iter().enumerate() {
            if b {
                assert!(i == 0 || p[i - 1].code != LD_IMM64, "second LD_IMM64 slot marked");
            }
        }
        placed += u64::from(s.placed);
        if s.placed > 0 {
            loops += 1;
        }
        if s.placed > 1 {
            irreducible_seen += 1;
        }
    }
    // The generator makes loops often enough for the test to mean something.
    assert!(
        loops > 10_000 && placed > loops && irreducible_seen > 1_000 && callbacks > 5_000,
        "{loops} {placed} {irreducible_seen} {callbacks}"
    );
}
