// SPDX-License-Identifier: GPL-2.0

//! Tests of the guard pass (`logic::guard`): one test per transfer rule,
//! malformed programs, typical programs that must keep their elisions, and a
//! property test that runs random programs instrumented by the pass in an
//! adversarial interpreter.

mod common;

use common::*;
use kflex_core::logic::{
    bpf::*,
    guard::{self, BlockState, Error, Mark, Mode, Params},
};
use std::time::Instant;

const G: fn(u8) -> Mark = Mark::Guard;
const E: Mark = Mark::Elided;

/// Marks of the given instructions.
fn marks_at(o: &Outcome, pcs: &[usize]) -> Vec<Mark> {
    pcs.iter().map(|&pc| o.mark(pc)).collect()
}

fn prog(parts: &[&[Insn]]) -> Vec<Insn> {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

// ---------------------------------------------------------------------------
// Encoding.

#[test]
fn insn_raw_roundtrip() {
    let raw = [0xb7u8, 0x21, 0xfe, 0xff, 0x78, 0x56, 0x34, 0x12];
    let i = Insn::from_raw(raw);
    assert_eq!(i, Insn::new(0xb7, 1, 2, -2, 0x1234_5678));
    assert_eq!(i.to_raw(), raw);
    let mut rng = Rng::new(1);
    for _ in 0..10_000 {
        let b = rng.next_u64().to_le_bytes();
        assert_eq!(Insn::from_raw(b).to_raw(), b);
    }
}

#[test]
fn mark_encoding_roundtrip() {
    let all = [Mark::None, Mark::Elided, Mark::Unchecked, Mark::Cast, G(0), G(5), G(9)];
    for m in all {
        assert_eq!(Mark::decode(m.encode()), Some(m));
    }
    assert_eq!(guard::MAX_GUARD_REG, 9);
    assert_eq!(Mark::decode(Mark::Guard(10).encode()), None, "no guard on r10");
    assert_eq!(Mark::decode(Mark::Guard(AX).encode()), None, "no guard on AX");
    assert_eq!(Mark::decode(0xff), None);
}

// ---------------------------------------------------------------------------
// Window boundaries.

#[test]
fn offsets_at_window_boundaries() {
    // cast r1; one access per offset; every access sees r1 = Guarded{0,0}
    // because an elided access leaves r1 unchanged and a guard re-guards it.
    let offs: [(i16, bool); 8] = [
        (0, true),
        (-32768, true),
        (-32767, true),
        (32758, true),
        (32759, false),
        (32760, false),
        (32767, false),
        (-8, true),
    ];
    let makers: [fn(i16) -> Insn; 4] = [
        |o| hld(DW, R2, R1, o),
        |o| hst(W, R1, o, 7),
        |o| hstx(B, R1, R3, o),
        |o| hatomic(DW, R1, R3, o, 0x00),
    ];
    for make in makers {
        for &(off, ok) in &offs {
            let p = [cast(R1, R1), make(off), exit()];
            let o = full(&p);
            let want = if ok { E } else { G(R1) };
            assert_eq!(o.mark(1), want, "off {off}: {:?}", p[1]);
            assert_eq!(o.mark(0), Mark::Cast);
        }
    }
}

#[test]
fn constant_offsets_shift_the_window() {
    // (c, off, elided): c + off must be in [-32768, 32759)
    let cases: [(i32, i16, bool); 10] = [
        (-1, -32767, true),
        (-1, -32768, false),
        (32758, 0, true),
        (32759, 0, false),
        (16, 32742, true),
        (16, 32743, false),
        (-65535, 32767, true),
        (-65536, 32767, false),
        (65526, -32768, true),
        (65527, -32768, false),
    ];
    for (c, off, ok) in cases {
        let p = [cast(R1, R2), addk(R1, c), hld(W, R3, R1, off), exit()];
        let o = full(&p);
        assert_eq!(o.mark(2), if ok { E } else { G(R1) }, "c {c} off {off}");
        // the same through SUB
        let p = [cast(R1, R2), subk(R1, c.wrapping_neg()), hld(W, R3, R1, off), exit()];
        assert_eq!(full(&p).mark(2), if ok { E } else { G(R1) }, "sub c {c}");
    }
}

#[test]
fn large_constants_lose_the_guard() {
    // c = 2^31 - 1 is still tracked and can come back ...
    let p = [cast(R1, R1), addk(R1, i32::MAX), subk(R1, i32::MAX), hld(DW, R2, R1, 0), exit()];
    assert_eq!(full(&p).mark(3), E);
    // ... but c = 2^31 is not: the value is unknown from then on.
    let p = [
        cast(R1, R1),
        addk(R1, i32::MAX),
        addk(R1, 1),
        subk(R1, 1),
        subk(R1, i32::MAX),
        hld(DW, R2, R1, 0),
        exit(),
    ];
    assert_eq!(full(&p).mark(5), G(R1));
    // SUB of i32::MIN = +2^31: unknown
    let p = [cast(R1, R1), subk(R1, i32::MIN), hld(DW, R2, R1, 0), exit()];
    assert_eq!(full(&p).mark(2), G(R1));
}

#[test]
fn guard_resets_the_offset() {
    // An inserted guard makes the register Guarded{0,0} for what follows.
    let p = [
        cast(R1, R1),
        addk(R1, 40000),
        hld(DW, R2, R1, 0), // guard: r1 &= mask, r1 is now {0,0}
        hld(DW, R3, R1, 8), // elided
        exit(),
    ];
    let o = full(&p);
    assert_eq!(marks_at(&o, &[2, 3]), [G(R1), E]);
    // An elided access leaves the offset in place.
    let p = [
        cast(R1, R1),
        addk(R1, 30000),
        hld(DW, R2, R1, 0),    // elided (30000)
        hld(DW, R3, R1, 2759), // 32759: guarded
        exit(),
    ];
    assert_eq!(marks_at(&full(&p), &[2, 3]), [E, G(R1)]);
}

// ---------------------------------------------------------------------------
// Registers and constants.

#[test]
fn add_and_sub_of_constant_registers() {
    let p = [
        cast(R1, R1),
        movk(R2, 4),
        alu64k(LSH, R2, 2), // r2 = 16
        alu64x(ADD, R1, R2),
        hld(DW, R3, R1, 32742), // 16 + 32742 = 32758: elided
        hld(DW, R3, R1, 32743), // 32759: guarded
        exit(),
    ];
    assert_eq!(marks_at(&full(&p), &[4, 5]), [E, G(R1)]);
    // const + guarded (dst is the constant)
    let p = [
        cast(R1, R1),
        movk(R2, -100),
        alu64x(ADD, R2, R1),
        hld(DW, R3, R2, -32668), // -32768: elided
        hld(DW, R3, R2, -32669), // -32769: guarded
        exit(),
    ];
    assert_eq!(marks_at(&full(&p), &[3, 4]), [E, G(R2)]);
    // guarded - const register
    let p = [
        cast(R1, R1),
        movk(R2, 32000),
        alu64x(SUB, R1, R2),
        hld(DW, R3, R1, -768),
        hld(DW, R3, R1, -769),
        exit(),
    ];
    assert_eq!(marks_at(&full(&p), &[3, 4]), [E, G(R1)]);
    // const - guarded, guarded + guarded, guarded + unknown: unknown
    for op in [
        [movk(R2, 8), alu64x(SUB, R2, R1), mov(R1, R2)],
        [cast(R2, R2), alu64x(ADD, R1, R2), mov(R0, R0)],
        [ldx(DW, R2, R9, 0), alu64x(ADD, R1, R2), mov(R0, R0)],
    ] {
        let p = prog(&[&[cast(R1, R1)], &op, &[hld(DW, R3, R1, 0), exit()]]);
        assert_eq!(full(&p).mark(4), G(R1), "{op:?}");
    }
}

#[test]
fn moves_copy_states() {
    let p = [
        cast(R1, R5),
        mov(R2, R1),
        addk(R2, 8),
        mov(R3, R2),
        hld(DW, R0, R3, 32750), // 8 + 32750 = 32758
        hstx(DW, R2, R0, 32751),
        exit(),
    ];
    assert_eq!(marks_at(&full(&p), &[4, 5]), [E, G(R2)]);
    // mov from the frame pointer is not a heap pointer
    let p = [mov(R1, R10), hld(DW, R0, R1, 0), exit()];
    assert_eq!(full(&p).mark(1), G(R1));
}

#[test]
fn other_alu64_ops_make_values_unguarded() {
    let ops = [
        alu64k(AND, R1, 0xfff),
        alu64k(OR, R1, 0),
        alu64k(XOR, R1, 0),
        alu64k(MUL, R1, 1),
        alu64k(LSH, R1, 0),
        alu64k(RSH, R1, 0),
        alu64k(ARSH, R1, 0),
        alu64k(NEG, R1, 0),
        alu64k(DIV, R1, 1),
        alu64k(MOD, R1, 1 << 30),
        ins(ALU64 | END, R1, 0, 0, 64),
        ins(ALU64 | MOV | X, R1, R1, 32, 0), // movsx
        cast_user(R1, R1),
        alu64x(AND, R1, R1),
    ];
    for op in ops {
        let p = [cast(R1, R1), op, hld(DW, R0, R1, 0), exit()];
        assert_eq!(full(&p).mark(2), G(R1), "{op:?}");
    }
}

#[test]
fn alu32_makes_values_unguarded() {
    let ops = [
        alu32k(ADD, R1, 0),
        alu32k(SUB, R1, 0),
        alu32x(MOV, R1, R1),
        alu32k(AND, R1, -1),
        alu32k(OR, R1, 0),
        alu32k(MOV, R1, 0),
    ];
    for op in ops {
        let p = [cast(R1, R1), op, hld(DW, R0, R1, 0), exit()];
        assert_eq!(full(&p).mark(2), G(R1), "{op:?}");
    }
    // 32-bit moves of constants stay constants (zero-extended)
    let p = [
        cast(R1, R1),
        alu32k(MOV, R2, -8), // r2 = 0xffff_fff8: too large
        alu64x(ADD, R1, R2),
        hld(DW, R0, R1, 0),
        cast(R3, R3),
        alu32k(MOV, R4, 24),
        alu32x(MOV, R5, R4),
        alu64x(ADD, R3, R5),
        hld(DW, R0, R3, 0),
        exit(),
    ];
    assert_eq!(marks_at(&full(&p), &[3, 8]), [G(R1), E]);
}

#[test]
fn ld_imm64_constants() {
    let p = prog(&[
        &[cast(R1, R1)],
        &ld_imm64(R2, 0, 16),
        &[alu64x(ADD, R1, R2), hld(DW, R0, R1, 32742)], // 32758: elided
        &[cast(R3, R3)],
        &ld_imm64(R4, 0, 1 << 40),
        &[alu64x(ADD, R3, R4), hld(DW, R0, R3, 0)], // too large
        &[cast(R5, R5)],
        &ld_imm64(R6, 1, 16), // map pointer: unknown
        &[alu64x(ADD, R5, R6), hld(DW, R0, R5, 0)],
        &[cast(R7, R7)],
        &ld_imm64(R7, 0, 0), // overwrites the guarded value
        &[hld(DW, R0, R7, 0)],
        &ld_imm64(R8, 0, (-8i64) as u64), // negative constant
        &[cast(R9, R9), alu64x(ADD, R9, R8), hld(DW, R0, R9, -32760)],
        &[exit()],
    ]);
    let o = full(&p);
    assert_eq!(marks_at(&o, &[4, 9, 14, 18, 23]), [E, G(R3), G(R5), G(R7), E]);
    // the second slot has no mark
    assert_eq!(o.mark(2), Mark::None);
}

#[test]
fn ax_register_is_never_trusted() {
    // AX reads as unknown, even right after a cast or a copy of a guarded
    // value.
    let p = [
        cast(AX, R1),
        mov(R2, AX),
        hld(DW, R0, R2, 0),
        cast(R1, R1),
        mov(AX, R1),
        mov(R2, AX),
        hstx(DW, R2, R0, 0),
        exit(),
    ];
    let o = full(&p);
    assert_eq!(marks_at(&o, &[0, 2, 6]), [Mark::Cast, G(R2), G(R2)]);
    // It never addresses the heap: such a program is refused, so that no
    // guard names AX (see malformed_programs_are_refused).
    let p = [cast(AX, R1), hld(DW, R0, AX, 0), exit()];
    assert_eq!(err(&p, &[0]), Error::BadInsn { pc: 1 });
}

// ---------------------------------------------------------------------------
// Heap accesses, atomics, calls.

#[test]
fn heap_loads_produce_unguarded_values() {
    let p = [
        cast(R1, R1),
        hld(DW, R2, R1, 0),  // elided
        hld(DW, R3, R2, 0),  // r2 came from the heap: guarded
        hld(DW, R1, R1, 8),  // elided, but r1 is overwritten
        hstx(DW, R1, R3, 0), // guarded
        exit(),
    ];
    assert_eq!(marks_at(&full(&p), &[1, 2, 3, 4]), [E, G(R2), E, G(R1)]);
}

#[test]
fn atomics_fetch_into_registers() {
    let p = [
        cast(R1, R1),
        cast(R2, R2),
        hatomic(DW, R1, R2, 0, 0x00), // add, no fetch: r2 stays
        hld(DW, R0, R2, 0),           // elided
        hatomic(DW, R1, R2, 0, 0x01), // fetch add: r2 unknown
        hld(DW, R0, R2, 0),           // guarded
        cast(R0, R0),
        cast(R3, R3),
        hatomic(DW, R1, R3, 0, CMPXCHG), // r0 unknown, r3 stays
        hld(DW, R4, R3, 0),              // elided
        hld(DW, R4, R0, 0),              // guarded
        cast(R3, R3),
        hatomic(W, R1, R3, 0, XCHG),
        hld(DW, R4, R3, 0), // guarded
        exit(),
    ];
    assert_eq!(
        marks_at(&full(&p), &[2, 3, 4, 5, 8, 9, 10, 12, 13]),
        [E, E, E, G(R2), E, E, G(R0), E, G(R3)]
    );
}

#[test]
fn calls_clobber_r0_to_r5_and_keep_r6_to_r9() {
    for call in [call_helper(1), call_kfunc(77), ins(JMP | TAIL_CALL, 0, 0, 0, 0)] {
        let mut p: Vec<Insn> = (0..10).map(|r| cast(r, r)).collect();
        p.push(call);
        let first = p.len();
        for r in 0..10 {
            p.push(hld(B, r, r, 0));
        }
        p.push(exit());
        let o = full(&p);
        for r in 0..10u8 {
            let want = if r <= 5 { G(r) } else { E };
            assert_eq!(o.mark(first + r as usize), want, "r{r} after {call:?}");
        }
    }
    // LD_ABS / LD_IND clobber r0..r5 too
    let p = [
        cast(R1, R1),
        cast(R6, R6),
        ins(LD | ABS | W, 0, 0, 0, 14),
        hld(W, R0, R1, 0),
        hld(W, R0, R6, 0),
        exit(),
    ];
    assert_eq!(marks_at(&full(&p), &[3, 4]), [G(R1), E]);
}

#[test]
fn subprograms_are_analysed_independently() {
    let p = [
        // main
        cast(R1, R1),
        cast(R6, R6),
        call_sub(3), // -> 6
        hld(DW, R0, R1, 0),
        hld(DW, R0, R6, 0),
        exit(),
        // sub: r1 and r6 are unknown at entry
        hld(DW, R0, R1, 0),
        hld(DW, R0, R6, 0),
        cast(R2, R1),
        hld(DW, R0, R2, 0),
        exit(),
    ];
    let o = run_pass(&p, &[0, 6], SIZE, Mode::Full).unwrap();
    assert_eq!(marks_at(&o, &[3, 4, 6, 7, 9]), [G(R1), E, G(R1), G(R6), E]);
    assert_eq!(o.stats.accesses, 5);
    assert_eq!(o.stats.elided, 2);
    // The same program as one subprogram is refused: the call names no
    // subprogram start.
    assert_eq!(run_pass(&p, &[0], SIZE, Mode::Full).err(), Some(Error::BadCallTarget { pc: 2 }));
}

// ---------------------------------------------------------------------------
// Stack.

#[test]
fn spill_and_fill_keep_states() {
    let p = [
        cast(R1, R1),
        addk(R1, 24),
        spill(-8, R1),
        movk(R1, 0),
        st(DW, R10, -16, 5),  // other slot
        stx(W, R10, R2, -24), // other slot
        hstx(DW, R3, R4, 0),  // heap store: not the stack
        fill(R2, -8),
        hld(DW, R0, R2, 32734), // 24 + 32734 = 32758
        hld(DW, R0, R2, 32735), // 32759: guarded
        exit(),
    ];
    let o = full(&p);
    assert_eq!(marks_at(&o, &[8, 9]), [E, G(R2)]);
}

#[test]
fn partial_stack_accesses_lose_states() {
    let cases: [&[Insn]; 6] = [
        &[st(B, R10, -3, 0)],             // narrow store into the slot
        &[st(DW, R10, -8, 0)],            // store of an immediate
        &[stx(W, R10, R1, -8)],           // narrow spill
        &[stx(DW, R10, R1, -12)],         // unaligned spill over the slot
        &[atomic(DW, R10, R3, -16, 0x0)], // atomic on the stack
        &[stx(DW, R9, R3, 0)],            // store through another register
    ];
    for c in cases {
        let p =
            prog(&[&[cast(R1, R1), spill(-8, R1)], c, &[fill(R2, -8), hld(DW, R0, R2, 0), exit()]]);
        assert_eq!(full(&p).mark(p.len() - 2), G(R2), "{c:?}");
    }
    // narrow and unaligned fills are unknown
    for f in [ldx(W, R2, R10, -8), ldx(DW, R2, R10, -12), ins(LDX | MEMSX | W, R2, R10, -8, 0)] {
        let p = [cast(R1, R1), spill(-8, R1), spill(-16, R1), f, hld(DW, R0, R2, 0), exit()];
        assert_eq!(full(&p).mark(4), G(R2), "{f:?}");
    }
    // a fill from another slot gets that slot's state
    let p = [cast(R1, R1), spill(-512, R1), fill(R2, -512), hld(DW, R0, R2, 0), exit()];
    assert_eq!(full(&p).mark(3), E);
}

#[test]
fn stores_via_r10_outside_the_frame_touch_no_slot() {
    let outside = [
        stx(DW, R10, R3, -520),
        st(B, R10, -513, 0),
        stx(DW, R10, R3, 0),
        st(W, R10, 8, 0),
        stx(DW, R10, R3, -4000),
    ];
    for store in outside {
        let p = [
            cast(R1, R1),
            spill(-8, R1),
            spill(-512, R1),
            store,
            fill(R2, -8),
            hld(DW, R0, R2, 0),
            fill(R2, -512),
            hld(DW, R0, R2, 0),
            exit(),
        ];
        assert_eq!(marks_at(&full(&p), &[5, 7]), [E, E], "{store:?}");
    }
    // straddling the lower end of the frame: slot -512 is hit
    let p = [
        cast(R1, R1),
        spill(-512, R1),
        stx(DW, R10, R3, -513),
        fill(R2, -512),
        hld(DW, R0, R2, 0),
        exit(),
    ];
    assert_eq!(full(&p).mark(4), G(R2));
}

#[test]
fn nospec_barrier_is_transparent() {
    let p = [
        cast(R1, R1),
        spill(-8, R1),
        ins(ST | NOSPEC, 0, 0, 0, 0),
        fill(R2, -8),
        hld(DW, R0, R2, 0),
        exit(),
    ];
    assert_eq!(full(&p).mark(4), E);
}

#[test]
fn stores_through_other_registers_clobber_the_stack() {
    let p = [
        cast(R1, R1),
        spill(-8, R1),
        spill(-64, R1),
        mov(R2, R10),
        addk(R2, -64),
        stx(DW, R2, R3, 0), // overwrites [r10 - 64]
        fill(R4, -64),
        hld(DW, R0, R4, 0),
        fill(R4, -8),
        hld(DW, R0, R4, 0),
        exit(),
    ];
    assert_eq!(marks_at(&full(&p), &[7, 9]), [G(R4), G(R4)]);
}

#[test]
fn calls_clobber_the_stack() {
    for call in [call_helper(1), call_kfunc(1)] {
        let p = [cast(R1, R1), spill(-8, R1), call, fill(R6, -8), hld(DW, R0, R6, 0), exit()];
        assert_eq!(full(&p).mark(4), G(R6), "{call:?}");
    }
    // a call to a subprogram may write the caller's stack too
    let p = [
        cast(R1, R1),
        spill(-8, R1),
        call_sub(3), // -> 6
        fill(R6, -8),
        hld(DW, R0, R6, 0),
        exit(),
        movk(R0, 0),
        exit(),
    ];
    let o = run_pass(&p, &[0, 6], SIZE, Mode::Full).unwrap();
    assert_eq!(o.mark(4), G(R6));
}

// ---------------------------------------------------------------------------
// Control flow.

#[test]
fn merges_of_equal_and_different_intervals() {
    // if (r3 == 0) r1 += 8 else r1 += 16; then access with off
    let diamond = |a: i32, b: i32, off: i16| {
        [
            cast(R1, R1),
            jk(JEQ, R3, 0, 2),
            addk(R1, a),
            ja(1),
            addk(R1, b),
            hld(DW, R0, R1, off),
            exit(),
        ]
    };
    assert_eq!(full(&diamond(8, 8, 32750)).mark(5), E);
    assert_eq!(full(&diamond(8, 8, 32751)).mark(5), G(R1));
    assert_eq!(full(&diamond(8, 16, 32742)).mark(5), E); // hull [8,16]
    assert_eq!(full(&diamond(8, 16, 32743)).mark(5), G(R1));
    assert_eq!(full(&diamond(-32, 16, -32736)).mark(5), E);
    assert_eq!(full(&diamond(-32, 16, -32737)).mark(5), G(R1));
    // guarded on one side only
    let p = [cast(R1, R1), jk(JEQ, R3, 0, 1), ldx(DW, R1, R9, 0), hld(DW, R0, R1, 0), exit()];
    assert_eq!(full(&p).mark(3), G(R1));
    // guarded vs constant
    let p = [cast(R1, R1), jk(JEQ, R3, 0, 1), movk(R1, 0), hld(DW, R0, R1, 0), exit()];
    assert_eq!(full(&p).mark(3), G(R1));
    // different constants merge to unknown
    let p = [
        cast(R1, R1),
        movk(R2, 8),
        jk(JEQ, R3, 0, 1),
        movk(R2, 16),
        alu64x(ADD, R1, R2),
        hld(DW, R0, R1, 0),
        exit(),
    ];
    assert_eq!(full(&p).mark(5), G(R1));
    // guard inserted on one side only: both sides guarded afterwards
    let p = [
        cast(R1, R1),
        addk(R1, 40000),
        jk(JEQ, R3, 0, 1),
        hld(DW, R0, R1, 0), // guard
        hld(DW, R0, R1, 0), // merge of {0,0} and {40000}: guard
        exit(),
    ];
    assert_eq!(marks_at(&full(&p), &[3, 4]), [G(R1), G(R1)]);
}

#[test]
fn loop_with_pointer_increment_is_not_elided() {
    // r1 = cast; loop: *(r1 + 0); r1 += 8; if r2 != 0 goto loop
    let p = [
        cast(R1, R1),
        hld(DW, R0, R1, 0),
        addk(R1, 8),
        ldx(DW, R2, R9, 0),
        jk(JNE, R2, 0, -4),
        exit(),
    ];
    let o = full(&p);
    assert_eq!(o.mark(1), G(R1));
    // A loop with a decrement as well: still not proven.
    let p = [cast(R1, R1), hstx(DW, R1, R0, 100), addk(R1, -8), jk(JNE, R2, 0, -3), exit()];
    assert_eq!(full(&p).mark(1), G(R1));
    // Loop-invariant pointer: elided inside the loop.
    let p = [
        cast(R1, R1),
        hld(DW, R0, R1, 0),
        addk(R0, 1),
        jk(JNE, R0, 100, -3),
        hld(DW, R0, R1, 8),
        exit(),
    ];
    assert_eq!(marks_at(&full(&p), &[1, 4]), [E, E]);
    // Re-cast every iteration: elided.
    let p = [cast(R1, R1), hld(DW, R0, R1, 0), addk(R1, 8), jk(JNE, R0, 0, -4), exit()];
    assert_eq!(full(&p).mark(1), E);
    // Loop via may_goto and via gotol behave the same.
    let p = [cast(R1, R1), hld(DW, R0, R1, 0), addk(R1, 8), may_goto(1), gotol(-4), exit()];
    assert_eq!(full(&p).mark(1), G(R1));
}

#[test]
fn loop_with_bounded_growth_before_widening() {
    // Even a loop of a few iterations is widened: no unrolling-based proof.
    let p = [
        cast(R1, R1),
        movk(R3, 0),
        hld(DW, R0, R1, 0),
        addk(R1, 1),
        addk(R3, 1),
        jk(JLT, R3, 2, -4),
        exit(),
    ];
    assert_eq!(full(&p).mark(2), G(R1));
}

#[test]
fn unreachable_code_is_guarded() {
    let p = [
        cast(R1, R1),
        exit(),
        hld(DW, R0, R1, 0), // dead
        exit(),
    ];
    let o = full(&p);
    assert_eq!(o.mark(2), G(R1));
    assert_eq!((o.stats.accesses, o.stats.elided), (1, 0));
}

// ---------------------------------------------------------------------------
// Modes and statistics.

#[test]
fn stats_count_three_accesses_two_elided() {
    let p = [
        cast(R1, R1),
        hld(DW, R2, R1, 0),  // elided
        hstx(DW, R1, R2, 8), // elided
        hld(DW, R3, R2, 0),  // guarded: r2 came from the heap
        exit(),
    ];
    let o = full(&p);
    assert_eq!(o.stats.accesses, 3);
    assert_eq!(o.stats.elided, 2);
    assert_eq!(o.stats.unchecked, 0);
    assert_eq!(o.stats.casts, 1);
    assert!(!o.stats.fallback);
    assert_eq!(marks_at(&o, &[0, 1, 2, 3, 4]), [Mark::Cast, E, E, G(R2), Mark::None]);
}

#[test]
fn performance_and_unguarded_modes() {
    let p = [
        hld(DW, R2, R1, 0),  // load
        hstx(DW, R2, R3, 0), // store
        hatomic(DW, R4, R3, 0, 0x01),
        hst(W, R5, 0, 1),
        cast(R6, R6),
        hstx(DW, R6, R3, 0),
        hld(DW, R7, R6, 0),
        exit(),
    ];
    let o = run_pass(&p, &[0], SIZE, Mode::Performance).unwrap();
    assert_eq!(
        marks_at(&o, &[0, 1, 2, 3, 4, 5, 6]),
        [Mark::Unchecked, G(R2), G(R4), G(R5), Mark::Cast, E, Mark::Unchecked]
    );
    assert_eq!((o.stats.accesses, o.stats.elided, o.stats.unchecked, o.stats.casts), (4, 1, 2, 1));
    // Performance: a load does not guard its register.
    let p = [hld(DW, R0, R1, 0), hstx(DW, R1, R0, 0), exit()];
    let o = run_pass(&p, &[0], SIZE, Mode::Performance).unwrap();
    assert_eq!(o.mark(1), G(R1));

    let p = [
        hld(DW, R2, R1, 0),
        hstx(DW, R2, R3, 0),
        hatomic(W, R4, R3, 0, XCHG),
        cast(R6, R6),
        exit(),
    ];
    let o = run_pass(&p, &[0], SIZE, Mode::Unguarded).unwrap();
    assert_eq!(
        marks_at(&o, &[0, 1, 2, 3]),
        [Mark::Unchecked, Mark::Unchecked, Mark::Unchecked, Mark::Cast]
    );
    assert_eq!((o.stats.accesses, o.stats.elided, o.stats.unchecked, o.stats.casts), (0, 0, 3, 1));
}

#[test]
fn heap_sizes_are_validated() {
    let p = [exit()];
    for size in [0, 1, 1 << 15, (1 << 16) + 1, 3 << 20, 1 << 39, u64::MAX] {
        assert_eq!(run_pass(&p, &[0], size, Mode::Full).err(), Some(Error::BadParams), "{size:#x}");
    }
    for k in 16..=38 {
        assert!(run_pass(&p, &[0], 1 << k, Mode::Full).is_ok());
        assert_eq!(guard::heap_mask(1 << k), Ok((1 << k) - 1));
    }
}

#[test]
fn budget_exhaustion_falls_back_to_block_local_analysis() {
    let p = [
        cast(R1, R1),
        hld(DW, R0, R1, 0), // same block as the cast: elided
        jk(JEQ, R0, 0, 0),
        hld(DW, R0, R1, 0), // next block: guarded in the fallback
        exit(),
    ];
    let params = Params { heap_size: SIZE, mode: Mode::Full };
    let mut blocks = vec![BlockState::EMPTY; guard::blocks_needed(&p, &[0])];
    let mut marks = vec![0; p.len()];
    let s = guard::run_with_budget(&p, &[0], &params, &mut blocks, &mut marks, 0).unwrap();
    assert!(s.fallback);
    assert_eq!(Mark::decode(marks[1]), Some(E));
    assert_eq!(Mark::decode(marks[3]), Some(G(R1)));
    let s = guard::run(&p, &[0], &params, &mut blocks, &mut marks).unwrap();
    assert!(!s.fallback);
    assert_eq!(Mark::decode(marks[3]), Some(E));
}

// ---------------------------------------------------------------------------
// Malformed programs.

fn err(p: &[Insn], subs: &[usize]) -> Error {
    run_pass(p, subs, SIZE, Mode::Full).err().expect("refused")
}

#[test]
fn malformed_programs_are_refused() {
    assert_eq!(err(&[], &[0]), Error::EmptyProgram);
    // subprogram lists
    let p = [exit(), exit(), exit()];
    for subs in [&[][..], &[1], &[0, 0], &[0, 2, 1], &[0, 3]] {
        assert_eq!(err(&p, subs), Error::BadSubprogs, "{subs:?}");
    }
    // jumps out of range
    assert_eq!(err(&[ja(1), exit()], &[0]), Error::JumpOutOfRange { pc: 0 });
    assert_eq!(err(&[exit(), ja(-3)], &[0]), Error::JumpOutOfRange { pc: 1 });
    assert_eq!(err(&[jk(JEQ, R1, 0, 5), exit()], &[0]), Error::JumpOutOfRange { pc: 0 });
    assert_eq!(err(&[gotol(7), exit()], &[0]), Error::JumpOutOfRange { pc: 0 });
    // across subprograms
    assert_eq!(err(&[ja(1), exit(), exit()], &[0, 2]), Error::JumpOutOfRange { pc: 0 });
    assert_eq!(err(&[exit(), ja(-2), exit()], &[0, 1]), Error::JumpOutOfRange { pc: 1 });
    // into the second slot of an LD_IMM64, forwards and backwards
    let p = prog(&[&[jk(JEQ, R1, 0, 1)], &ld_imm64(R1, 0, 1), &[exit()]]);
    assert_eq!(err(&p, &[0]), Error::JumpIntoLdImm64 { target: 2 });
    let p = prog(&[&ld_imm64(R1, 0, 1), &[jk(JEQ, R1, 0, -2), exit()]]);
    assert_eq!(err(&p, &[0]), Error::JumpIntoLdImm64 { target: 1 });
    // LD_IMM64 truncated, malformed, or across a subprogram start
    let p = [ld_imm64(R1, 0, 1)[0]];
    assert_eq!(err(&p, &[0]), Error::BadLdImm64 { pc: 0 });
    let mut p = prog(&[&ld_imm64(R1, 0, 1), &[exit()]]);
    p[1].code = 0x18;
    assert_eq!(err(&p, &[0]), Error::BadLdImm64 { pc: 0 });
    let mut p = prog(&[&ld_imm64(R1, 0, 1), &[exit()]]);
    p[1].dst = 1;
    assert_eq!(err(&p, &[0]), Error::BadLdImm64 { pc: 0 });
    let p = prog(&[&ld_imm64(R1, 0, 1), &[exit()]]);
    assert_eq!(err(&p, &[0, 1]), Error::BadLdImm64 { pc: 0 });
    let p = prog(&[&ld_imm64(R1, 9, 1), &[exit()]]);
    assert_eq!(err(&p, &[0]), Error::BadInsn { pc: 0 });
    // falling off the end (of the program and of a subprogram)
    assert_eq!(err(&[movk(R0, 0)], &[0]), Error::FallThrough { pc: 0 });
    assert_eq!(err(&[movk(R0, 0), jk(JEQ, R0, 0, -2)], &[0]), Error::FallThrough { pc: 1 });
    assert_eq!(err(&[movk(R0, 0), call_helper(1), exit()], &[0, 2]), Error::FallThrough { pc: 1 });
    let p = prog(&[&[exit()], &ld_imm64(R1, 0, 1)]);
    assert_eq!(err(&p, &[0]), Error::FallThrough { pc: 1 });
    // calls and subprogram addresses must name subprogram starts
    assert_eq!(err(&[call_sub(0), exit(), exit()], &[0, 2]), Error::BadCallTarget { pc: 0 });
    assert_eq!(err(&[call_sub(5), exit(), exit()], &[0, 2]), Error::BadCallTarget { pc: 0 });
    let mut p = prog(&[&ld_imm64(R1, PSEUDO_FUNC, 0), &[exit(), exit()]]);
    assert_eq!(err(&p, &[0, 3]), Error::BadCallTarget { pc: 0 });
    p[0].imm = 2; // 0 + 1 + 2 = 3
    assert!(run_pass(&p, &[0, 3], SIZE, Mode::Full).is_ok());
}

#[test]
fn unknown_instructions_are_refused() {
    let bad = [
        ins(LD | IMM | W, 0, 0, 0, 0),        // LD without IMM64
        ins(LD | ABS | DW, 0, 0, 0, 0),       // LD_ABS DW
        ins(LD | MEM | W, 0, 0, 0, 0),        // LD class, MEM mode
        ins(LDX | IMM | DW, R1, R2, 0, 0),    // LDX in IMM mode
        ins(LDX | ATOMIC | DW, R1, R2, 0, 0), // LDX atomic
        ins(LDX | PROBE_ATOMIC | DW, R1, R2, 0, 0),
        ins(ST | ATOMIC | DW, R1, 0, 0, 0),    // ST atomic
        ins(ST | PROBE_MEM | DW, R1, 0, 0, 0), // ST in PROBE_MEM mode
        ins(STX | MEMSX | DW, R1, R2, 0, 0),   // STX sign-extending
        ins(STX | PROBE_MEM | W, R1, R2, 0, 0),
        atomic(B, R1, R2, 0, 0x00),   // atomic on a byte
        atomic(DW, R1, R2, 0, 0x100), // unknown atomic op
        hatomic(H, R1, R2, 0, 0x00),
        hatomic(DW, R1, R2, 0, 0x02),
        ins(ALU64 | 0xe0, R1, 0, 0, 0), // unknown ALU op
        ins(ALU | 0xf0 | X, R1, R2, 0, 0),
        ins(JMP32 | CALL, 0, 0, 0, 1),   // JMP32 call
        ins(JMP | CALL | X, 0, 0, 0, 1), // callx
        ins(JMP | CALL, 0, 3, 0, 1),     // unknown call kind
        ins(JMP32 | EXIT, 0, 0, 0, 0),
        ins(JMP32 | JCOND, 0, 0, 0, 0),
        ins(JMP | JCOND, 0, 1, 0, 0),
        ins(JMP | JA | X, 0, 0, 0, 0),
        ins(JMP | 0xf0 | X, 0, 0, 0, 0),
        ins(JMP32 | TAIL_CALL, 0, 0, 0, 0),
        // registers
        movk(12, 0),
        mov(R1, 15),
        movk(R10, 0),        // write to r10
        ldx(DW, R10, R1, 0), // load into r10
        cast(R10, R1),
        hld(DW, R1, R10, 0), // heap access through r10
        hstx(DW, R10, R1, 0),
        hst(DW, R10, 0, 0),
        hatomic(DW, R10, R1, 0, 0),
        hatomic(DW, R1, R10, 0, 0x01), // fetch into r10
        hld(DW, R1, AX, 0),            // heap access through AX
        hstx(DW, AX, R1, 0),
        hst(DW, AX, 0, 0),
        hatomic(DW, AX, R1, 0, 0),
        atomic(DW, R1, R10, 0, XCHG),
    ];
    for b in bad {
        assert_eq!(err(&[b, exit()], &[0]), Error::BadInsn { pc: 0 }, "{b:?}");
    }
    let mut p = prog(&[&ld_imm64(R10, 0, 0), &[exit()]]);
    assert_eq!(err(&p, &[0]), Error::BadInsn { pc: 0 });
    p[0].dst = R1;
    assert!(run_pass(&p, &[0], SIZE, Mode::Full).is_ok());
}

#[test]
fn scratch_and_marks_too_small() {
    let p = [jk(JEQ, R1, 0, 1), jk(JEQ, R1, 0, 0), exit()];
    let params = Params { heap_size: SIZE, mode: Mode::Full };
    // leaders: 0, 1, 2 -> three blocks
    let mut marks = vec![0; 3];
    let mut blocks = vec![BlockState::EMPTY; 2];
    assert_eq!(
        guard::run(&p, &[0], &params, &mut blocks, &mut marks).err(),
        Some(Error::ScratchTooSmall { needed: 3 })
    );
    let mut blocks = vec![BlockState::EMPTY; 3];
    assert!(guard::run(&p, &[0], &params, &mut blocks, &mut marks).is_ok());
    assert!(guard::blocks_needed(&p, &[0]) >= 3);
    let mut marks = vec![0; 2];
    assert_eq!(
        guard::run(&p, &[0], &params, &mut blocks, &mut marks).err(),
        Some(Error::MarksTooSmall)
    );
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = Rng::new(0xbad);
    let codes: Vec<u8> = (0..=255u8).collect();
    let mut ok = 0;
    for case in 0..20_000u64 {
        let n = rng.range(1, 24) as usize;
        let p: Vec<Insn> = (0..n)
            .map(|_| {
                let mut b = rng.next_u64().to_le_bytes();
                if rng.chance(1, 2) {
                    b[1] &= 0x99; // mostly valid registers
                }
                if rng.chance(1, 2) {
                    b[2] = (rng.range(-3, 3) as i8) as u8;
                    b[3] = if b[2] & 0x80 != 0 { 0xff } else { 0 };
                }
                b[0] = rng.pick(&codes);
                Insn::from_raw(b)
            })
            .collect();
        let subs: Vec<usize> = if n > 2 && case % 3 == 0 {
            vec![0, rng.range(1, n as i64 - 1) as usize]
        } else {
            vec![0]
        };
        let mode = rng.pick(&[Mode::Full, Mode::Performance, Mode::Unguarded]);
        if let Ok(o) = run_pass(&p, &subs, SIZE, mode) {
            ok += 1;
            assert!(o.marks.iter().all(|&m| Mark::decode(m).is_some()));
            assert!(o.stats.elided <= o.stats.accesses);
        }
    }
    assert!(ok > 0);
}

// ---------------------------------------------------------------------------
// Typical programs: the analysis must not degrade to "guard everything".

#[test]
fn typical_struct_accesses_are_elided() {
    // struct access after a cast, a few fields, a nested struct via +=.
    let p = [
        cast(R1, R1),
        hld(DW, R2, R1, 0),
        hld(W, R3, R1, 8),
        hstx(DW, R1, R3, 16),
        hst(B, R1, 24, 1),
        hatomic(DW, R1, R3, 32, 0x00),
        addk(R1, 64),
        hld(DW, R4, R1, 0),
        hld(DW, R4, R1, -8),
        spill(-8, R1),
        mov(R0, R4),
        fill(R5, -8),
        hstx(DW, R5, R0, 8),
        exit(),
    ];
    let o = full(&p);
    assert_eq!((o.stats.accesses, o.stats.elided), (8, 8));
}

#[test]
fn typical_linked_list_walk_is_elided() {
    // while (node) { sum += node->val; node = node->next; }
    // r1 = head (user pointer), r0 = sum
    let p = [
        movk(R0, 0),
        jk(JEQ, R1, 0, 5),
        cast(R1, R1),        // loop: node = cast(node)
        hld(DW, R2, R1, 8),  // node->val
        alu64x(ADD, R0, R2), // sum += val
        hld(DW, R1, R1, 0),  // node = node->next
        jk(JNE, R1, 0, -5),  // -> loop
        exit(),
    ];
    let o = full(&p);
    assert_eq!((o.stats.accesses, o.stats.elided), (2, 2));
    // The same without the cast in the loop is guarded on the second visit.
    let p = [
        movk(R0, 0),
        cast(R1, R1),
        hld(DW, R2, R1, 8),
        alu64x(ADD, R0, R2),
        hld(DW, R1, R1, 0),
        jk(JNE, R1, 0, -4),
        exit(),
    ];
    let o = full(&p);
    assert_eq!(marks_at(&o, &[2, 4]), [G(R1), E]);
}

#[test]
fn typical_array_walk_with_recast_and_helper_call() {
    // for (i = 0; i < n; i++) { p = cast(base) + i*8 ... }
    let p = [
        movk(R6, 0),
        cast(R7, R1),        // base, kept in a callee-saved register
        mov(R2, R7),         // loop
        hld(DW, R3, R2, 0),  // elided
        hstx(DW, R2, R3, 8), // elided
        call_helper(5),      // r1..r5 clobbered, r7 survives
        hld(DW, R3, R7, 16), // elided
        hld(DW, R3, R2, 16), // guarded (r2 clobbered)
        addk(R6, 1),
        jk(JLT, R6, 10, -8),
        exit(),
    ];
    let o = full(&p);
    assert_eq!(marks_at(&o, &[3, 4, 6, 7]), [E, E, E, G(R2)]);
    assert_eq!((o.stats.accesses, o.stats.elided), (4, 3));
}

// ---------------------------------------------------------------------------
// apply().

#[test]
fn apply_inserts_guards_and_relocates_jumps() {
    let p = prog(&[
        &[
            jk(JEQ, R1, 0, 2),  // 0 -> 3
            cast(R2, R1),       // 1
            call_sub(5),        // 2 -> 8
            hld(DW, R0, R3, 0), // 3: guarded
            hld(DW, R0, R2, 0), // 4: guarded (r2 clobbered by the call)
        ],
        &ld_imm64(R4, PSEUDO_FUNC, 0), // 5-6 -> 8 (imm patched below)
        &[exit()],                     // 7
        &[jk(JNE, R1, 0, -1), exit()], // 8, 9 (jump to itself)
    ]);
    let mut p = p;
    p[5].imm = 2; // 5 + 1 + 2 = 8
    let o = run_pass(&p, &[0, 8], SIZE, Mode::Full).unwrap();
    assert_eq!(marks_at(&o, &[1, 3, 4]), [Mark::Cast, G(R3), G(R2)]);
    let n = guard::applied_len(&p, &o.marks);
    assert_eq!(n, p.len() + 6);
    let mut out = vec![Insn::new(0, 0, 0, 0, 0); n];
    assert_eq!(
        guard::apply(&p, &o.marks, SIZE, &mut out[..n - 1]).err(),
        Some(Error::OutputTooSmall { needed: n })
    );
    assert_eq!(guard::apply(&p, &o.marks, SIZE, &mut out), Ok(n));
    let s = 64 - 20;
    let expect = prog(&[
        &[
            jk(JEQ, R1, 0, 4), // 0 -> guard of old 3 at new 5
            mov(R2, R1),
            alu64k(LSH, R2, s),
            alu64k(RSH, R2, s),
            call_sub(9), // 4 -> 14
            alu64k(LSH, R3, s),
            alu64k(RSH, R3, s),
            hld(DW, R0, R3, 0),
            alu64k(LSH, R2, s),
            alu64k(RSH, R2, s),
            hld(DW, R0, R2, 0),
        ],
        &ld_imm64(R4, PSEUDO_FUNC, 0),
        &[exit(), jk(JNE, R1, 0, -1), exit()],
    ]);
    let mut expect = expect;
    expect[11].imm = 2; // 11 + 1 + 2 = 14
    assert_eq!(out, expect);
    // a guard mark on a jump cannot be applied
    let mut bad = o.marks.clone();
    bad[0] = Mark::Guard(R1).encode();
    assert_eq!(
        guard::apply(&p, &bad, SIZE, &mut vec![out[0]; n + 2]).err(),
        Some(Error::BadMark { pc: 0 })
    );
}

// ---------------------------------------------------------------------------
// Property test: random programs in an adversarial interpreter.

struct Totals {
    cases: u64,
    runs: u64,
    elided_static: u64,
    accesses_static: u64,
    elided_exec: u64,
    guarded_exec: u64,
    applied_checked: u64,
}

fn property_cases(first: u64, cases: u64, base_seed: u64) -> Totals {
    let mut t = Totals {
        cases: 0,
        runs: 0,
        elided_static: 0,
        accesses_static: 0,
        elided_exec: 0,
        guarded_exec: 0,
        applied_checked: 0,
    };
    for case in first..first + cases {
        let seed = base_seed ^ case.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut rng = Rng::new(seed);
        let prog = gen_program(&mut rng);
        let heap_size = 1u64 << rng.range(16, 38);
        let mode = match rng.below(10) {
            0..=6 => Mode::Full,
            7..=8 => Mode::Performance,
            _ => Mode::Unguarded,
        };
        let o = run_pass(&prog.insns, &prog.subprogs, heap_size, mode).unwrap_or_else(|e| {
            panic!(
                "case {case} (seed {seed:#x}): pass refused a valid program: {e:?}\n{}",
                dump(&prog.insns)
            )
        });
        assert!(!o.stats.fallback, "case {case}: fallback");
        t.elided_static += o.stats.elided as u64;
        t.accesses_static += o.stats.accesses as u64;
        let interp =
            Interp { insns: &prog.insns, marks: Some(&o.marks), heap_size, mode, max_steps: 300 };
        let applied = if case % 4 == 0 {
            let mut out = vec![Insn::new(0, 0, 0, 0, 0); guard::applied_len(&prog.insns, &o.marks)];
            guard::apply(&prog.insns, &o.marks, heap_size, &mut out)
                .unwrap_or_else(|e| panic!("case {case}: apply failed: {e:?}"));
            Some(out)
        } else {
            None
        };
        for run in 0..3u64 {
            let run_seed = seed.wrapping_add(run + 1).rotate_left(17);
            let s = interp.run(&mut Rng::new(run_seed)).unwrap_or_else(|msg| {
                panic!(
                    "case {case} run {run} (seed {seed:#x}, size {heap_size:#x}, {mode:?}): {msg}\n{}\nmarks: {:?}",
                    dump(&prog.insns),
                    o.marks
                )
            });
            t.runs += 1;
            t.elided_exec += s.elided_exec;
            t.guarded_exec += s.guarded_exec;
            if let Some(ap) = &applied {
                // The instrumented program must perform the same heap
                // accesses as the direct interpretation of the marks.
                let plain = Interp { insns: ap, marks: None, heap_size, mode, max_steps: 3 * 300 };
                let a = plain.run(&mut Rng::new(run_seed)).unwrap_or_else(|msg| {
                    panic!("case {case}: applied program: {msg}\n{}", dump(ap))
                });
                assert!(
                    a.trace.len() >= s.trace.len() && a.trace[..s.trace.len()] == s.trace[..],
                    "case {case} run {run}: applied program diverges\n{}\n{}",
                    dump(&prog.insns),
                    dump(ap)
                );
                if s.finished {
                    assert!(a.finished && a.r0 == s.r0 && a.trace == s.trace, "case {case}");
                }
                t.applied_checked += 1;
            }
        }
        t.cases += 1;
    }
    t
}

fn property(total: u64, threads: u64) {
    let base_seed: u64 = std::env::var("KFLEX_GUARD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6b_666c_6578);
    let start = Instant::now();
    let per = total.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|k| std::thread::spawn(move || property_cases(k * per, per, base_seed)))
        .collect();
    let mut sum = Totals {
        cases: 0,
        runs: 0,
        elided_static: 0,
        accesses_static: 0,
        elided_exec: 0,
        guarded_exec: 0,
        applied_checked: 0,
    };
    for h in handles {
        let t = h.join().expect("property thread");
        sum.cases += t.cases;
        sum.runs += t.runs;
        sum.elided_static += t.elided_static;
        sum.accesses_static += t.accesses_static;
        sum.elided_exec += t.elided_exec;
        sum.guarded_exec += t.guarded_exec;
        sum.applied_checked += t.applied_checked;
    }
    eprintln!(
        "guard property: {} programs, {} runs, static {}/{} elided, executed {} elided / {} guarded, {} applied comparisons, {:.1?}",
        sum.cases,
        sum.runs,
        sum.elided_static,
        sum.accesses_static,
        sum.elided_exec,
        sum.guarded_exec,
        sum.applied_checked,
        start.elapsed()
    );
    assert!(sum.cases >= total);
    // The generated programs must exercise elision, not just guards.
    assert!(sum.elided_exec * 10 > sum.guarded_exec, "too few elisions executed");
    assert!(sum.elided_static * 10 > sum.accesses_static);
}

fn threads() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64).min(8)
}

#[test]
fn property_random_programs_stay_in_bounds() {
    let stress = std::env::var("KFLEX_GUARD_STRESS").is_ok_and(|v| v == "1");
    let total = if stress { 1_000_000 } else { 20_000 };
    property(total, threads());
}

#[test]
#[ignore = "stress: 1,000,000 random programs (or set KFLEX_GUARD_STRESS=1)"]
fn property_stress() {
    property(1_000_000, threads());
}
