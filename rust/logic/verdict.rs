// SPDX-License-Identifier: GPL-2.0

//! What a cancelled run returns: the default verdict of each program type,
//! and the check of a program's own choice (`kflex_cancel_verdict` in its
//! read-only data) against the values its hook accepts.
//!
//! The default lets the event go on as if no program were attached where the
//! hook has such a value (`XDP_PASS`, `TC_ACT_OK`, `SK_PASS`, a cgroup hook's
//! "allow"), returns 0 where the value is not a decision (tracing), and makes
//! `BPF_PROG_TEST_RUN` of a `SEC("syscall")` program return `-ECANCELED`, so
//! that the caller can tell a cancelled run from one that finished. A stream
//! parser has no such value (any length it returns frames the stream): a
//! program with cancellation points cannot be one.
//!
//! Program types and attach types are the UAPI values of `enum bpf_prog_type`
//! and `enum bpf_attach_type` (the kernel build checks them against its
//! bindings).

/// `enum bpf_prog_type` values the table names.
pub mod prog_type {
    pub const SCHED_CLS: u32 = 3;
    pub const SCHED_ACT: u32 = 4;
    pub const XDP: u32 = 6;
    pub const CGROUP_SKB: u32 = 8;
    pub const CGROUP_SOCK: u32 = 9;
    pub const SK_SKB: u32 = 14;
    pub const CGROUP_DEVICE: u32 = 15;
    pub const SK_MSG: u32 = 16;
    pub const CGROUP_SOCK_ADDR: u32 = 18;
    pub const CGROUP_SYSCTL: u32 = 23;
    pub const CGROUP_SOCKOPT: u32 = 25;
    pub const LSM: u32 = 29;
    pub const SYSCALL: u32 = 31;
}

/// `enum bpf_attach_type` values the table names.
pub mod attach_type {
    pub const SK_SKB_STREAM_PARSER: u32 = 4;
}

const XDP_PASS: i32 = 2;
const XDP_REDIRECT: i32 = 4;
const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_OK: i32 = 0;
const TC_ACT_TRAP: i32 = 8;
const SK_PASS: i32 = 1;
const EPERM: i32 = 1;
const ECANCELED: i32 = 125;
const MAX_ERRNO: i32 = 4095;

/// The verdict of a cancelled run of one program type and the return values
/// its hook accepts (as a signed 32-bit value; `None`: any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub default: i32,
    pub range: Option<(i32, i32)>,
}

/// Why a program cannot get a verdict for its cancelled runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The hook has no value that lets the event go on (stream parser).
    NoDefault,
    /// The program's override is not a value its hook accepts.
    OutOfRange { min: i32, max: i32 },
}

/// The rule of programs of `prog_type` attached as `attach_type`; `None`
/// when a cancelled run has nothing safe to return.
pub fn rule(prog_type: u32, attach_type: u32) -> Option<Rule> {
    use self::prog_type as t;
    let (default, range) = match prog_type {
        t::XDP => (XDP_PASS, Some((0, XDP_REDIRECT))),
        t::SCHED_CLS | t::SCHED_ACT => (TC_ACT_OK, Some((TC_ACT_UNSPEC, TC_ACT_TRAP))),
        t::SK_SKB if attach_type == attach_type::SK_SKB_STREAM_PARSER => return None,
        t::SK_SKB | t::SK_MSG => (SK_PASS, Some((0, SK_PASS))),
        t::CGROUP_SKB
        | t::CGROUP_SOCK
        | t::CGROUP_DEVICE
        | t::CGROUP_SOCK_ADDR
        | t::CGROUP_SYSCTL
        | t::CGROUP_SOCKOPT => (1, Some((0, 1))),
        t::LSM => (-EPERM, Some((-MAX_ERRNO, 0))),
        t::SYSCALL => (-ECANCELED, None),
        _ => (0, None),
    };
    Some(Rule { default, range })
}

/// The verdict a cancelled run of the program returns: its override when it
/// has one the hook accepts, else its type's default. The value is what the
/// program's `r0` becomes (a signed 32-bit value as `u32`).
pub fn verdict(prog_type: u32, attach_type: u32, over: Option<u32>) -> Result<u32, Refusal> {
    let rule = rule(prog_type, attach_type).ok_or(Refusal::NoDefault)?;
    let Some(v) = over else {
        return Ok(rule.default as u32);
    };
    match rule.range {
        Some((min, max)) if !(min..=max).contains(&(v as i32)) => {
            Err(Refusal::OutOfRange { min, max })
        }
        _ => Ok(v),
    }
}
