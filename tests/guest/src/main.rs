// SPDX-License-Identifier: GPL-2.0

//! KFlex guest tests: run as root inside a guest booted on a KFlex kernel
//! (`tests/vm.sh`). `KFLEX_VARIANT` says whether KFlex is built in (`y`) or
//! the module `kflex.ko` (`m`, path in `KFLEX_KO`); tests that only make sense
//! for one variant are ignored in the other.

mod basic;
mod util;

use libtest_mimic::{Arguments, Failed, Trial};

type TestFn = fn() -> anyhow::Result<()>;

/// (name, variants it runs in, test)
const TESTS: &[(&str, &str, TestFn)] = &[
    (
        "basic::builtin_active_at_boot",
        "y",
        basic::builtin_active_at_boot,
    ),
    ("basic::module_load_unload", "m", basic::module_load_unload),
    (
        "basic::counter_counts_veth_traffic",
        "ym",
        basic::counter_counts_veth_traffic,
    ),
    (
        "basic::bad_invocations_fail_clearly",
        "ym",
        basic::bad_invocations_fail_clearly,
    ),
];

fn main() {
    let args = Arguments::from_args();
    let variant = util::variant();
    let trials = TESTS
        .iter()
        .map(|&(name, variants, f)| {
            Trial::test(name, move || {
                f().map_err(|e| Failed::from(format!("{e:#}")))
            })
            .with_ignored_flag(!variants.contains(variant.as_str()))
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
