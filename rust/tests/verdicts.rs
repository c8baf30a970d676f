// SPDX-License-Identifier: GPL-2.0

//! Tests of the verdict table (`logic::verdict`): the default of each hook
//! the issue names, the hooks without a safe default, and the validation of
//! a program's override against every value of its hook's range and just
//! outside it.

use kflex_core::logic::verdict::{self, attach_type, prog_type as t, Refusal};

const NO_ATTACH: u32 = 0;

#[test]
fn defaults_let_the_event_go_on() {
    let d = |ty| verdict::verdict(ty, NO_ATTACH, None).unwrap();
    assert_eq!(d(t::XDP), 2, "XDP_PASS");
    assert_eq!(d(t::SCHED_CLS), 0, "TC_ACT_OK");
    assert_eq!(d(t::SCHED_ACT), 0, "TC_ACT_OK");
    assert_eq!(d(t::SK_SKB), 1, "SK_PASS");
    assert_eq!(d(t::SK_MSG), 1, "SK_PASS");
    assert_eq!(d(t::CGROUP_SKB), 1, "allow");
    assert_eq!(d(t::LSM), -1i32 as u32, "-EPERM");
    assert_eq!(d(t::SYSCALL), -125i32 as u32, "-ECANCELED");
    // tracing: kprobe, tracepoint, perf event, fentry
    for ty in [2, 5, 7, 26] {
        assert_eq!(d(ty), 0);
    }
}

#[test]
fn a_stream_parser_has_no_default() {
    assert_eq!(
        verdict::verdict(t::SK_SKB, attach_type::SK_SKB_STREAM_PARSER, None),
        Err(Refusal::NoDefault)
    );
    assert_eq!(
        verdict::verdict(t::SK_SKB, attach_type::SK_SKB_STREAM_PARSER, Some(1)),
        Err(Refusal::NoDefault)
    );
    assert!(verdict::rule(t::SK_SKB, attach_type::SK_SKB_STREAM_PARSER).is_none());
    // the verdict program of the same type has one
    assert_eq!(verdict::verdict(t::SK_SKB, 5, None), Ok(1));
}

#[test]
fn overrides_are_checked_against_the_hook_range() {
    let cases: &[(u32, i32, i32)] = &[
        (t::XDP, 0, 4),
        (t::SCHED_CLS, -1, 8),
        (t::SCHED_ACT, -1, 8),
        (t::SK_SKB, 0, 1),
        (t::SK_MSG, 0, 1),
        (t::CGROUP_SOCK_ADDR, 0, 1),
        (t::LSM, -4095, 0),
    ];
    for &(ty, min, max) in cases {
        let rule = verdict::rule(ty, NO_ATTACH).unwrap();
        assert_eq!(rule.range, Some((min, max)), "type {ty}");
        assert!((min..=max).contains(&rule.default), "type {ty}: default in range");
        for v in min..=max.min(min + 64) {
            assert_eq!(verdict::verdict(ty, NO_ATTACH, Some(v as u32)), Ok(v as u32));
        }
        for v in [min - 1, max + 1, i32::MIN, i32::MAX] {
            assert_eq!(
                verdict::verdict(ty, NO_ATTACH, Some(v as u32)),
                Err(Refusal::OutOfRange { min, max }),
                "type {ty} value {v}"
            );
        }
    }
}

#[test]
fn hooks_without_a_range_take_any_override() {
    for ty in [t::SYSCALL, 2, 5, 26] {
        for v in [0, 1, 7, u32::MAX, 0x8000_0000] {
            assert_eq!(verdict::verdict(ty, NO_ATTACH, Some(v)), Ok(v));
        }
    }
}
