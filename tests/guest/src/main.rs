// SPDX-License-Identifier: GPL-2.0

//! KFlex guest tests: run as root inside a guest booted on a KFlex kernel
//! (`tests/vm.sh`). `KFLEX_VARIANT` says whether KFlex is built in (`y`) or
//! the module `kflex.ko` (`m`, path in `KFLEX_KO`); tests that only make sense
//! for one variant are ignored in the other. The tests always run one at a
//! time (`--test-threads=1` is implied).

mod basic;
mod cancel;
mod ctx;
mod ds;
mod guards;
mod heap;
mod locks;
mod memcached;
mod native;
mod redis;
mod release;
mod sockmap;
mod util;
mod zset;

use libtest_mimic::{Arguments, Failed, Trial};

type TestFn = fn() -> anyhow::Result<()>;

/// A test and the kernel variants (`y`, `m`) it runs in.
macro_rules! t {
    ($path:path, $variants:literal) => {
        (stringify!($path), $variants, $path as TestFn)
    };
}

const TESTS: &[(&str, &str, TestFn)] = &[
    t!(basic::builtin_active_at_boot, "y"),
    t!(basic::module_load_unload, "m"),
    t!(basic::counter_counts_veth_traffic, "ym"),
    t!(basic::bad_invocations_fail_clearly, "ym"),
    t!(heap::list_walked_from_user_space, "ym"),
    t!(heap::xdp_alloc_free_round_trips, "ym"),
    t!(heap::heap_sizes_validated, "ym"),
    t!(heap::big_heap_used_sparsely, "ym"),
    t!(heap::exhaustion_and_recovery, "ym"),
    t!(heap::freed_runs_are_reused, "ym"),
    t!(heap::producer_consumer_stays_bounded, "ym"),
    t!(heap::worker_populates_reserve, "ym"),
    t!(heap::two_cpus_churn, "ym"),
    t!(heap::fast_path_keeps_the_invariants, "ym"),
    t!(heap::hostile_program_is_contained, "ym"),
    t!(heap::close_releases_everything, "ym"),
    t!(heap::memory_goes_back, "ym"),
    t!(heap::small_objects_go_back, "ym"),
    t!(heap::heap_refused_without_module, "m"),
    t!(heap::charged_to_creator_memcg, "ym"),
    t!(heap::forged_links_to_every_page_state, "ym"),
    t!(heap::reserve_is_bounded, "ym"),
    t!(heap::guard_mode_1_is_logged, "ym"),
    t!(ctx::alloc_in_sched_switch, "ym"),
    t!(ctx::alloc_in_workqueue_tracepoint, "ym"),
    t!(ctx::alloc_in_perf_event, "ym"),
    t!(ctx::alloc_in_perf_event_over_fast_path, "ym"),
    t!(ctx::alloc_in_kprobes_on_the_kfuncs, "ym"),
    t!(ctx::alloc_inside_allocator_same_heap, "ym"),
    t!(ctx::alloc_inside_allocator_other_heap, "ym"),
    t!(guards::hostile_accesses_confined, "ym"),
    t!(guards::stats_line_and_modes, "ym"),
    t!(native::native_structures_match_model, "ym"),
    t!(native::hostile_links_are_contained, "ym"),
    t!(native::kmem_structures_match_model, "ym"),
    t!(memcached::protocol_replies, "ym"),
    t!(memcached::protocol_malformed_and_passed, "ym"),
    t!(memcached::memaslap_verifies_through_the_offload, "ym"),
    t!(memcached::memaslap_expiry, "ym"),
    t!(memcached::memccp_entries_readable_from_the_heap, "ym"),
    t!(memcached::keyless_commands_reach_memcached, "ym"),
    t!(memcached::bmc_policy_caches_and_invalidates, "ym"),
    t!(memcached::two_cpus_same_keys, "ym"),
    t!(memcached::detach_under_load, "ym"),
    t!(redis::round_trips, "ym"),
    t!(redis::fragmented_requests, "ym"),
    t!(redis::values_up_to_one_mib, "ym"),
    t!(redis::cut_off_sets_free_their_value, "ym"),
    t!(redis::cancelled_runs_keep_order, "ym"),
    t!(redis::differential, "ym"),
    t!(redis::malformed_requests_pass_through, "ym"),
    t!(redis::real_clients, "ym"),
    t!(redis::detach_under_load, "ym"),
    t!(redis::other_commands_on_held_keys, "ym"),
    t!(redis::two_cpus_same_keys, "ym"),
    t!(redis::receive_on_the_server_cpu, "ym"),
    t!(zset::differential, "ym"),
    t!(zset::own_errors_and_limits, "ym"),
    t!(zset::real_clients, "ym"),
    t!(zset::two_cpus_same_set, "ym"),
    t!(cancel::endless_loops_are_cancelled, "ym"),
    t!(cancel::syscall_run_returns_ecanceled, "ym"),
    t!(cancel::budget_follows_the_sysctl, "ym"),
    t!(cancel::callback_loops_end, "ym"),
    t!(cancel::sleeping_callbacks_keep_their_arming, "ym"),
    t!(cancel::points_holding_resources_refused, "ym"),
    t!(cancel::heap_faults_cancel, "ym"),
    t!(sockmap::pipelined_replies_of_other_lengths, "ym"),
    t!(cancel::program_records, "ym"),
    t!(cancel::forced_cancellation, "ym"),
    t!(cancel::own_verdict, "ym"),
    t!(cancel::udp_traffic_marked_packets_cancelled, "ym"),
    t!(cancel::callbacks_cancelled_in_softirq, "ym"),
    t!(cancel::detach_cancels_running_runs, "ym"),
    t!(release::cancelled_runs_release_objects, "ym"),
    t!(release::cancelled_reservations_are_discarded, "ym"),
    t!(release::cancelled_run_destroys_an_iterator, "ym"),
    t!(release::cancelled_run_releases_everything_at_once, "ym"),
    t!(release::cancelled_run_releases_a_socket, "ym"),
    t!(locks::take_and_release, "ym"),
    t!(locks::aa_cancels_at_once, "ym"),
    t!(locks::abba_on_two_cpus, "ym"),
    t!(locks::wait_past_budget_cancels, "ym"),
    t!(locks::ninth_lock_cancels, "ym"),
    t!(locks::foreign_unlock_refused, "ym"),
    t!(locks::return_with_locks_releases_them, "ym"),
    t!(locks::nested_run_cancelled_alone, "ym"),
    t!(locks::lock_refusals, "ym"),
    t!(ds::list_matches_model, "ym"),
    t!(ds::rbtree_matches_model, "ym"),
    t!(ds::hashmap_matches_model, "ym"),
    t!(ds::hashmap_two_cpus, "ym"),
    t!(ds::skiplist_matches_model, "ym"),
    t!(ds::sketches_match_model, "ym"),
    t!(ds::baselines_match_models, "ym"),
];

fn main() {
    let mut args = Arguments::from_args();
    // One test at a time, whatever the command line says: the tests set
    // the guard-mode sysctl, load and unload kflex.ko and look at every
    // heap on the system, so two of them at once would disturb each other.
    if let Some(n) = args.test_threads.filter(|&n| n != 1) {
        eprintln!("kflex-guest-tests: --test-threads={n} ignored: the tests run one at a time");
    }
    args.test_threads = Some(1);
    let variant = util::variant();
    let trials = TESTS
        .iter()
        .map(|&(name, variants, f)| {
            Trial::test(name, move || f().map_err(|e| Failed::from(format!("{e:#}"))))
                .with_ignored_flag(!variants.contains(variant.as_str()))
        })
        .collect();
    // Every loop of a KFlex program carries a cancellation point, so every
    // run has a budget (kernel.kflex_budget_us, 10 ms by default). Under
    // QEMU TCG the suite's syscall programs (thousands of allocations per
    // run) take longer than that: the suite runs with the largest budget,
    // and the cancellation tests set their own.
    let budget = match kflex_load::cancel::SysctlGuard::budget_us(1_000_000) {
        Ok(g) => Some(g),
        Err(e) => {
            eprintln!("kflex-guest-tests: cannot raise the run budget: {e:#}");
            None
        }
    };
    let conclusion = libtest_mimic::run(&args, trials);
    drop(budget);
    conclusion.exit();
}
