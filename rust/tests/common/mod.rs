// SPDX-License-Identifier: GPL-2.0

//! Test support for the guard pass: instruction builders, a PRNG, a random
//! program generator and a reference BPF interpreter with an adversarial
//! environment.

#![allow(dead_code)]

use kflex_core::logic::{
    bpf::*,
    geometry,
    guard::{self, BlockState, Error, Mark, Mode, Params, Stats},
};

// ---------------------------------------------------------------------------
// PRNG (splitmix64): deterministic, no dependencies.

#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------
// Instruction builders.

pub const R0: u8 = 0;
pub const R1: u8 = 1;
pub const R2: u8 = 2;
pub const R3: u8 = 3;
pub const R4: u8 = 4;
pub const R5: u8 = 5;
pub const R6: u8 = 6;
pub const R7: u8 = 7;
pub const R8: u8 = 8;
pub const R9: u8 = 9;
pub const R10: u8 = 10;
pub const AX: u8 = 11;

pub fn ins(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn::new(code, dst, src, off, imm)
}

/// Cast to the kernel view: `dst = src & mask`.
pub fn cast(dst: u8, src: u8) -> Insn {
    ins(ALU64 | MOV | X, dst, src, 1, 1)
}
pub fn cast_user(dst: u8, src: u8) -> Insn {
    ins(ALU64 | MOV | X, dst, src, 1, 1 << 16)
}
/// Heap load `dst = *(size *)(src + off)`.
pub fn hld(size: u8, dst: u8, src: u8, off: i16) -> Insn {
    ins(LDX | PROBE_MEM32 | size, dst, src, off, 0)
}
/// Heap store of an immediate.
pub fn hst(size: u8, dst: u8, off: i16, imm: i32) -> Insn {
    ins(ST | PROBE_MEM32 | size, dst, 0, off, imm)
}
/// Heap store of a register.
pub fn hstx(size: u8, dst: u8, src: u8, off: i16) -> Insn {
    ins(STX | PROBE_MEM32 | size, dst, src, off, 0)
}
/// Heap atomic.
pub fn hatomic(size: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    ins(STX | PROBE_ATOMIC | size, dst, src, off, imm)
}
pub fn alu64k(op: u8, dst: u8, imm: i32) -> Insn {
    ins(ALU64 | op | K, dst, 0, 0, imm)
}
pub fn alu64x(op: u8, dst: u8, src: u8) -> Insn {
    ins(ALU64 | op | X, dst, src, 0, 0)
}
pub fn alu32k(op: u8, dst: u8, imm: i32) -> Insn {
    ins(ALU | op | K, dst, 0, 0, imm)
}
pub fn alu32x(op: u8, dst: u8, src: u8) -> Insn {
    ins(ALU | op | X, dst, src, 0, 0)
}
pub fn mov(dst: u8, src: u8) -> Insn {
    alu64x(MOV, dst, src)
}
pub fn movk(dst: u8, imm: i32) -> Insn {
    alu64k(MOV, dst, imm)
}
pub fn addk(dst: u8, imm: i32) -> Insn {
    alu64k(ADD, dst, imm)
}
pub fn subk(dst: u8, imm: i32) -> Insn {
    alu64k(SUB, dst, imm)
}
pub fn ldx(size: u8, dst: u8, src: u8, off: i16) -> Insn {
    ins(LDX | MEM | size, dst, src, off, 0)
}
pub fn stx(size: u8, dst: u8, src: u8, off: i16) -> Insn {
    ins(STX | MEM | size, dst, src, off, 0)
}
pub fn st(size: u8, dst: u8, off: i16, imm: i32) -> Insn {
    ins(ST | MEM | size, dst, 0, off, imm)
}
pub fn atomic(size: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    ins(STX | ATOMIC | size, dst, src, off, imm)
}
/// Spill `src` to `[r10 + off]`.
pub fn spill(off: i16, src: u8) -> Insn {
    stx(DW, R10, src, off)
}
/// Fill `dst` from `[r10 + off]`.
pub fn fill(dst: u8, off: i16) -> Insn {
    ldx(DW, dst, R10, off)
}
pub fn jk(op: u8, dst: u8, imm: i32, off: i16) -> Insn {
    ins(JMP | op | K, dst, 0, off, imm)
}
pub fn jx(op: u8, dst: u8, src: u8, off: i16) -> Insn {
    ins(JMP | op | X, dst, src, off, 0)
}
pub fn ja(off: i16) -> Insn {
    ins(JMP | JA, 0, 0, off, 0)
}
pub fn gotol(imm: i32) -> Insn {
    ins(JMP32 | JA, 0, 0, 0, imm)
}
pub fn may_goto(off: i16) -> Insn {
    ins(JMP | JCOND, 0, 0, off, 0)
}
pub fn call_helper(id: i32) -> Insn {
    ins(JMP | CALL, 0, 0, 0, id)
}
pub fn call_kfunc(id: i32) -> Insn {
    ins(JMP | CALL, 0, PSEUDO_KFUNC_CALL, 0, id)
}
/// Call the subprogram at `pc + 1 + rel`.
pub fn call_sub(rel: i32) -> Insn {
    ins(JMP | CALL, 0, PSEUDO_CALL, 0, rel)
}
pub fn exit() -> Insn {
    ins(JMP | EXIT, 0, 0, 0, 0)
}
pub fn ld_imm64(dst: u8, src: u8, v: u64) -> [Insn; 2] {
    [ins(LD_IMM64, dst, src, 0, v as u32 as i32), ins(0, 0, 0, 0, (v >> 32) as u32 as i32)]
}

// ---------------------------------------------------------------------------
// Running the pass.

pub const SIZE: u64 = 1 << 20;

pub struct Outcome {
    pub marks: Vec<u8>,
    pub stats: Stats,
}

impl Outcome {
    pub fn mark(&self, pc: usize) -> Mark {
        Mark::decode(self.marks[pc]).expect("valid mark")
    }
}

pub fn run_pass(
    insns: &[Insn],
    subprogs: &[usize],
    heap_size: u64,
    mode: Mode,
) -> Result<Outcome, Error> {
    let mut blocks = vec![BlockState::EMPTY; guard::blocks_needed(insns, subprogs)];
    let mut marks = vec![0xffu8; insns.len()];
    let params = Params { heap_size, mode };
    let stats = guard::run(insns, subprogs, &params, &mut blocks, &mut marks)?;
    Ok(Outcome { marks, stats })
}

/// Runs the pass in full mode on a single-subprogram program.
pub fn full(insns: &[Insn]) -> Outcome {
    run_pass(insns, &[0], SIZE, Mode::Full).expect("pass accepts the program")
}

// ---------------------------------------------------------------------------
// Reference interpreter.

/// Base of frame 0's frame pointer; frame k is `FP_BASE + k * 0x1000`.
const FP_BASE: u64 = 0xffff_c900_0001_0000;

struct Frame {
    fp: u64,
    stack: [u8; 512],
    ret: usize,
    saved: [u64; 4],
}

/// One executed heap access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub eff: i128,
    pub width: i128,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub steps: usize,
    pub finished: bool,
    pub r0: u64,
    pub trace: Vec<Access>,
    /// Checked accesses executed whose guard had been elided.
    pub elided_exec: u64,
    /// Checked accesses executed with a guard.
    pub guarded_exec: u64,
}

/// An adversarial 64-bit value.
pub fn wild(rng: &mut Rng, size: u64) -> u64 {
    let small = rng.range(-40000, 40000) as u64;
    let mask = size - 1;
    let high = rng.next_u64() & !mask;
    match rng.below(16) {
        0 => rng.next_u64(),
        1 => small,
        2 => mask.wrapping_add(small),
        3 => size.wrapping_add(rng.range(-16, 16) as u64),
        4 => u64::MAX.wrapping_sub(rng.below(70000)),
        5 => (1u64 << 63).wrapping_add(small),
        6 => rng.next_u64() & mask,
        7 => (rng.next_u64() & mask).wrapping_add(small),
        8 => 0,
        9 => rng.next_u64() as u32 as u64,
        10 => (1u64 << 38).wrapping_add(small),
        // after a guard: exactly the lowest and highest heap offsets
        11 | 12 => high | rng.below(16),
        13 | 14 => high | (mask - rng.below(16)),
        _ => rng.next_u64() << rng.below(64),
    }
}

fn width(size: u8) -> u64 {
    match size {
        W => 4,
        H => 2,
        B => 1,
        _ => 8,
    }
}

fn sext(v: u64, bits: u32) -> u64 {
    let s = 64 - bits;
    (((v << s) as i64) >> s) as u64
}

fn bswap(v: u64, bits: i32) -> u64 {
    match bits {
        16 => (v as u16).swap_bytes() as u64,
        32 => (v as u32).swap_bytes() as u64,
        _ => v.swap_bytes(),
    }
}

fn alu_exec(insn: Insn, d: u64, s: u64) -> u64 {
    let op = insn.code & OP_MASK;
    let alu64 = insn.code & CLASS_MASK == ALU64;
    let x = insn.code & X != 0;
    if op == END {
        let bits = insn.imm;
        if alu64 || x {
            // bswap / to big endian
            return bswap(d, bits);
        }
        // to little endian on a little-endian host: truncate
        return match bits {
            16 => d as u16 as u64,
            32 => d as u32 as u64,
            _ => d,
        };
    }
    if alu64 {
        match op {
            ADD => d.wrapping_add(s),
            SUB => d.wrapping_sub(s),
            MUL => d.wrapping_mul(s),
            DIV => {
                if insn.off == 1 {
                    if s == 0 {
                        0
                    } else {
                        (d as i64).wrapping_div(s as i64) as u64
                    }
                } else {
                    d.checked_div(s).unwrap_or(0)
                }
            }
            MOD => {
                if insn.off == 1 {
                    if s == 0 {
                        d
                    } else {
                        (d as i64).wrapping_rem(s as i64) as u64
                    }
                } else if s == 0 {
                    d
                } else {
                    d % s
                }
            }
            OR => d | s,
            AND => d & s,
            LSH => d << (s & 63),
            RSH => d >> (s & 63),
            ARSH => ((d as i64) >> (s & 63)) as u64,
            NEG => d.wrapping_neg(),
            XOR => d ^ s,
            MOV => {
                if x {
                    match insn.off {
                        8 => sext(s, 8),
                        16 => sext(s, 16),
                        32 => sext(s, 32),
                        _ => s,
                    }
                } else {
                    s
                }
            }
            _ => unreachable!("op {op:#x}"),
        }
    } else {
        let (d, s) = (d as u32, s as u32);
        let r: u32 = match op {
            ADD => d.wrapping_add(s),
            SUB => d.wrapping_sub(s),
            MUL => d.wrapping_mul(s),
            DIV => {
                if insn.off == 1 {
                    if s == 0 {
                        0
                    } else {
                        (d as i32).wrapping_div(s as i32) as u32
                    }
                } else {
                    d.checked_div(s).unwrap_or(0)
                }
            }
            MOD => {
                if insn.off == 1 {
                    if s == 0 {
                        d
                    } else {
                        (d as i32).wrapping_rem(s as i32) as u32
                    }
                } else if s == 0 {
                    d
                } else {
                    d % s
                }
            }
            OR => d | s,
            AND => d & s,
            LSH => d << (s & 31),
            RSH => d >> (s & 31),
            ARSH => ((d as i32) >> (s & 31)) as u32,
            NEG => d.wrapping_neg(),
            XOR => d ^ s,
            MOV => {
                if x {
                    match insn.off {
                        8 => sext(s as u64, 8) as u32,
                        16 => sext(s as u64, 16) as u32,
                        _ => s,
                    }
                } else {
                    s
                }
            }
            _ => unreachable!("op {op:#x}"),
        };
        r as u64
    }
}

pub struct Interp<'a> {
    pub insns: &'a [Insn],
    /// Marks of the pass; `None` for a program already instrumented by
    /// `guard::apply` (then accesses are only traced).
    pub marks: Option<&'a [u8]>,
    pub heap_size: u64,
    pub mode: Mode,
    pub max_steps: usize,
}

impl Interp<'_> {
    /// The frame byte at `addr`, if `addr` is inside a frame.
    fn stack_byte(frames: &mut [Frame], addr: u64) -> Option<&mut u8> {
        frames.iter_mut().find_map(|f| {
            let lo = f.fp - 512;
            if (lo..f.fp).contains(&addr) {
                f.stack.get_mut((addr - lo) as usize)
            } else {
                None
            }
        })
    }

    /// Byte-wise: bytes inside a frame come from it, others are random
    /// (memory the analysis knows nothing about).
    fn mem_read(frames: &mut [Frame], rng: &mut Rng, size: u64, addr: u64, w: u64) -> u64 {
        if (0..w).all(|k| Self::stack_byte(frames, addr.wrapping_add(k)).is_none()) {
            return wild(rng, size);
        }
        let mut b = [0u8; 8];
        for (k, byte) in b.iter_mut().take(w as usize).enumerate() {
            *byte = match Self::stack_byte(frames, addr.wrapping_add(k as u64)) {
                Some(x) => *x,
                None => rng.next_u64() as u8,
            };
        }
        u64::from_le_bytes(b)
    }

    /// Byte-wise: bytes that fall inside a frame are written.
    fn mem_write(frames: &mut [Frame], addr: u64, w: u64, v: u64) {
        for (k, byte) in v.to_le_bytes().iter().take(w as usize).enumerate() {
            if let Some(x) = Self::stack_byte(frames, addr.wrapping_add(k as u64)) {
                *x = *byte;
            }
        }
    }

    fn scribble(frames: &mut [Frame], rng: &mut Rng) {
        let k = rng.below(frames.len() as u64) as usize;
        let f = &mut frames[k];
        if rng.chance(1, 3) {
            for b in f.stack.iter_mut() {
                *b = rng.next_u64() as u8;
            }
        } else {
            let at = rng.below(512) as usize;
            let n = (rng.below(16) as usize + 1).min(512 - at);
            for b in &mut f.stack[at..at + n] {
                *b = rng.next_u64() as u8;
            }
        }
    }

    /// Runs the program from instruction 0 in an adversarial environment
    /// drawn from `rng`. Errors describe a safety violation.
    pub fn run(&self, rng: &mut Rng) -> Result<Summary, String> {
        let size = self.heap_size;
        let mask = size - 1;
        let mut regs = [0u64; 12];
        for r in regs.iter_mut() {
            *r = wild(rng, size);
        }
        let mut frames = vec![Frame { fp: FP_BASE, stack: [0; 512], ret: 0, saved: [0; 4] }];
        for b in frames[0].stack.iter_mut() {
            *b = rng.next_u64() as u8;
        }
        if rng.chance(1, 2) {
            // plant guard-looking and extreme values in the stack
            for slot in 0..64 {
                if rng.chance(1, 3) {
                    let v = wild(rng, size);
                    frames[0].stack[slot * 8..slot * 8 + 8].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        regs[10] = FP_BASE;
        let mut sum = Summary::default();
        let mut pc = 0usize;
        let n = self.insns.len();
        loop {
            if sum.steps >= self.max_steps {
                return Ok(sum);
            }
            sum.steps += 1;
            let insn = *self.insns.get(pc).ok_or_else(|| format!("pc {pc} out of range"))?;
            let (dst, src, off, imm) =
                (insn.dst as usize, insn.src as usize, insn.off as i64, insn.imm);
            let class = insn.code & CLASS_MASK;
            let size_f = insn.code & SIZE_MASK;
            let mode_f = insn.code & MODE_MASK;
            let op = insn.code & OP_MASK;
            let mut next = pc + 1;
            let heap = matches!(
                (class, mode_f),
                (LDX, PROBE_MEM32) | (ST, PROBE_MEM32) | (STX, PROBE_MEM32) | (STX, PROBE_ATOMIC)
            );
            if heap {
                let load = class == LDX;
                let addr = if load { src } else { dst };
                let w = width(size_f) as i128;
                let mut guarded = false;
                let required = match self.mode {
                    Mode::Full => true,
                    Mode::Performance => !load,
                    Mode::Unguarded => false,
                };
                if let Some(marks) = self.marks {
                    let m = Mark::decode(marks[pc]);
                    if required {
                        match m {
                            Some(Mark::Guard(r)) if r as usize == addr => {
                                regs[addr] &= mask;
                                guarded = true;
                            }
                            Some(Mark::Elided) => {}
                            other => return Err(format!("pc {pc}: access marked {other:?}")),
                        }
                    } else if m != Some(Mark::Unchecked) {
                        return Err(format!("pc {pc}: unchecked access marked {m:?}"));
                    }
                }
                let eff = regs[addr] as i64 as i128 + off as i128;
                sum.trace.push(Access { eff, width: w });
                if self.marks.is_some() && required {
                    let lo = -(geometry::GUARD_LO as i128);
                    let hi = if guarded {
                        sum.guarded_exec += 1;
                        size as i128 + geometry::GUARD_HI as i128 - w
                    } else {
                        sum.elided_exec += 1;
                        size as i128 + 32768 - w
                    };
                    if eff < lo || eff > hi {
                        return Err(format!(
                            "pc {pc}: {} access at offset {eff} (reg {:#x} + {off}) outside [{lo}, {hi}] (size {size:#x})",
                            if guarded { "guarded" } else { "ELIDED" },
                            regs[addr]
                        ));
                    }
                }
                match class {
                    LDX => regs[dst] = wild(rng, size),
                    STX if mode_f == PROBE_ATOMIC => {
                        if imm == CMPXCHG {
                            regs[0] = wild(rng, size);
                        } else if imm & FETCH != 0 {
                            regs[src] = wild(rng, size);
                        }
                    }
                    _ => {}
                }
                pc = next;
                continue;
            }
            match class {
                ALU | ALU64 => {
                    if class == ALU64 && op == MOV && insn.code & X != 0 && insn.off == 1 {
                        if imm == 1 {
                            if let Some(marks) = self.marks {
                                if Mark::decode(marks[pc]) != Some(Mark::Cast) {
                                    return Err(format!("pc {pc}: cast not marked"));
                                }
                            }
                            regs[dst] = regs[src] & mask;
                        } else {
                            // cast to the user view: some unknown value
                            regs[dst] = wild(rng, size);
                        }
                    } else {
                        let s = if insn.code & X != 0 {
                            regs[src]
                        } else if class == ALU64 {
                            imm as i64 as u64
                        } else {
                            imm as u32 as u64
                        };
                        regs[dst] = alu_exec(insn, regs[dst], s);
                    }
                }
                LD => {
                    if insn.code == LD_IMM64 {
                        let hi = self.insns[pc + 1].imm as u32 as u64;
                        regs[dst] = if insn.src == 0 {
                            (hi << 32) | imm as u32 as u64
                        } else {
                            wild(rng, size)
                        };
                        next = pc + 2;
                    } else {
                        // LD_ABS / LD_IND
                        for r in regs.iter_mut().take(6) {
                            *r = wild(rng, size);
                        }
                        if rng.chance(1, 8) {
                            sum.finished = true;
                            sum.r0 = 0;
                            return Ok(sum);
                        }
                    }
                }
                LDX => {
                    let w = width(size_f);
                    let a = regs[src].wrapping_add(off as u64);
                    let v = match mode_f {
                        MEM => Self::mem_read(&mut frames, rng, size, a, w),
                        MEMSX => sext(Self::mem_read(&mut frames, rng, size, a, w), w as u32 * 8),
                        _ => wild(rng, size),
                    };
                    regs[dst] = v;
                }
                ST if insn.code == ST | NOSPEC => {}
                ST | STX => {
                    let w = width(size_f);
                    let a = regs[dst].wrapping_add(off as u64);
                    if mode_f == ATOMIC {
                        let old = Self::mem_read(&mut frames, rng, size, a, w);
                        let sv = regs[src];
                        let (new, fetched) = match imm & !FETCH {
                            0x00 => (old.wrapping_add(sv), old),
                            0x40 => (old | sv, old),
                            0x50 => (old & sv, old),
                            0xa0 => (old ^ sv, old),
                            0xe0 => (sv, old),
                            0xf0 => {
                                let cmp = if w == 4 { regs[0] as u32 as u64 } else { regs[0] };
                                (if old == cmp { sv } else { old }, old)
                            }
                            _ => return Err(format!("pc {pc}: bad atomic")),
                        };
                        Self::mem_write(&mut frames, a, w, new);
                        if imm == CMPXCHG {
                            regs[0] = fetched;
                        } else if imm & FETCH != 0 {
                            regs[src] = fetched;
                        }
                    } else {
                        let v = if class == STX { regs[src] } else { imm as i64 as u64 };
                        Self::mem_write(&mut frames, a, w, v);
                    }
                }
                JMP | JMP32 => match op {
                    JA => {
                        let d = if class == JMP32 { imm as i64 } else { off };
                        next = (pc as i64 + 1 + d) as usize;
                    }
                    CALL | TAIL_CALL => {
                        if op == CALL && insn.src == PSEUDO_CALL && frames.len() < 8 {
                            let fp = FP_BASE + frames.len() as u64 * 0x1000;
                            let mut f = Frame {
                                fp,
                                stack: [0; 512],
                                ret: pc + 1,
                                saved: [regs[6], regs[7], regs[8], regs[9]],
                            };
                            for b in f.stack.iter_mut() {
                                *b = rng.next_u64() as u8;
                            }
                            frames.push(f);
                            regs[10] = fp;
                            next = (pc as i64 + 1 + imm as i64) as usize;
                        } else {
                            for r in regs.iter_mut().take(6) {
                                *r = wild(rng, size);
                            }
                            regs[11] = wild(rng, size);
                            if rng.chance(1, 2) {
                                Self::scribble(&mut frames, rng);
                            }
                        }
                    }
                    EXIT => {
                        if frames.len() == 1 {
                            sum.finished = true;
                            sum.r0 = regs[0];
                            return Ok(sum);
                        }
                        let f = frames.pop().unwrap();
                        regs[6..10].copy_from_slice(&f.saved);
                        for r in regs.iter_mut().take(6).skip(1) {
                            *r = wild(rng, size);
                        }
                        regs[11] = wild(rng, size);
                        regs[10] = frames.last().unwrap().fp;
                        if rng.chance(1, 4) {
                            Self::scribble(&mut frames, rng);
                        }
                        next = f.ret;
                    }
                    _ => {
                        // conditional jump or may_goto: adversarial direction
                        if rng.chance(1, 2) {
                            next = (pc as i64 + 1 + off) as usize;
                        }
                    }
                },
                _ => return Err(format!("pc {pc}: unsupported class")),
            }
            if next >= n {
                return Err(format!("pc {pc}: control leaves the program"));
            }
            pc = next;
        }
    }
}

// ---------------------------------------------------------------------------
// Random program generator.

#[derive(Clone, Copy)]
enum Item {
    One(Insn),
    Two([Insn; 2]),
    /// Jump to the start of item `target` of the same subprogram; `imm`
    /// selects the `imm` field (gotol) instead of `off`.
    Jump {
        insn: Insn,
        target: usize,
        imm: bool,
    },
    /// Call subprogram `sub`.
    Call {
        sub: usize,
    },
    /// `LD_IMM64` of the address of subprogram `sub`.
    FuncAddr {
        dst: u8,
        sub: usize,
    },
}

impl Item {
    fn len(&self) -> usize {
        match self {
            Item::Two(_) | Item::FuncAddr { .. } => 2,
            _ => 1,
        }
    }
}

pub struct Program {
    pub insns: Vec<Insn>,
    pub subprogs: Vec<usize>,
}

fn any_reg(rng: &mut Rng) -> u8 {
    if rng.chance(1, 60) {
        AX
    } else {
        rng.below(10) as u8
    }
}

fn reg(rng: &mut Rng) -> u8 {
    // bias towards a few registers so values flow between instructions
    if rng.chance(2, 3) {
        rng.pick(&[R0, R1, R2, R6, R7])
    } else {
        any_reg(rng)
    }
}

/// `r`, or `r1` for AX: AX never addresses the heap (the pass refuses it, see
/// `guard::MAX_GUARD_REG`), though programs may compute with it.
fn heap_reg(r: u8) -> u8 {
    if r == AX {
        R1
    } else {
        r
    }
}

fn heap_off(rng: &mut Rng) -> i16 {
    match rng.below(8) {
        0..=2 => rng.range(-64, 64) as i16,
        3 => {
            rng.pick(&[-32768, -32767, -32760, 32750, 32751, 32758, 32759, 32760, 32767, 0, 8, -8])
        }
        4 => rng.range(32700, 32767) as i16,
        5 => rng.range(-32768, -32700) as i16,
        _ => rng.next_u64() as i16,
    }
}

fn add_imm(rng: &mut Rng) -> i32 {
    match rng.below(8) {
        0..=2 => rng.range(-8, 8) as i32 * 8,
        3 => rng.pick(&[32759, 32758, 32760, 32768, -32768, -32769, 65536, -65536, 1, -1]),
        4 => rng.pick(&[i32::MIN, i32::MAX, i32::MIN + 1, i32::MAX - 1, 1 << 30, -(1 << 30)]),
        5 => rng.range(-70000, 70000) as i32,
        _ => rng.next_u64() as i32,
    }
}

fn size_f(rng: &mut Rng) -> u8 {
    rng.pick(&[B, H, W, DW, DW])
}

fn atomic_imm(rng: &mut Rng) -> i32 {
    rng.pick(&[0x00, 0x01, 0x40, 0x41, 0x50, 0x51, 0xa0, 0xa1, XCHG, CMPXCHG])
}

fn stack_off(rng: &mut Rng) -> i16 {
    match rng.below(9) {
        0..=5 => -(rng.range(1, 4) as i16) * 8,
        6 => -(rng.range(1, 64) as i16) * 8,
        // outside the frame, or straddling its lower end
        7 => rng.pick(&[-520, -516, -513, -509, -600, 0, 4, 8, 100, -1000]),
        _ => rng.range(-40, -1) as i16,
    }
}

/// `cast; add ...; access` with `c + off` at the edges of the window,
/// sometimes reached through additions whose 32-bit sum wraps.
fn window_edge(rng: &mut Rng, out: &mut Vec<Item>) {
    let r = heap_reg(reg(rng));
    let t: i64 = rng.pick(&[
        -32770, -32769, -32768, -32767, 32756, 32757, 32758, 32759, 32760, 32766, 32767, 32768,
    ]);
    out.push(Item::One(cast(r, if rng.chance(1, 2) { r } else { reg(rng) })));
    let off = rng.range(-32768.max(t - 65536), 32767.min(t + 65536)) as i16;
    let mut c = t - off as i64;
    if rng.chance(1, 4) {
        // wrap: i32::MAX + i32::MAX + (c + 2) = c + 2^32
        out.push(Item::One(addk(r, i32::MAX)));
        out.push(Item::One(addk(r, i32::MAX)));
        c += 2;
    }
    if rng.chance(1, 6) {
        // 32-bit addition: the result is not a guarded value
        if rng.chance(1, 2) {
            out.push(Item::One(alu32k(ADD, r, c as i32)));
        } else {
            let k = reg(rng);
            out.push(Item::One(movk(k, c as i32)));
            out.push(Item::One(alu32x(ADD, r, k)));
        }
    } else if rng.chance(1, 3) {
        let k = reg(rng);
        if rng.chance(1, 2) {
            out.push(Item::One(movk(k, c as i32)));
        } else {
            // a 64-bit constant, or a pseudo load (map address): not a constant
            let src = if rng.chance(2, 3) { 0 } else { rng.pick(&[1, 2, 5, 6]) };
            out.push(Item::Two(ld_imm64(k, src, c as u64)));
        }
        out.push(Item::One(alu64x(ADD, r, k)));
    } else {
        out.push(Item::One(addk(r, c as i32)));
    }
    if rng.chance(1, 3) {
        out.push(Item::One(spill(-8, r)));
        out.push(Item::One(fill(r, -8)));
    }
    let a = match rng.below(4) {
        0 => hld(DW, reg(rng), r, off),
        1 => hstx(DW, r, reg(rng), off),
        2 => hst(size_f(rng), r, off, 0),
        _ => hatomic(DW, r, reg(rng), off, atomic_imm(rng)),
    };
    out.push(Item::One(a));
}

/// A guarded value spilled, something in between, filled and used.
fn spill_fill(rng: &mut Rng, out: &mut Vec<Item>) {
    let r = reg(rng);
    // the lowest slot, so that stores straddling the frame's end hit it
    let slot = rng.pick(&[-8, -16, -24, -512]);
    out.push(Item::One(cast(r, r)));
    out.push(Item::One(spill(slot, r)));
    let clobber = match rng.below(8) {
        0 => stx(size_f(rng), R10, reg(rng), slot + rng.range(-7, 7) as i16),
        1 => st(size_f(rng), R10, slot + rng.range(-7, 7) as i16, rng.next_u64() as i32),
        2 => call_helper(1),
        3 => atomic(DW, R10, reg(rng), slot, atomic_imm(rng)),
        4 => hstx(DW, heap_reg(reg(rng)), reg(rng), 0),
        _ => movk(r, 0),
    };
    if rng.chance(1, 2) {
        let p = reg(rng);
        out.push(Item::One(mov(p, R10)));
        out.push(Item::One(stx(DW, p, reg(rng), slot)));
    } else {
        out.push(Item::One(clobber));
    }
    let f = heap_reg(reg(rng));
    let fill_insn = match rng.below(6) {
        0 => ldx(size_f(rng), f, R10, slot + rng.range(-7, 7) as i16),
        1 => ins(LDX | MEMSX | rng.pick(&[B, H, W]), f, R10, slot, 0),
        _ => fill(f, slot),
    };
    out.push(Item::One(fill_insn));
    out.push(Item::One(hld(DW, reg(rng), f, heap_off(rng))));
}

fn gen_item(rng: &mut Rng, nsub: usize, this: usize, len: usize, out: &mut Vec<Item>) {
    let tgt = |rng: &mut Rng| rng.below(len as u64 + 1) as usize;
    let one = |i: Insn| Item::One(i);
    match rng.below(112) {
        100..=105 => window_edge(rng, out),
        106..=111 => spill_fill(rng, out),
        0..=11 => {
            let d = reg(rng);
            let s = if rng.chance(1, 2) { d } else { reg(rng) };
            out.push(one(cast(d, s)));
        }
        12..=21 => {
            let a = heap_reg(reg(rng));
            out.push(one(hld(size_f(rng), reg(rng), a, heap_off(rng))));
        }
        22..=25 => {
            let a = heap_reg(reg(rng));
            out.push(one(hstx(size_f(rng), a, reg(rng), heap_off(rng))));
        }
        26..=27 => {
            let a = heap_reg(reg(rng));
            out.push(one(hst(size_f(rng), a, heap_off(rng), add_imm(rng))));
        }
        28..=29 => {
            let a = heap_reg(reg(rng));
            let sz = rng.pick(&[W, DW]);
            out.push(one(hatomic(sz, a, reg(rng), heap_off(rng), atomic_imm(rng))));
        }
        30..=37 => {
            let op = rng.pick(&[ADD, SUB]);
            out.push(one(alu64k(op, reg(rng), add_imm(rng))));
        }
        38..=41 => {
            let op = rng.pick(&[ADD, SUB]);
            out.push(one(alu64x(op, reg(rng), reg(rng))));
        }
        42..=44 => out.push(one(movk(reg(rng), add_imm(rng)))),
        45..=46 => out.push(one(mov(reg(rng), reg(rng)))),
        47 => out.push(one(mov(reg(rng), R10))),
        48..=50 => {
            let op = rng.pick(&[MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR, ARSH, END]);
            let mut i = if rng.chance(1, 2) {
                alu64k(op, reg(rng), rng.range(-3, 70) as i32)
            } else {
                alu64x(op, reg(rng), reg(rng))
            };
            if op == END {
                i = ins(ALU64 | END, reg(rng), 0, 0, rng.pick(&[16, 32, 64]));
            }
            if matches!(op, DIV | MOD) && rng.chance(1, 3) {
                i.off = 1;
            }
            out.push(one(i));
        }
        51..=53 => {
            let op = rng.pick(&[ADD, SUB, MOV, MOV, AND, OR, LSH, RSH, ARSH, XOR, MUL, NEG]);
            let i = if rng.chance(1, 2) {
                alu32k(op, reg(rng), add_imm(rng))
            } else {
                alu32x(op, reg(rng), reg(rng))
            };
            out.push(one(i));
        }
        54..=55 => {
            let d = reg(rng);
            let s = reg(rng);
            let i = match rng.below(4) {
                0 => cast_user(d, s),
                1 => ins(ALU64 | MOV | X, d, s, rng.pick(&[8, 16, 32]), 0),
                2 => ins(ALU | MOV | X, d, s, rng.pick(&[8, 16]), 0),
                _ => ins(ALU | END | rng.pick(&[K, X]), d, 0, 0, rng.pick(&[16, 32, 64])),
            };
            out.push(one(i));
        }
        56..=61 => out.push(one(spill(stack_off(rng), reg(rng)))),
        62..=67 => out.push(one(fill(reg(rng), stack_off(rng)))),
        68..=69 => {
            let i = if rng.chance(1, 2) {
                stx(size_f(rng), R10, reg(rng), stack_off(rng))
            } else {
                ldx(size_f(rng), reg(rng), R10, stack_off(rng))
            };
            out.push(one(i));
        }
        70 => out.push(one(st(size_f(rng), R10, stack_off(rng), add_imm(rng)))),
        71..=72 => {
            // store through a copy of the frame pointer
            let p = reg(rng);
            out.push(one(mov(p, R10)));
            if rng.chance(1, 2) {
                out.push(one(addk(p, -(rng.range(1, 64) as i32) * 8)));
            }
            out.push(one(stx(size_f(rng), p, reg(rng), -(rng.range(0, 8) as i16) * 8)));
        }
        73 => {
            let i = if rng.chance(1, 2) {
                stx(size_f(rng), reg(rng), reg(rng), rng.range(-64, 64) as i16)
            } else {
                ldx(size_f(rng), reg(rng), reg(rng), rng.range(-64, 64) as i16)
            };
            out.push(one(i));
        }
        74 => {
            let base = if rng.chance(1, 2) { R10 } else { reg(rng) };
            let o = if base == R10 { -(rng.range(1, 8) as i16) * 8 } else { 0 };
            let sz = rng.pick(&[W, DW]);
            out.push(one(atomic(sz, base, reg(rng), o, atomic_imm(rng))));
        }
        75..=78 => {
            let i = match rng.below(3) {
                0 => call_helper(rng.range(1, 200) as i32),
                1 => call_kfunc(rng.next_u64() as i32),
                _ => ins(JMP | TAIL_CALL, 0, 0, 0, 0),
            };
            out.push(one(i));
        }
        79..=81 => {
            if nsub > 1 {
                let mut s = rng.below(nsub as u64) as usize;
                if s == this {
                    s = (s + 1) % nsub;
                }
                out.push(Item::Call { sub: s });
            } else {
                out.push(one(call_helper(1)));
            }
        }
        82..=84 => {
            let v = match rng.below(4) {
                0 => rng.range(-64, 64) as u64,
                1 => rng.next_u64(),
                2 => rng.range(32000, 33000) as u64,
                _ => 1 << rng.below(64),
            };
            let src = if rng.chance(3, 4) { 0 } else { rng.pick(&[1, 2, 3, 5, 6]) };
            out.push(Item::Two(ld_imm64(reg(rng), src, v)));
        }
        85 => {
            if nsub > 1 {
                let s = rng.below(nsub as u64) as usize;
                out.push(Item::FuncAddr { dst: reg(rng), sub: s });
            }
        }
        86..=93 => {
            let op = rng.pick(&[JEQ, JGT, JGE, JSET, JNE, JSGT, JSGE, JLT, JLE, JSLT, JSLE]);
            let class = rng.pick(&[JMP, JMP, JMP32]);
            let mut i = if rng.chance(1, 2) {
                ins(class | op | K, reg(rng), 0, 0, rng.range(-5, 5) as i32)
            } else {
                ins(class | op | X, reg(rng), reg(rng), 0, 0)
            };
            i.off = 0;
            out.push(Item::Jump { insn: i, target: tgt(rng), imm: false });
        }
        94..=95 => out.push(Item::Jump { insn: ja(0), target: tgt(rng), imm: false }),
        96 => out.push(Item::Jump { insn: gotol(0), target: tgt(rng), imm: true }),
        97 => out.push(Item::Jump { insn: may_goto(0), target: tgt(rng), imm: false }),
        98 => out.push(one(if rng.chance(1, 2) { exit() } else { ins(ST | NOSPEC, 0, 0, 0, 0) })),
        99 => {
            let sz = rng.pick(&[B, H, W]);
            let i = if rng.chance(1, 2) {
                ins(LD | ABS | sz, 0, 0, 0, rng.range(0, 100) as i32)
            } else {
                ins(LD | IND | sz, 0, reg(rng), 0, rng.range(0, 100) as i32)
            };
            out.push(one(i));
        }
        _ => unreachable!(),
    }
}

/// Generates a valid random program (every jump inside its subprogram,
/// every subprogram ends with `exit`).
pub fn gen_program(rng: &mut Rng) -> Program {
    let nsub = if rng.chance(1, 3) { rng.range(2, 3) as usize } else { 1 };
    let mut subs: Vec<Vec<Item>> = Vec::new();
    for s in 0..nsub {
        let len = rng.range(3, 45) as usize;
        let mut items = Vec::new();
        while items.len() < len {
            gen_item(rng, nsub, s, len, &mut items);
        }
        items.push(Item::One(exit()));
        // jump targets were drawn in 0..=len; clamp to the final length
        let last = items.len() - 1;
        for it in items.iter_mut() {
            if let Item::Jump { target, .. } = it {
                *target = (*target).min(last);
            }
        }
        subs.push(items);
    }
    // layout
    let mut starts = Vec::new();
    let mut item_pc: Vec<Vec<usize>> = Vec::new();
    let mut pc = 0;
    for items in &subs {
        starts.push(pc);
        let mut v = Vec::new();
        for it in items {
            v.push(pc);
            pc += it.len();
        }
        item_pc.push(v);
    }
    let mut insns = Vec::with_capacity(pc);
    for (s, items) in subs.iter().enumerate() {
        for (k, it) in items.iter().enumerate() {
            let here = item_pc[s][k] as i64;
            match *it {
                Item::One(i) => insns.push(i),
                Item::Two(p) => insns.extend_from_slice(&p),
                Item::Jump { mut insn, target, imm } => {
                    let d = item_pc[s][target] as i64 - (here + 1);
                    if imm {
                        insn.imm = d as i32;
                    } else {
                        insn.off = d as i16;
                    }
                    insns.push(insn);
                }
                Item::Call { sub } => {
                    insns.push(call_sub((starts[sub] as i64 - (here + 1)) as i32));
                }
                Item::FuncAddr { dst, sub } => {
                    let mut p = ld_imm64(dst, PSEUDO_FUNC, 0);
                    p[0].imm = (starts[sub] as i64 - (here + 1)) as i32;
                    insns.extend_from_slice(&p);
                }
            }
        }
    }
    Program { insns, subprogs: starts }
}

pub fn dump(insns: &[Insn]) -> String {
    let mut s = String::new();
    for (pc, i) in insns.iter().enumerate() {
        s.push_str(&format!(
            "{pc:4}: code={:#04x} dst={} src={} off={} imm={}\n",
            i.code, i.dst, i.src, i.off, i.imm
        ));
    }
    s
}
