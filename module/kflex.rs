// SPDX-License-Identifier: GPL-2.0

//! KFlex: fast, flexible and practical kernel extensions.
//!
//! This is the `module!` entry of the KFlex Rust component. At init it
//! registers the component's entry points ([`ops`]) with the built-in C
//! registration point (`kernel/bpf/kflex_glue.c`); from then on KFlex heaps
//! can be created. Every heap pins the module, so `rmmod kflex` is refused
//! while any exists.

// `try_pin_init!` of the heap (a dozen fields, some pinned) expands deeper
// than the default limit.
#![recursion_limit = "256"]

use kernel::{c_str, prelude::*, str::CStr};

mod heap;
mod kmem;
// Shared with the host crate (kflex-core), where its items are the public
// API; here the module is private, so their `pub` reaches only this crate.
// Host-only items are behind `feature = "host-tools"`, never set here.
#[allow(unreachable_pub)]
mod logic;
#[cfg(CONFIG_KFLEX_BENCH)]
mod native;
mod ops;
mod planner;
mod sys;

module! {
    type: KFlex,
    name: "kflex",
    author: "KFlex developers",
    description: "KFlex extension heaps, allocator and guard pass",
    license: "GPL",
}

/// Version of the component, reported in the kernel log and in
/// `/sys/kernel/kflex/status`.
const VERSION: &CStr = c_str!("0.1.0");

/// The registered component. Dropping it unregisters.
struct KFlex {
    ops: Ops,
}

/// The ops table handed to the C registration point.
struct Ops(KBox<kernel::bindings::kflex_ops>);

// SAFETY: the table is written once in `init` and only read afterwards; its
// raw pointers (this module, a static string) are valid from any thread.
unsafe impl Send for Ops {}
// SAFETY: see `Send`: shared access only reads immutable data.
unsafe impl Sync for Ops {}

impl kernel::Module for KFlex {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let ops = KBox::new(ops::table(module.as_ptr(), VERSION.as_char_ptr()), GFP_KERNEL)?;
        // SAFETY: `ops` is a valid, fully initialised table that lives in a
        // box owned by the returned `KFlex`, which unregisters it in `drop`
        // before the box is freed.
        kernel::error::to_result(unsafe { kernel::bindings::kflex_register(&*ops) })?;
        pr_info!(
            "KFlex {} active ({})\n",
            VERSION.to_str().unwrap_or("?"),
            if cfg!(MODULE) { "module" } else { "built-in" }
        );
        Ok(KFlex { ops: Ops(ops) })
    }
}

impl Drop for KFlex {
    fn drop(&mut self) {
        // SAFETY: `self.ops` was registered in `init`; after this call returns
        // no user can reach it any more, so the box may be freed.
        unsafe { kernel::bindings::kflex_unregister(&*self.ops.0) };
        pr_info!("KFlex unloaded\n");
    }
}
